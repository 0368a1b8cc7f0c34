"""The interface between the session engine and a speech recognizer.

A session cuts speech into segments and asks the recognizer, again and again as audio arrives,
for the best hypothesis of the current segment. Each request carries the segment's audio from its
start, the words already committed (a forced prefix the recognizer must keep and continue, never
regenerate) and the text context. Recognizers that keep incremental state between decodes of one
segment (encoder caches, KV caches) return it with the hypothesis and get it back on the next
request: the state is passed in and returned, never hidden in the recognizer.

Recognizers run on a worker thread, a batch of requests at a time; a request never blocks on I/O.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Word:
    """One recognized word, timed relative to the start of its segment.

    `text` is the word as it is displayed, with its leading space where the script uses spaces
    (" forward"), so that concatenating words gives the text. Punctuation that follows a word
    without a space may form a word of its own (".").
    """

    text: str
    start_ms: int
    end_ms: int
    # the model's confidence in the word, 0..1: the mean probability of its tokens (Whisper,
    # as faster-whisper computes it); None where the model gives none. Not part of a word's
    # identity: a committed word is the same word whatever decode scored it.
    probability: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DecodeRequest:
    """One decode of one segment."""

    # float32 samples at 16 kHz, mono: the segment from its start to the newest audio
    audio: np.ndarray
    # words already committed in this segment: a forced prefix, kept verbatim
    committed: tuple[Word, ...] = ()
    # the session's free-text context
    context: str = ""
    # words to favour
    hotwords: tuple[str, ...] = ()
    # the end of the previous segments' text, for continuity across segments
    previous_text: str = ""
    # ISO code, or None to detect
    language: str | None = None
    # the last decode of this segment: the answer becomes its final text
    final: bool = False
    # the recognizer's own state from the previous decode of this segment (None at first)
    state: object | None = None
    # a final whose words the client wants timed (word_timestamps): an aligner times them
    align: bool = False

    @property
    def duration_ms(self) -> int:
        """Length of the segment audio in this request."""
        return len(self.audio) * 1000 // 16_000


@dataclass(frozen=True)
class Hypothesis:
    """The recognizer's answer to one `DecodeRequest`."""

    # all words of the segment: the committed prefix unchanged, then the continuation
    words: tuple[Word, ...]
    # ISO code of the language the segment was transcribed in, None if unknown
    language: str | None = None
    # the state to pass back with the next request of the same segment
    state: object | None = None
    # real word times of a final (an aligner's), replacing `words`' times in transcript.final;
    # their texts join to the same text as `words`
    aligned: tuple[Word, ...] | None = None
    # (code, message) the session forwards to its client once per code, e.g. an aligner that
    # lacks the segment's language
    warning: tuple[str, str] | None = None


@dataclass(frozen=True)
class OfflineSegment:
    """One piece of a whole-file transcript (`Recognizer.transcribe_offline`)."""

    start_ms: int
    end_ms: int
    text: str
    language: str | None
    # timed words, ms from the start of the file (empty unless asked for and the model aligns)
    words: tuple[Word, ...] = ()
    # what Whisper's pipeline tells about the segment (OpenAI's verbose_json carries it)
    tokens: tuple[int, ...] = ()
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0


@dataclass(frozen=True)
class OfflineOptions:
    """What a whole-file transcription is asked for."""

    # ISO code, or None to detect
    language: str | None = None
    # free text that biases recognition, and words to favour
    context: str = ""
    hotwords: tuple[str, ...] = ()
    # "transcribe", or "translate" (into English; only where `ModelInfo.translates`)
    task: str = "transcribe"
    # timed words in each segment (only where `ModelInfo.word_timestamps`)
    word_timestamps: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """What a recognizer can do; the session validates settings against it."""

    # name reported to clients in session.created
    name: str
    # ISO codes the model transcribes; None means any language it detects
    languages: frozenset[str] | None = None
    # longest segment one decode can take, seconds
    max_segment_s: float = 30.0
    # whether Word times come from a real alignment (exposed to clients) or are estimates
    word_timestamps: bool = False
    # whether whole files can be translated into English (OfflineOptions.task)
    translates: bool = False
    # model calls (`decode` or an offline job) it can run at once from different threads;
    # the model worker keeps that many lanes busy (streaming/worker.py)
    lanes: int = 1
    # a partial that heard a whole segment (and nothing of the next) is as good as that
    # segment's final decode, so the session takes its answer instead of decoding the same
    # audio again (Whisper, whose final decode differs only in a shorter window, for speed;
    # not Qwen, whose final flushes the encoder's open window, nor a separate aligner, which
    # times finals only)
    partial_is_final: bool = False
    # extra facts for /health and logs (device, dtype, ...)
    details: dict[str, str] = field(default_factory=dict)


class Recognizer(abc.ABC):
    """A speech recognizer the session engine can drive."""

    info: ModelInfo

    @abc.abstractmethod
    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        """Decodes a batch of requests (from different sessions) and answers each in order.

        Runs on a worker thread. Must not keep references to request audio after returning.
        """
        raise NotImplementedError

    def transcribe_offline(
        self, samples: np.ndarray, options: OfflineOptions
    ) -> Iterator[OfflineSegment] | None:
        """A whole recording through the model's own long-form pipeline, if it has one.

        Returns a lazy iterator: each step may run the model (a caller on the event loop runs
        each step as a worker job). None (the default): the recognizer has no such pipeline, and
        `streaming.offline.transcribe_file` transcribes the file with final decodes instead.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most recognizers hold nothing to free
        """Frees what the recognizer holds (threads, memory)."""


def join_words(words: Sequence[Word]) -> str:
    """Concatenates words into display text without leading or trailing spaces."""
    return "".join(w.text for w in words).strip()
