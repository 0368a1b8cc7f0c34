"""Voice-activity endpointing: where segments of speech start and end.

webrtcvad classifies each 30 ms frame of 16 kHz audio as voiced or not. A segment starts when
`start_frames` of the last `start_window` frames are voiced, reaching back `preroll_ms` before the
first of them so soft onsets are kept; it ends after `silence_ms` without a voiced frame, keeping
`tail_ms` of the silence so word endings are not clipped. A segment that nears `max_segment_ms`
is cut in its first pause within `CUT_SEARCH_MS` of the limit, as soon as speech resumes after
it; one that reaches the limit without a pause is cut at the quietest frame of the last
`QUIET_SEARCH_MS`. The next segment continues from the cut.

Only audio inside segments ever reaches a recognizer: silence cannot turn into hallucinated text.
All positions are sample indices at 16 kHz from the start of the stream.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import webrtcvad

from streaming.audio import SAMPLE_RATE

FRAME_MS = 30  # webrtcvad accepts 10, 20 or 30 ms frames
FRAME = SAMPLE_RATE * FRAME_MS // 1000  # 480 samples
# A pause of PAUSE_FRAMES unvoiced frames within CUT_SEARCH_MS of the limit cuts the segment (in
# the pause's middle) when speech resumes; a segment that reaches the limit without one is cut
# at the quietest frame of the last QUIET_SEARCH_MS. Measured (BENCHMARKS.md, issue 10): cutting
# only at the limit, at the quietest of the last 3 s, put the cut up to 2.3 s in the past when
# it was made, so those finals came 1.8-2.3 s after their segment's end before any decoding had
# started. Pause cuts from 3 s before the limit still left a third of the cuts of continuous
# long-form speech to the quiet point, up to 3.0 s back (P50 0.96 s); from 5 s before it, with
# the quiet point within 1.5 s, 17 of 18 are pause cuts and the look-back is P50 0.13 s, at most
# 0.96 s (BENCHMARKS.md, "Model lanes").
CUT_SEARCH_MS = 5_000
QUIET_SEARCH_MS = 1_500
PAUSE_FRAMES = 3  # 90 ms: a breath or a word boundary, not a syllable's closure


@dataclass(frozen=True)
class VadConfig:
    """Detector settings that are the server's, not the client's, to choose."""

    # webrtcvad aggressiveness, 0 (keeps most audio) to 3 (keeps least)
    aggressiveness: int = 2
    # voiced frames among the last `start_window` that open a segment
    start_frames: int = 3
    start_window: int = 5
    # audio kept before the first voiced frame, ms
    preroll_ms: int = 300
    # trailing silence kept in a segment, ms (capped by silence_ms)
    tail_ms: int = 300

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0..3, got {self.aggressiveness!r}")
        if not 1 <= self.start_frames <= self.start_window:
            raise ValueError(
                f"start_frames must be between 1 and start_window ({self.start_window}), "
                f"got {self.start_frames!r}"
            )


@dataclass(frozen=True)
class SpeechStart:
    """Speech begins at `position` (16 kHz samples)."""

    position: int


@dataclass(frozen=True)
class SpeechEnd:
    """The segment ends at `position`; `reason` is "endpoint" or "max_length"."""

    position: int
    reason: str


Boundary = SpeechStart | SpeechEnd


class Endpointer:
    """Splits a 16 kHz stream into speech segments, frame by frame."""

    def __init__(self, silence_ms: int, max_segment_ms: int, config: VadConfig | None = None):
        self.config = config or VadConfig()
        self.silence_frames = max(1, silence_ms // FRAME_MS)
        self.max_segment = max_segment_ms * SAMPLE_RATE // 1000
        # a pause cuts from here on (never in the first half of a short limit)
        search = min(CUT_SEARCH_MS * SAMPLE_RATE // 1000, self.max_segment // 2)
        self.soft_limit = self.max_segment - search
        self.tail = min(self.config.tail_ms, silence_ms) * SAMPLE_RATE // 1000
        self.preroll = self.config.preroll_ms * SAMPLE_RATE // 1000
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        self._pending = np.zeros(0, np.int16)
        self._position = 0  # first sample of the next frame
        self._recent: collections.deque[tuple[int, bool]] = collections.deque(
            maxlen=self.config.start_window
        )
        # (frame start, voiced, energy) of the last few seconds, for max-length cuts
        self._history: collections.deque[tuple[int, bool, float]] = collections.deque(
            maxlen=QUIET_SEARCH_MS // FRAME_MS
        )
        self.in_speech = False
        self._segment_start = 0
        self._last_end = 0  # end of the previous segment: the next one never reaches before it
        self._last_voiced_end = 0
        self._silent_frames = 0

    @property
    def position(self) -> int:
        """Samples classified so far (the partial frame still waiting is not counted)."""
        return self._position

    @property
    def pause_end(self) -> int | None:
        """Where the open segment ends if the silence going on now lasts `silence_ms` (its last
        voiced frame plus the kept tail), once the audio has reached that point; else None."""
        if not self.in_speech or self._silent_frames == 0:
            return None
        end = self._last_voiced_end + self.tail
        return end if self._position >= end else None

    def accept(self, samples: np.ndarray) -> list[Boundary]:
        """Classifies new float32 samples; returns the boundaries they reveal, in order."""
        pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
        pcm = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
        boundaries: list[Boundary] = []
        n_frames = len(pcm) // FRAME
        for i in range(n_frames):
            frame = pcm[i * FRAME : (i + 1) * FRAME]
            boundaries.extend(self._frame(frame))
        self._pending = pcm[n_frames * FRAME :].copy()
        return boundaries

    def end_segment(self, position: int) -> SpeechEnd | None:
        """Ends the open segment on the client's word (finalize / end of input): at `position`,
        or, in a pause that has reached `pause_end`, there; None if no segment is open.

        Everything after `pause_end` is unvoiced, and an endpoint would cut there too: so a
        client that finalizes after its own short silence (a push-to-talk release, Deepgram's
        `Finalize` after a client-side VAD) gets the segment an endpoint would have given,
        whose final the pause's partial has usually already decoded (`Session._pause_due`).
        """
        if not self.in_speech:
            return None
        pause_end = self.pause_end
        if pause_end is not None:
            position = min(position, pause_end)
        self.in_speech = False
        self._last_end = max(position, self._segment_start)
        self._recent.clear()
        return SpeechEnd(self._last_end, "forced")

    def _frame(self, frame: np.ndarray) -> list[Boundary]:
        start, end = self._position, self._position + FRAME
        self._position = end
        voiced = self._vad.is_speech(frame.tobytes(), SAMPLE_RATE)
        energy = float(np.mean(frame.astype(np.float32) ** 2))
        self._history.append((start, voiced, energy))
        if not self.in_speech:
            self._recent.append((start, voiced))
            if sum(v for _, v in self._recent) < self.config.start_frames:
                return []
            first_voiced = next(s for s, v in self._recent if v)
            self._segment_start = max(first_voiced - self.preroll, self._last_end, 0)
            self.in_speech = True
            self._last_voiced_end = end
            self._silent_frames = 0
            self._recent.clear()
            return [SpeechStart(self._segment_start)]
        if voiced:
            paused = self._silent_frames >= PAUSE_FRAMES
            pause_start, self._last_voiced_end = self._last_voiced_end, end
            self._silent_frames = 0
            if paused and start - self._segment_start >= self.soft_limit:
                # speech resumed after a pause near the limit: cut in the pause's middle now
                # (a pause that turns into silence_ms of silence ends the segment instead)
                cut = (pause_start + start) // 2
                self._last_end = cut
                self._segment_start = cut
                return [SpeechEnd(cut, "max_length"), SpeechStart(cut)]
        else:
            self._silent_frames += 1
        if self._silent_frames >= self.silence_frames:
            self.in_speech = False
            self._last_end = min(self._last_voiced_end + self.tail, end)
            return [SpeechEnd(self._last_end, "endpoint")]
        if end - self._segment_start >= self.max_segment:
            cut = self._quiet_point(end)
            self._last_end = cut
            self._segment_start = cut
            return [SpeechEnd(cut, "max_length"), SpeechStart(cut)]
        return []

    def _quiet_point(self, end: int) -> int:
        """The start of the quietest recent frame, preferring unvoiced ones, as a cut point."""
        earliest = self._segment_start + SAMPLE_RATE  # keep at least 1 s in the cut segment
        candidates = [(not v, -e, s) for s, v, e in self._history if s > earliest]
        if not candidates:
            return end
        _, _, start = max(candidates)
        return start
