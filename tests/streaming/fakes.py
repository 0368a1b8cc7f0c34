"""Test doubles for the session engine: a scripted recognizer and PCM helpers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streaming.recognizer import DecodeRequest, Hypothesis, ModelInfo, Recognizer, Word

SAMPLE_RATE = 16_000


class ScriptedRecognizer(Recognizer):
    """Hears a fixed script: word i is audible once the segment audio reaches its end time.

    Each decode returns the committed words verbatim, then the scripted words that end within
    the audio it was given and that come after the committed ones. `revisions` maps a decode
    number to a replacement text for its last word, to simulate a changing hypothesis.
    """

    def __init__(
        self,
        script: Sequence[tuple[str, int]],
        *,
        languages=frozenset({"en"}),
        probability: float | None = None,
    ):
        self.script = [Word(text, max(0, end - 200), end, probability) for text, end in script]
        self.info = ModelInfo(name="scripted", languages=languages, word_timestamps=True)
        self.requests: list[DecodeRequest] = []
        self.revisions: dict[int, str] = {}

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        answers = []
        for request in requests:
            self.requests.append(request)
            heard = [w for w in self.script if w.end_ms <= request.duration_ms]
            # continue after the last committed script word (the session may drop some words)
            done = self.script.index(request.committed[-1]) + 1 if request.committed else 0
            tail = heard[done:]
            revision = self.revisions.get(len(self.requests))
            if revision is not None and tail:
                tail[-1] = Word(revision, tail[-1].start_ms, tail[-1].end_ms)
            answers.append(Hypothesis(words=request.committed + tuple(tail), language="en"))
        return answers


def tone(seconds: float, rate: int = SAMPLE_RATE, freq: float = 220.0, level: float = 0.3):
    """A voiced-looking signal (harmonic-rich tone) that webrtcvad classifies as speech."""
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 8))
    return (level * wave / np.max(np.abs(wave))).astype(np.float32)


def silence(seconds: float, rate: int = SAMPLE_RATE):
    return np.zeros(int(seconds * rate), np.float32)


def s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def frames(pcm: bytes, frame_bytes: int) -> list[bytes]:
    return [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]
