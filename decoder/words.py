"""Turning the decoder's text into the session's words, with estimated times.

Words: a word is a run of non-space characters with the whitespace before it (" forward,"),
so concatenating words gives the text back; punctuation stays with the word it follows. In
scripts written without spaces (CJK ideographs, kana) every character is a word of its own, with
the punctuation that follows it.

Times: Qwen3-ASR has no word alignment in streaming (`ModelInfo.word_timestamps` is False), but
the session's stabilizer needs end times for its holdback (a word must end 250 ms before the
live edge) and its maximum delay (2 s). `estimate_times` spreads the new words over the audio
after the last committed word, in proportion to their characters: the text of one decode covers
the audio up to the live edge, and characters are a better proxy for speaking time than words.
The last word therefore always ends at the live edge (it may still be being spoken), and a word
is held back until later text pushes it away from the edge. Trailing silence before an endpoint
makes the estimates late, which only delays commits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from streaming.recognizer import Word

_PIECE = re.compile(r"\s*\S+")
# Han ideographs (with extensions and compatibility forms), kana: written without spaces
_NO_SPACE_SCRIPT = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]"
)


def split_words(text: str) -> list[str]:
    """Splits text into words (leading whitespace kept); trailing whitespace is dropped.

    `"".join(split_words(t)) == t.rstrip()` for every t.
    """
    words: list[str] = []
    for match in _PIECE.finditer(text):
        current = ""
        after_no_space = False  # the last non-space character was a no-space-script one
        for char in match.group():
            no_space = bool(_NO_SPACE_SCRIPT.match(char))
            if current.strip() and (no_space or (after_no_space and char.isalnum())):
                words.append(current)
                current = ""
            current += char
            after_no_space = no_space
        words.append(current)
    return words


def estimate_times(texts: Sequence[str], start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """(start_ms, end_ms) of each word, spread over [start_ms, end_ms] by character count."""
    end_ms = max(end_ms, start_ms)
    weights = [max(len(t.strip()), 1) for t in texts]
    total = sum(weights)
    times = []
    done = 0
    for weight in weights:
        begin = start_ms + (end_ms - start_ms) * done // total if total else start_ms
        done += weight
        finish = start_ms + (end_ms - start_ms) * done // total if total else end_ms
        times.append((begin, finish))
    return times


def timed_words(texts: Sequence[str], start_ms: int, end_ms: int) -> tuple[Word, ...]:
    """Words with `estimate_times` times."""
    return tuple(
        Word(text, begin, finish)
        for text, (begin, finish) in zip(
            texts, estimate_times(texts, start_ms, end_ms), strict=True
        )
    )
