"""AudioEncoder.forward against the reference audio tower, with the same tiny random weights.

The reference is transformers' Qwen3ASRForConditionalGeneration loaded from the tiny -hf
checkpoint; its `get_audio_features` runs the audio tower and the projector. In transformers
5.23 the sdpa and eager paths split the token sequence by `cu_seqlens` and attend inside each
window separately, so its default output is already windowed. To show that the test sees the
difference, the same reference with one window over the whole clip (`cu_seqlens` passed in)
must disagree with ours on audio longer than a window.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import Qwen3ASRForConditionalGeneration

from encoder.checkpoint import load_audio_encoder
from encoder.config import CHUNK_FRAMES, num_tokens

ATOL = 1e-4  # issue: fp32 encoder output within 1e-4 of the reference


def reference_audio_embeddings(
    model: Qwen3ASRForConditionalGeneration,
    features: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference's projected audio embeddings (N, O) for (M, T) features."""
    frames = features.shape[1]
    padded = -(-frames // CHUNK_FRAMES) * CHUNK_FRAMES  # the reference wants whole seconds
    mask = torch.zeros(1, padded, dtype=torch.long)
    mask[:, :frames] = 1
    inputs = torch.nn.functional.pad(features, (0, padded - frames))[None]
    extra = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
    with torch.no_grad():
        return model.model.get_audio_features(inputs, mask, **extra).pooler_output


def load_reference(directory: Path, attention: str) -> Qwen3ASRForConditionalGeneration:
    """The reference model in fp32 with the given attention implementation."""
    return Qwen3ASRForConditionalGeneration.from_pretrained(
        directory, dtype=torch.float32, attn_implementation=attention
    ).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("seconds", [0.37, 3.5, 8.0, 21.3])
def test_matches_reference_8s_window(
    make_checkpoint: Callable[..., Path],
    speech_features: torch.Tensor,
    attention: str,
    seconds: float,
) -> None:
    """Output on speech shorter and longer than the 8 s window is within 1e-4 of the reference."""
    directory = make_checkpoint(layout="hf", dtype="float32")
    reference = load_reference(directory, attention)
    encoder = load_audio_encoder(directory)
    features = speech_features[:, : round(seconds * 100)]
    expected = reference_audio_embeddings(reference, features)
    with torch.no_grad():
        ours, lengths = encoder(features[None])
    assert ours.shape[1] == expected.shape[0] == num_tokens(features.shape[1]) == int(lengths[0])
    assert float(expected.abs().mean()) > 0.1  # outputs are O(1), so 1e-4 is a real test
    torch.testing.assert_close(ours[0], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seconds", [1.5, 7.2, 13.0])
def test_matches_reference_2s_window(
    make_checkpoint: Callable[..., Path], speech_features: torch.Tensor, seconds: float
) -> None:
    """With a checkpoint whose window is 2 s (n_window_infer 200), outputs still match."""
    directory = make_checkpoint(layout="hf", dtype="float32", window_seconds=2)
    reference = load_reference(directory, "sdpa")
    encoder = load_audio_encoder(directory)
    assert encoder.config.window_tokens == 26
    features = speech_features[:, : round(seconds * 100)]
    with torch.no_grad():
        ours, _ = encoder(features[None])
    torch.testing.assert_close(
        ours[0], reference_audio_embeddings(reference, features), atol=ATOL, rtol=0
    )


def test_global_attention_reference_differs(
    make_checkpoint: Callable[..., Path], speech_features: torch.Tensor
) -> None:
    """Past 8 s, the reference forced to attend globally differs from our windowed output."""
    directory = make_checkpoint(layout="hf", dtype="float32")
    reference = load_reference(directory, "sdpa")
    encoder = load_audio_encoder(directory)
    features = speech_features[:, :1500]  # 15 s: windows of 104 and 91 tokens
    n = num_tokens(features.shape[1])
    global_ref = reference_audio_embeddings(
        reference, features, torch.tensor([0, n], dtype=torch.int32)
    )
    with torch.no_grad():
        ours, _ = encoder(features[None])
    assert float((ours[0] - global_ref).abs().max()) > 100 * ATOL


def test_batch_equals_single_items(
    make_checkpoint: Callable[..., Path], speech_features: torch.Tensor
) -> None:
    """A padded batch of different lengths gives each item's single-item output, zero beyond."""
    encoder = load_audio_encoder(make_checkpoint(layout="hf", dtype="float32"))
    lengths = [1234, 37, 900, 0]
    batch = torch.randn(len(lengths), 128, max(lengths))  # garbage past each length
    for i, n in enumerate(lengths):
        batch[i, :, :n] = speech_features[:, i * 100 : i * 100 + n]
    with torch.no_grad():
        out, token_lengths = encoder(batch, torch.tensor(lengths))
        for i, n in enumerate(lengths):
            assert int(token_lengths[i]) == num_tokens(n)
            single, _ = encoder(batch[i : i + 1, :, :n])
            torch.testing.assert_close(out[i, : num_tokens(n)], single[0], atol=1e-5, rtol=0)
            assert bool((out[i, num_tokens(n) :] == 0).all())


def test_forward_validates_input(make_checkpoint: Callable[..., Path]) -> None:
    """Wrong feature shapes and out-of-range lengths raise ValueError naming what was given."""
    encoder = load_audio_encoder(make_checkpoint(layout="hf", dtype="float32"))
    with pytest.raises(ValueError, match=r"\(batch, 128, frames\), got \(1, 80, 10\)"):
        encoder(torch.zeros(1, 80, 10))
    with pytest.raises(ValueError, match=r"lengths must be 1 values in 0\.\.10, got \[11\]"):
        encoder(torch.zeros(1, 128, 10), torch.tensor([11]))
