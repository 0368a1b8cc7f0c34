"""AudioEncoder.step: streaming equals whole-utterance encoding, with bounded state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from encoder.checkpoint import load_audio_encoder
from encoder.config import CHUNK_FRAMES, num_tokens
from encoder.model import AudioEncoder
from encoder.state import EncoderState

ATOL = 1e-5  # fp32: only the batching of the matmuls differs between the two paths
LENGTHS_SECONDS = (0.5, 0.93, 1.0, 2.37, 7.99, 8.0, 8.01, 12.5, 16.0, 23.71, 40.0)
STEPS_SECONDS = (0.5, 1.0, 2.0)


@pytest.fixture(scope="module")
def encoder(make_checkpoint: Callable[..., Path]) -> AudioEncoder:
    """The tiny fp32 encoder with the default 8 s window."""
    return load_audio_encoder(make_checkpoint(layout="hf", dtype="float32"))


def stream(
    encoder: AudioEncoder, features: torch.Tensor, step_frames: int, check_prefixes: bool = False
) -> torch.Tensor:
    """Runs `step` over (M, T) features and returns all stable output (N, O) after a final step.

    With `check_prefixes`, also checks after every step that stable-so-far plus tentative equals
    `forward` on the frames so far, and that positions are contiguous.
    """
    state = encoder.initial_state()
    stable: list[torch.Tensor] = []
    for start in range(0, features.shape[1], step_frames):
        out, state = encoder.step(features[:, start : start + step_frames], state)
        assert out.stable_start == sum(part.shape[0] for part in stable)
        assert out.tentative_start == out.stable_start + out.stable.shape[0]
        stable.append(out.stable)
        if check_prefixes:
            with torch.no_grad():
                whole, _ = encoder(features[None, :, : start + step_frames])
            so_far = torch.cat([*stable, out.tentative])
            assert so_far.shape[0] == whole.shape[1] == out.num_tokens
            torch.testing.assert_close(so_far, whole[0], atol=ATOL, rtol=0)
    out, state = encoder.step(features[:, :0], state, final=True)
    assert out.tentative.shape[0] == 0 and state.finished
    stable.append(out.stable)
    return torch.cat(stable)


@pytest.mark.parametrize("step_seconds", STEPS_SECONDS)
@pytest.mark.parametrize("seconds", LENGTHS_SECONDS)
def test_stream_equals_whole(
    encoder: AudioEncoder, speech_features: torch.Tensor, seconds: float, step_seconds: float
) -> None:
    """Streaming 0.5-40 s of speech in 0.5, 1 or 2 s steps gives the whole-utterance output."""
    features = speech_features[:, : round(seconds * 100)]
    streamed = stream(encoder, features, round(step_seconds * 100))
    with torch.no_grad():
        whole, _ = encoder(features[None])
    assert streamed.shape == whole[0].shape == (num_tokens(features.shape[1]), 64)
    torch.testing.assert_close(streamed, whole[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("step_frames", [50, 37, 100, 230])
def test_every_step_equals_whole_prefix(
    encoder: AudioEncoder, speech_features: torch.Tensor, step_frames: int
) -> None:
    """After every step, stable output so far plus tentative equals forward on the prefix."""
    stream(encoder, speech_features[:, :1750], step_frames, check_prefixes=True)


def test_completed_windows_are_emitted_once(
    encoder: AudioEncoder, speech_features: torch.Tensor
) -> None:
    """Stable tokens appear only when a window's 8 s are complete, as one 104-token block."""
    state = encoder.initial_state()
    for second in range(1, 25):
        out, state = encoder.step(speech_features[:, (second - 1) * 100 : second * 100], state)
        if second % 8 == 0:
            assert out.stable.shape[0] == 104 and out.stable_start == (second // 8 - 1) * 104
            assert out.tentative.shape[0] == 0
        else:
            assert out.stable.shape[0] == 0
            assert out.tentative.shape[0] == 13 * (second % 8)
            assert out.tentative_start == (second // 8) * 104


def test_state_is_bounded(encoder: AudioEncoder, speech_features: torch.Tensor) -> None:
    """Over 40 s in 0.37 s steps the state never exceeds one window of tokens plus one chunk."""
    config = encoder.config
    bound = ((config.window_seconds - 1) * 13 * config.d_model + 128 * (CHUNK_FRAMES - 1)) * 4
    state, sizes = encoder.initial_state(), []
    for start in range(0, 4000, 37):
        _, state = encoder.step(speech_features[:, start : start + 37], state)
        sizes.append(state.nbytes)
        assert state.chunk_tokens.shape[0] < config.window_tokens
        assert state.partial.shape[1] < CHUNK_FRAMES
    assert max(sizes) <= bound
    assert state.frames_seen == 4000 and state.tokens_emitted == 5 * 104


def test_window_2s_stream_equals_whole(
    make_checkpoint: Callable[..., Path], speech_features: torch.Tensor
) -> None:
    """With a 2 s window, streaming in 0.5 s steps still equals whole-utterance encoding."""
    encoder = load_audio_encoder(make_checkpoint(layout="hf", dtype="float32"), window_seconds=2)
    features = speech_features[:, :1333]
    with torch.no_grad():
        whole, _ = encoder(features[None])
    torch.testing.assert_close(stream(encoder, features, 50), whole[0], atol=ATOL, rtol=0)


def test_step_many_equals_separate_steps(
    encoder: AudioEncoder, speech_features: torch.Tensor
) -> None:
    """Stepping three streams together gives each stream's separate results."""
    offsets, sizes = (0, 500, 1700), (70, 130, 45)
    together = [encoder.initial_state() for _ in offsets]
    alone = [encoder.initial_state() for _ in offsets]
    for step in range(12):
        feats = [
            speech_features[:, o + step * s : o + (step + 1) * s]
            for o, s in zip(offsets, sizes, strict=True)
        ]
        outs, together = encoder.step_many(feats, together)
        for i, f in enumerate(feats):
            single, alone[i] = encoder.step(f, alone[i])
            torch.testing.assert_close(outs[i].tentative, single.tentative, atol=ATOL, rtol=0)
            torch.testing.assert_close(outs[i].stable, single.stable, atol=ATOL, rtol=0)
            assert outs[i].tentative_start == single.tentative_start


def test_bfloat16_stream_equals_bfloat16_whole(
    make_checkpoint: Callable[..., Path], speech_features: torch.Tensor
) -> None:
    """A bf16 encoder streams to its own whole-utterance output within bf16 rounding."""
    encoder = load_audio_encoder(make_checkpoint(layout="hf"), dtype=torch.bfloat16)
    features = speech_features[:, :1000]
    with torch.no_grad():
        whole, _ = encoder(features[None])
    streamed = stream(encoder, features, 100)
    assert streamed.dtype == torch.bfloat16
    torch.testing.assert_close(streamed.float(), whole[0].float(), atol=0.1, rtol=0.05)


def test_step_rejects_bad_input(encoder: AudioEncoder) -> None:
    """Bad shapes, a finished stream and a state of another window raise ValueError."""
    state = encoder.initial_state()
    with pytest.raises(ValueError, match=r"\(128, frames\), got \(1, 128, 10\)"):
        encoder.step(torch.zeros(1, 128, 10), state)
    _, finished = encoder.step(torch.zeros(128, 10), state, final=True)
    with pytest.raises(ValueError, match="final=True"):
        encoder.step(torch.zeros(128, 10), finished)
    foreign = EncoderState(torch.zeros(200, 32), torch.zeros(128, 0), 0, 0)
    with pytest.raises(ValueError, match="state does not fit this encoder"):
        encoder.step(torch.zeros(128, 10), foreign)
