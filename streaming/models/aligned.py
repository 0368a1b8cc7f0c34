"""Any recognizer plus Qwen3-ForcedAligner: finals whose words carry aligned times.

`AlignedRecognizer` wraps a recognizer. Partials pass through untouched (they need no real
times, and the aligner's forward pass would slow every step); a final decode that asks for word
times (`DecodeRequest.align`, set when the session has `word_timestamps`) is aligned on the
same worker thread right after the recognizer answers, so the final waits for its times and
nothing else does. The words keep the recognizer's text; only their times change.

When the aligner cannot time a final (a language it lacks, no alignable word, audio past its
limit), the final keeps the recognizer's own times (Whisper's are real, Qwen's estimated) and
the hypothesis carries a warning the session sends once: a final is never lost to alignment.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np

from decoder.aligner import MAX_ALIGN_S, ForcedAligner
from decoder.alignment import AlignmentError
from streaming.recognizer import (
    DecodeRequest,
    Hypothesis,
    OfflineOptions,
    OfflineSegment,
    Recognizer,
    Word,
    join_words,
)

log = logging.getLogger(__name__)


class AlignedRecognizer(Recognizer):
    """`recognizer` with `aligner` timing the words of its finals.

    Attributes:
        align_seconds: total time spent aligning, for benchmarks.
    """

    def __init__(self, recognizer: Recognizer, aligner: ForcedAligner) -> None:
        self.recognizer = recognizer
        self.aligner = aligner
        details = {**recognizer.info.details, "aligner": aligner.name}
        # one lane: the aligner's torch calls use every core, and a second call beside one
        # would only make both slower. Finals are aligned and partials not, so a partial's
        # answer is never a final here.
        self.info = dataclasses.replace(
            recognizer.info, word_timestamps=True, details=details, lanes=1,
            partial_is_final=False,
        )  # fmt: skip
        self.align_seconds = 0.0

    @property
    def max_offline_s(self) -> float:
        """Whole-file pieces stay within what the aligner takes (cut at quiet points)."""
        inner = getattr(self.recognizer, "max_offline_s", self.recognizer.info.max_segment_s)
        return min(float(inner), MAX_ALIGN_S)

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        answers = self.recognizer.decode(requests)
        return [
            self._aligned(request, answer) if request.align else answer
            for request, answer in zip(requests, answers, strict=True)
        ]

    def transcribe_offline(
        self, samples: np.ndarray, options: OfflineOptions
    ) -> Iterator[OfflineSegment] | None:
        segments = self.recognizer.transcribe_offline(samples, options)
        if segments is None or not options.word_timestamps:
            return segments
        return (self._aligned_segment(samples, s, options.language) for s in segments)

    def close(self) -> None:
        self.recognizer.close()

    def align_words(
        self, audio: np.ndarray, words: Sequence[Word], language: str | None
    ) -> tuple[tuple[Word, ...] | None, tuple[str, str] | None]:
        """Aligned words for `words` spoken in `audio`, or None and the reason as a warning."""
        text = join_words(words)
        if not text:
            return None, None
        started = time.perf_counter()
        try:
            alignment = self.aligner.align(audio, text, language)
        except AlignmentError as exc:
            return None, ("alignment_unavailable", f"{exc}; finals keep the recognizer's times")
        finally:
            self.align_seconds += time.perf_counter() - started
        if not alignment.words:
            return None, None
        return alignment.words, None

    def _aligned(self, request: DecodeRequest, answer: Hypothesis) -> Hypothesis:
        language = answer.language or request.language
        aligned, warning = self.align_words(request.audio, answer.words, language)
        return dataclasses.replace(answer, aligned=aligned, warning=warning or answer.warning)

    def _aligned_segment(
        self, samples: np.ndarray, segment: OfflineSegment, language: str | None
    ) -> OfflineSegment:
        begin = segment.start_ms * 16
        audio = samples[begin : segment.end_ms * 16]
        words = segment.words or (Word(" " + segment.text.strip(), 0, 0),)
        aligned, warning = self.align_words(audio, words, segment.language or language)
        if aligned is None:
            if warning:
                log.warning("%s", warning[1])
            return segment
        shifted = tuple(
            dataclasses.replace(
                w, start_ms=segment.start_ms + w.start_ms, end_ms=segment.start_ms + w.end_ms
            )
            for w in aligned
        )
        return dataclasses.replace(segment, words=shifted)
