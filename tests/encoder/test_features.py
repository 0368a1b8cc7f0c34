"""Log-mel front end: parity with the reference extractor, and the streaming form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from transformers import Qwen3ASRFeatureExtractor

from encoder.features import (
    HOP_LENGTH,
    REFERENCE_MIN_SAMPLES,
    LogMelFrontEnd,
    floor_difference,
    stream_log_mel,
)

ATOL = 1e-4  # issue: front end within 1e-4 of the reference on real speech
STEP_SECONDS = (0.5, 1.0, 2.0)


def reference_features(samples: np.ndarray) -> torch.Tensor:
    """The reference extractor's valid frames for one clip (its own defaults otherwise)."""
    extractor = Qwen3ASRFeatureExtractor()
    out = extractor(
        samples,
        sampling_rate=16000,
        padding="longest",
        return_tensors="pt",
        return_attention_mask=True,
    )
    valid = int(out["attention_mask"][0].sum())
    return out["input_features"][0, :, :valid]


def test_whole_utterance_matches_reference(corpus: list[Any]) -> None:
    """Every corpus clip gives the reference's frames within 1e-4."""
    front_end = LogMelFrontEnd()
    for utterance in corpus:
        samples = utterance.samples()
        ours, ref = front_end(samples), reference_features(samples)
        assert ours.shape == ref.shape == (128, len(samples) // HOP_LENGTH)
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_short_clip_padding_matches_reference(corpus: list[Any]) -> None:
    """With min_samples=8000 a 0.3 s clip is zero-padded to 0.5 s exactly as the reference does."""
    samples = corpus[0].samples()[:4800]
    ours = LogMelFrontEnd()(samples, min_samples=REFERENCE_MIN_SAMPLES)
    ref = reference_features(samples)
    assert ours.shape == ref.shape == (128, 50)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_one_step_stream_equals_whole_utterance(corpus: list[Any]) -> None:
    """Feeding a clip in a single step and flushing reproduces the whole-utterance frames."""
    front_end = LogMelFrontEnd()
    for utterance in corpus:
        samples = utterance.samples()
        streamed = stream_log_mel(samples, len(samples), front_end)
        torch.testing.assert_close(streamed, front_end(samples), atol=1e-5, rtol=0)


@pytest.mark.parametrize("step_seconds", STEP_SECONDS)
def test_stream_equals_whole_once_the_maximum_is_seen(
    corpus: list[Any], step_seconds: float
) -> None:
    """Streamed frames equal the reference from the step that contains the loudest frame on."""
    front_end = LogMelFrontEnd()
    step = int(step_seconds * 16000)
    for utterance in corpus:
        samples = utterance.samples()
        whole = front_end(samples)
        streamed = stream_log_mel(samples, step, front_end)
        assert streamed.shape == whole.shape
        loudest = int(front_end.log_power(torch.as_tensor(samples)).max(dim=0).values.argmax())
        # Frame t is emitted once 160 t + 200 samples have arrived. Frames of steps before the
        # loudest frame's step may have a lower floor; frames of that step onward may not.
        loudest_step = -(-(loudest * HOP_LENGTH + 200) // step) - 1
        received = loudest_step * step  # samples before that step
        first_exact = (received - 200) // HOP_LENGTH + 1 if received >= 200 else 0
        torch.testing.assert_close(
            streamed[:, first_exact:], whole[:, first_exact:], atol=1e-5, rtol=0
        )
        # The running floor is never above the per-utterance floor.
        assert bool((streamed <= whole + 1e-6).all())


def test_any_split_gives_the_same_frames(speech: Callable[[float], np.ndarray]) -> None:
    """Irregular step sizes (1 to 700 samples) give the same frames as one big step."""
    front_end = LogMelFrontEnd()
    samples = speech(3.0)
    # A loud tone first makes the first frame the loudest, so every split floors alike.
    tone = 0.9 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)
    samples = np.concatenate([tone, samples]).astype(np.float32)
    rng = np.random.default_rng(0)
    state, pieces, start = front_end.initial_state(), [], 0
    while start < len(samples):
        size = int(rng.integers(1, 700))
        frames, state = front_end.step(samples[start : start + size], state)
        assert state.pending.numel() < 760  # bounded: under one window plus one hop
        pieces.append(frames)
        start += size
    pieces.append(front_end.flush(state))
    streamed = torch.cat(pieces, dim=1)
    torch.testing.assert_close(
        streamed, stream_log_mel(samples, len(samples), front_end), atol=1e-5, rtol=0
    )


def test_floor_difference_is_small_on_speech(corpus: list[Any]) -> None:
    """On real speech at 1 s steps the running-max floor changes under 3% of values, by < 0.5."""
    result = floor_difference([u.samples() for u in corpus], 16000)
    assert result.changed_fraction < 0.03
    assert result.max_abs < 0.5
    assert result.mean_abs < 0.01


def test_tiny_stream_gives_no_frames() -> None:
    """A stream of 200 samples or fewer yields no frames, as the whole-utterance form does."""
    front_end = LogMelFrontEnd()
    frames, state = front_end.step(np.zeros(150, np.float32), front_end.initial_state())
    assert frames.shape == (128, 0) and front_end.flush(state).shape == (128, 0)
    assert front_end(np.zeros(200, np.float32)).shape == (128, 0)


def test_rejects_multichannel_audio() -> None:
    """Two-dimensional input raises ValueError naming the shape."""
    with pytest.raises(ValueError, match=r"1-D mono audio, got shape \(2, 100\)"):
        LogMelFrontEnd()(np.zeros((2, 100), np.float32))
