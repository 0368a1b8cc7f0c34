"""Word error rate against references written the way tests/data/manifest.tsv writes them.

The references are lower case, without punctuation, with numbers spelled out ("ten of clubs").
Hypotheses are brought to the same form: lower case, punctuation removed, hyphens split,
digits spelled out with num2words ("10" -> "ten"), and common titles expanded ("Mr." ->
"mister"). Whisper's own English normalizer goes the other way (words to digits) and merges
consecutive number words, so the reference "five five" becomes "55" while "5, 5" stays "5 5";
`whisper_normalize` is kept for reporting that figure next to ours.

Languages written without spaces between words (Chinese, Japanese, Thai, ...) are scored per
character (a character error rate, as their benchmarks report), with numbers spelled in the
language where num2words knows it ("2" -> "二" in Japanese).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from num2words import num2words
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

_TITLES = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "ms": "miss"}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NOT_WORD = re.compile(r"[^\w' ]+")
# Whisper's list of languages written without spaces (it splits their words per character)
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


def normalize(text: str, language: str = "en") -> list[str]:
    """The words of `text` in the references' form; characters for unspaced languages."""
    text = text.lower().replace("-", " ")
    if language == "en":
        text = re.sub(r"\b(mr|mrs|dr|st|ms)\.", lambda m: _TITLES[m.group(1)], text)
    text = _NUMBER.sub(lambda m: " " + _spelled(m.group(0), language) + " ", text)
    text = _NOT_WORD.sub(" ", text.replace(",", " "))
    words = [w.strip("'") for w in text.split() if w.strip("'")]
    if language in UNSPACED_LANGUAGES:
        return [c for w in words for c in w]
    return words


def _spelled(number: str, language: str) -> str:
    try:
        return num2words(number, lang=language).replace("-", " ")
    except NotImplementedError:  # a language num2words does not know keeps its digits
        return number


_WHISPER = EnglishTextNormalizer({})


def whisper_normalize(text: str) -> list[str]:
    """The words of `text` after Whisper's English normalizer (the Open ASR leaderboard's)."""
    return _WHISPER(text).split()


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    row = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hypothesis, 1):
            diagonal, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_word != hyp_word)),
            )
    return row[-1]


@dataclass(frozen=True)
class WerResult:
    errors: int
    words: int

    @property
    def wer(self) -> float:
        return self.errors / max(1, self.words)


def corpus_wer(
    pairs: Iterable[tuple[str, str]], normalizer: Callable[[str], list[str]] = normalize
) -> WerResult:
    """Pooled WER over (reference, hypothesis) pairs: total errors over total reference words.

    For another language pass `functools.partial(normalize, language=...)`.
    """
    errors = words = 0
    for reference, hypothesis in pairs:
        ref = normalizer(reference)
        errors += edit_distance(ref, normalizer(hypothesis))
        words += len(ref)
    return WerResult(errors, words)
