"""Whole-file transcription (`asr-stream transcribe --offline`) through any `Recognizer`.

A recognizer with a whole-file pipeline of its own (`Recognizer.transcribe_offline`: Whisper's
is faster-whisper's `WhisperModel.transcribe`) runs it. Any other is given the file at once: one
final `DecodeRequest` with all of its audio, no streaming and no VAD. A file longer than the
recognizer's whole-audio limit (Qwen3-ASR: 1200 s, the reference's `MAX_ASR_INPUT_SECONDS`) is
cut as the Qwen3-ASR reference cuts long audio: near every multiple of the limit, at the quietest
point within 5 s before it (the 100 ms window with the least energy, then its quietest sample),
and the pieces are transcribed in order, each with the end of the text before it as context.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from streaming.recognizer import (
    DecodeRequest,
    OfflineOptions,
    OfflineSegment,
    Recognizer,
    Word,
    join_words,
)

SAMPLE_RATE = 16_000  # Hz
SEARCH_S = 5.0  # a cut is searched this far before its target
QUIET_WINDOW = 1_600  # samples: the 100 ms energy window of the reference's search
PREVIOUS_CHARS = 200  # earlier text handed to the next piece

log = logging.getLogger(__name__)


def read_audio(source: Path | BinaryIO) -> np.ndarray:
    """Reads WAV/FLAC/OGG/MP3 (a path or an open binary file) as 16 kHz mono float32 samples.

    Raises:
        ValueError: the data cannot be read as audio.
    """
    name = source if isinstance(source, Path) else "the upload"
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ValueError(f"cannot read {name} as audio: {exc}") from exc
    if not len(samples):
        raise ValueError(f"{name} holds no audio")
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
    recognizer: Recognizer, samples: np.ndarray, options: OfflineOptions | None = None
) -> Iterator[OfflineSegment]:
    """Transcribes a whole recording: the recognizer's own pipeline, else whole final decodes.

    Lazy: each step of the iterator runs the model for one piece (a window of Whisper's
    pipeline, a whole decode otherwise).

    Args:
        recognizer: any recognizer; without a pipeline of its own, `max_offline_s` (if it has
            one) or `info.max_segment_s` bounds one decode.
        samples: 16 kHz mono float32.
        options: language, context, task and word timing.

    Raises:
        ValueError: the recognizer cannot do what `options` ask (translation, word times).
    """
    options = options or OfflineOptions()
    if options.task == "translate" and not recognizer.info.translates:
        raise ValueError(f"model {recognizer.info.name} cannot translate")
    if options.task not in ("transcribe", "translate"):
        raise ValueError(f"unknown task {options.task!r}; use transcribe or translate")
    own = recognizer.transcribe_offline(samples, options)
    if own is not None:
        return own
    return _final_decodes(recognizer, samples, options)


def _final_decodes(
    recognizer: Recognizer, samples: np.ndarray, options: OfflineOptions
) -> Iterator[OfflineSegment]:
    max_s = float(getattr(recognizer, "max_offline_s", recognizer.info.max_segment_s))
    bounds = [0, *cut_points(samples, max_s), len(samples)]
    previous = ""
    for start, end in itertools.pairwise(bounds):
        request = DecodeRequest(
            audio=samples[start:end], context=options.context, hotwords=options.hotwords,
            previous_text=previous[-PREVIOUS_CHARS:], language=options.language, final=True,
            align=options.word_timestamps,
        )  # fmt: skip
        hypothesis = recognizer.decode([request])[0]
        text = join_words(hypothesis.words)
        offset = start * 1000 // SAMPLE_RATE
        words: tuple[Word, ...] = ()
        if options.word_timestamps and recognizer.info.word_timestamps:
            timed = hypothesis.aligned if hypothesis.aligned is not None else hypothesis.words
            words = tuple(
                dataclasses.replace(w, start_ms=offset + w.start_ms, end_ms=offset + w.end_ms)
                for w in timed
            )
        if hypothesis.warning is not None:
            log.warning("%s", hypothesis.warning[1])
        yield OfflineSegment(offset, end * 1000 // SAMPLE_RATE, text, hypothesis.language, words)
        previous = f"{previous} {text}".strip()
