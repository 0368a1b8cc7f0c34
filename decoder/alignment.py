"""The text side of forced alignment: words to align, the timestamp repair, words to show.

Qwen3-ForcedAligner aligns *cleaned* words: the transcript split per language (CJK ideographs one
by one, other scripts at whitespace, Japanese and Korean by a morphological tokenizer), each
stripped to letters, digits and ASCII apostrophes. That is what the model was trained on, so
`alignment_words` reproduces the reference (transformers' `split_words_for_alignment`) exactly.

Two things go beyond the reference, both because users read the result:

- **Display words.** Each cleaned word remembers where its characters sit in the original
  transcript, and `display_words` cuts the transcript at those places: "don’t," comes back as
  "don’t," (not "dont"), with its punctuation, case and leading space, so joining the words
  gives the transcript back.
- **Positive durations.** The reference's 80 ms classes and its repair (`fix_timestamps`) give
  many zero-length words and words stacked on one instant (QwenLM/Qwen3-ASR#55, #197).
  `positive_spans` spreads every run of equal times evenly over the 80 ms class they share
  (the model cannot say where inside it they lie), never past the next distinct time, so every
  word gets a positive duration and the order is unchanged.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# the languages Qwen3-ForcedAligner-0.6B was trained on, by ISO code (the model card's 11)
ALIGNER_LANGUAGES: dict[str, str] = {
    "zh": "Chinese",
    "en": "English",
    "yue": "Cantonese",
    "fr": "French",
    "de": "German",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "pt": "Portuguese",
    "ru": "Russian",
    "es": "Spanish",
}
SEGMENT_MS = 80  # one timestamp class (the reference processor's timestamp_segment_time)
SHORT_RUN = 2  # repair: outlier runs up to this long copy a neighbour, longer ones interpolate

_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


class AlignmentError(ValueError):
    """A transcript or language the aligner cannot take."""


@dataclass(frozen=True)
class AlignmentWord:
    """One cleaned word and where its characters lie in the transcript."""

    text: str  # what the model sees: letters, digits and ' only
    first: int  # index of its first character in the transcript
    last: int  # index of its last character


def aligner_language(language: str | None) -> str | None:
    """The aligner's language name for an ISO code or name (any case).

    None and "und" (a recognizer that could not tell) give None: the default word rule, which
    the reference also applies without a language.

    Raises:
        AlignmentError: naming the supported languages when the aligner lacks this one.
    """
    if language is None or language.strip().lower() in ("", "und"):
        return None
    key = language.strip().lower()
    for code, name in ALIGNER_LANGUAGES.items():
        if key in (code, name.lower()):
            return name
    supported = ", ".join(f"{code} ({name})" for code, name in ALIGNER_LANGUAGES.items())
    raise AlignmentError(f"the aligner does not support {language!r}; it aligns {supported}")


def is_cjk(char: str) -> bool:
    """A CJK ideograph: aligned one character at a time (kana and Hangul are not)."""
    point = ord(char)
    return any(low <= point <= high for low, high in _CJK_RANGES)


def is_kept(char: str) -> bool:
    """Characters the aligner keeps: letters, digits, the ASCII apostrophe, CJK ideographs."""
    if char == "'":
        return True
    category = unicodedata.category(char)
    return category[0] in "LN" or is_cjk(char)


def alignment_words(text: str, language: str | None = None) -> list[AlignmentWord]:
    """Splits a transcript into the words the aligner times, as the reference does.

    Args:
        text: the transcript.
        language: the aligner language name (`aligner_language`), or None for the default rule.

    Raises:
        AlignmentError: for Japanese or Korean without their tokenizer package installed.
    """
    if language == "Japanese":
        return _locate(text, _tokens_of("nagisa", "Japanese", text))
    if language == "Korean":
        return _locate(text, _tokens_of("soynlp", "Korean", text))
    words: list[AlignmentWord] = []
    chars: list[str] = []
    first = last = -1

    def flush() -> None:
        if chars:
            words.append(AlignmentWord("".join(chars), first, last))
            chars.clear()

    for index, char in enumerate(text):
        if is_cjk(char):
            flush()
            words.append(AlignmentWord(char, index, index))
        elif char.isspace():
            flush()
        elif is_kept(char):
            if not chars:
                first = index
            chars.append(char)
            last = index
    flush()
    return words


def _tokens_of(package: str, language: str, text: str) -> list[str]:
    """Raw tokens of the morphological tokenizer the reference uses for this language."""
    try:
        if package == "nagisa":
            import nagisa

            tokens = nagisa.tagging(text.strip()).words
        else:
            from soynlp.tokenizer import LTokenizer

            tokens = LTokenizer().tokenize(text.strip())
    except ImportError as exc:
        raise AlignmentError(
            f"aligning {language} needs the {package} package: pip install {package}"
        ) from exc
    return [str(token) for token in tokens]


def _locate(text: str, tokens: Sequence[str]) -> list[AlignmentWord]:
    """Cleans tokens as the reference does and finds their characters in the text, in order."""
    words = []
    position = 0
    for token in tokens:
        cleaned = "".join(char for char in token if is_kept(char))
        if not cleaned:
            continue
        found = []
        for char in cleaned:
            index = text.find(char, position)
            if index < 0:  # the tokenizer changed the text; keep the word, time it in place
                index = max(position - 1, 0)
            found.append(index)
            position = index + 1
        words.append(AlignmentWord(cleaned, found[0], found[-1]))
    return words


def fix_timestamps(values: Sequence[float]) -> list[int]:
    """Makes predicted times non-decreasing exactly as the reference repairs them.

    The longest non-decreasing subsequence (the earliest predecessor wins ties; the chain ends at
    the first index of maximal length) is trusted. Each maximal run of other positions is
    replaced: a run of up to two copies its nearer trusted neighbour (ties go left), a longer
    run is interpolated linearly between its neighbours; a run with one neighbour takes that
    neighbour's value. The results are truncated to int.

    Raises:
        ValueError: on an empty sequence (the reference's max() of nothing).
    """
    data = [float(v) for v in values]
    count = len(data)
    if not count:
        raise ValueError("no timestamps to repair")
    length = [1] * count
    parent = [-1] * count
    for current in range(1, count):
        for previous in range(current):
            if data[previous] <= data[current] and length[previous] + 1 > length[current]:
                length[current] = length[previous] + 1
                parent[current] = previous
    trusted = [False] * count
    index = length.index(max(length))
    while index != -1:
        trusted[index] = True
        index = parent[index]

    result = list(data)
    start = 0
    while start < count:
        if trusted[start]:
            start += 1
            continue
        end = start
        while end < count and not trusted[end]:
            end += 1
        # trusted positions never change, so the nearest ones bound the run
        left = result[start - 1] if start > 0 else None
        right = result[end] if end < count else None
        run = end - start
        for position in range(start, end):
            if left is None or right is None:
                value = left if right is None else right
            elif run <= SHORT_RUN:
                value = left if position - (start - 1) <= end - position else right
            else:
                value = left + (right - left) / (run + 1) * (position - start + 1)
            assert value is not None  # a run has at least one trusted neighbour
            result[position] = value
        start = end
    return [int(v) for v in result]


def positive_spans(times: Sequence[int], *, end_ms: int | None = None) -> list[tuple[int, int]]:
    """Pairs (start, end) per word from repaired times, each word with a positive duration.

    `times` holds 2 values per word (start, end), non-decreasing (`fix_timestamps`). Each run of
    equal values v is spread evenly over [v, v + 80 ms), cut short by the next distinct value
    and by `end_ms` (the audio's end), so equal times become distinct and no time moves past a
    later one. Where even that leaves no room (times 1 ms apart), later times are pushed on by
    1 ms per step, and the end is pulled back in if that passes `end_ms`.
    """
    if len(times) % 2:
        raise ValueError(f"expected 2 times per word, got {len(times)} values")
    spread: list[float] = []
    index = 0
    while index < len(times):
        value = times[index]
        run = 1
        while index + run < len(times) and times[index + run] == value:
            run += 1
        limit = value + SEGMENT_MS
        if index + run < len(times):
            limit = min(limit, times[index + run])
        if end_ms is not None and end_ms > value:
            limit = min(limit, end_ms)
        width = max(limit - value, 0)
        spread.extend(value + width * k / run for k in range(run))
        index += run
    points = [round(v) for v in spread]
    # a word's end must pass its start; a next start may equal the previous end
    for k in range(1, len(points)):
        gap = 1 if k % 2 else 0
        points[k] = max(points[k], points[k - 1] + gap)
    if end_ms is not None and points and points[-1] > end_ms:
        points[-1] = max(end_ms, len(points) // 2)
        for k in range(len(points) - 2, -1, -1):
            gap = 1 if (k + 1) % 2 else 0
            points[k] = min(points[k], points[k + 1] - gap)
    return [(points[2 * i], points[2 * i + 1]) for i in range(len(points) // 2)]


def display_words(text: str, words: Sequence[AlignmentWord]) -> list[str]:
    """The transcript cut into one display word per aligned word, punctuation and case kept.

    A word owns its characters, what follows them up to the next whitespace or the next word,
    and what stands between that whitespace and its own characters ("(", "¿", a lone "—"),
    with the whitespace before it shown as one leading space. Text before the first word goes
    to the first word, so joining the results gives the transcript with its whitespace runs
    collapsed.
    """
    cuts = [0]
    for before, after in itertools.pairwise(words):
        between = text[before.last + 1 : after.first]
        space = next((i for i, c in enumerate(between) if c.isspace()), None)
        cuts.append(before.last + 1 + (space if space is not None else len(between)))
    cuts.append(len(text))
    shown = []
    for begin, end in itertools.pairwise(cuts):
        piece = text[begin:end].rstrip()
        stripped = piece.lstrip()
        shown.append((" " if stripped != piece else "") + " ".join(stripped.split()))
    return shown
