"""Whole-file transcription (`asr-stream transcribe --offline`) through any `Recognizer`.

The file is decoded at once: one final `DecodeRequest` with all of its audio, no streaming and
no VAD. A file longer than the recognizer's whole-audio limit (Qwen3-ASR: 1200 s, the
reference's `MAX_ASR_INPUT_SECONDS`; Whisper: its 30 s segment) is cut as the reference cuts
long audio: near every multiple of the limit, at the quietest point within 5 s before it (the
100 ms window with the least energy, then its quietest sample), and the pieces are transcribed
in order, each with the end of the text before it as context.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from streaming.recognizer import DecodeRequest, Recognizer, join_words

SAMPLE_RATE = 16_000  # Hz
SEARCH_S = 5.0  # a cut is searched this far before its target
QUIET_WINDOW = 1_600  # samples: the 100 ms energy window of the reference's search
PREVIOUS_CHARS = 200  # earlier text handed to the next piece


@dataclass(frozen=True)
class Piece:
    """The transcript of one piece of the file."""

    start_ms: int
    end_ms: int
    text: str
    language: str | None


def read_audio(path: Path) -> np.ndarray:
    """Reads WAV/FLAC/OGG as 16 kHz mono float32 samples.

    Raises:
        ValueError: the file cannot be read as audio.
    """
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot read {path} as audio: {exc}") from exc
    mono = samples.mean(axis=1).astype(np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
    return mono


def cut_points(samples: np.ndarray, max_s: float) -> list[int]:
    """Sample indices where a file longer than `max_s` seconds is cut (empty if it fits)."""
    limit = int(max_s * SAMPLE_RATE)
    cuts: list[int] = []
    start = 0
    while len(samples) - start > limit:
        target = start + limit
        low = max(start + 1, target - int(SEARCH_S * SAMPLE_RATE))
        region = np.abs(samples[low:target])
        if len(region) > QUIET_WINDOW:
            energy = np.convolve(region, np.ones(QUIET_WINDOW), mode="valid")
            window = int(np.argmin(energy))
            cut = low + window + int(np.argmin(region[window : window + QUIET_WINDOW]))
        else:
            cut = target
        cuts.append(cut)
        start = cut
    return cuts


def transcribe_file(
    recognizer: Recognizer,
    samples: np.ndarray,
    *,
    language: str | None = None,
    context: str = "",
    hotwords: Sequence[str] = (),
) -> list[Piece]:
    """Transcribes a whole recording, in as few final decodes as the recognizer allows.

    Args:
        recognizer: any recognizer; `max_offline_s` (if it has one) or `info.max_segment_s`
            bounds one decode.
        samples: 16 kHz mono float32.
        language: ISO code, or None to detect.
        context: the session-style context text.
        hotwords: words to favour.

    Returns:
        One piece per decode, in order.
    """
    max_s = float(getattr(recognizer, "max_offline_s", recognizer.info.max_segment_s))
    bounds = [0, *cut_points(samples, max_s), len(samples)]
    pieces: list[Piece] = []
    previous = ""
    for start, end in itertools.pairwise(bounds):
        request = DecodeRequest(
            audio=samples[start:end], context=context, hotwords=tuple(hotwords),
            previous_text=previous[-PREVIOUS_CHARS:], language=language, final=True,
        )  # fmt: skip
        hypothesis = recognizer.decode([request])[0]
        text = join_words(hypothesis.words)
        pieces.append(Piece(start * 1000 // SAMPLE_RATE, end * 1000 // SAMPLE_RATE, text,
                            hypothesis.language))  # fmt: skip
        previous = f"{previous} {text}".strip()
    return pieces
