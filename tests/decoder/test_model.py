"""QwenDecoder, its config and its KV cache: against the reference and against itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import Qwen3ASRForConditionalGeneration
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

from decoder.config import QWEN3_0_6B, DecoderConfig
from decoder.kv_cache import BLOCK, KVCache
from decoder.loader import load_decoder
from decoder.model import QwenDecoder, Rotary

ATOL = 1e-4  # fp32 logits, as the issue asks


def random_decoder(config: DecoderConfig, seed: int = 0) -> QwenDecoder:
    """A decoder with O(1) random weights (norm scales near 1)."""
    torch.manual_seed(seed)
    decoder = QwenDecoder(config).eval()
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "embed" not in name:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return decoder


SMALL = DecoderConfig(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8,
)  # fmt: skip


def test_config_reads_both_layouts_alike(make_checkpoint: Callable[..., Path]) -> None:
    """The original and -hf config.json give the same DecoderConfig."""
    original = json.loads((make_checkpoint(layout="original") / "config.json").read_text())
    hf = json.loads((make_checkpoint(layout="hf") / "config.json").read_text())
    config = DecoderConfig.from_checkpoint_config(original)
    assert config == DecoderConfig.from_checkpoint_config(hf)
    assert (config.hidden_size, config.num_layers, config.head_dim) == (64, 2, 16)
    assert config.rope_theta == 1e6 and config.tie_word_embeddings


def test_config_errors_name_the_field() -> None:
    """Invalid values and unsupported settings raise ValueError naming the field."""
    with pytest.raises(ValueError, match="num_kv_heads"):
        DecoderConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1,
                      num_heads=3, num_kv_heads=2)  # fmt: skip
    text = {"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 1e6}  # fmt: skip
    assert DecoderConfig.from_checkpoint_config({"text_config": text}).head_dim == 4
    without_layers = {k: v for k, v in text.items() if k != "num_hidden_layers"}
    with pytest.raises(ValueError, match=r"text_config\.num_hidden_layers is missing"):
        DecoderConfig.from_checkpoint_config({"text_config": without_layers})
    with pytest.raises(ValueError, match="rope_type must be 'default'"):
        DecoderConfig.from_checkpoint_config(
            {"text_config": {**text, "rope_scaling": {"rope_type": "yarn"}}}
        )
    with pytest.raises(ValueError, match="hidden_act"):
        DecoderConfig.from_checkpoint_config({"text_config": {**text, "hidden_act": "gelu"}})


def test_0_6b_constant_has_the_published_size() -> None:
    """QWEN3_0_6B has 0.596 B parameters with the head tied (reference doc §1.2)."""
    with torch.device("meta"):
        decoder = QwenDecoder(QWEN3_0_6B)
    unique = {id(p): p.numel() for p in decoder.parameters()}
    assert round(sum(unique.values()) / 1e9, 3) == 0.596


def test_rope_equals_interleaved_mrope_with_identical_rows() -> None:
    """1D RoPE equals the checkpoint's interleaved MRoPE [24, 20, 20] when the rows agree."""
    config = Qwen3VLTextConfig(
        hidden_size=2048, num_attention_heads=16, head_dim=128,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                         "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    )  # fmt: skip
    mrope = Qwen3VLTextRotaryEmbedding(config)
    positions = torch.arange(300)[None].expand(3, 1, -1)  # (3, B, T): t, h, w rows equal
    cos_ref, sin_ref = mrope(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = Rotary(128, 1e6)(0, 300, torch.float32)
    assert torch.allclose(cos, cos_ref[0], atol=1e-6) and torch.allclose(sin, sin_ref[0], atol=1e-6)
    # distinct rows would differ: the comparison can fail
    shifted = positions.clone()
    shifted[1] += 7
    assert not torch.allclose(cos, mrope(torch.zeros(1), shifted)[0][0], atol=1e-3)


def test_logits_match_the_reference_language_model(untied: Callable[[str], Path]) -> None:
    """A whole-sequence forward equals the reference LLM's logits within 1e-4 (fp32)."""
    directory = untied("hf")
    reference = Qwen3ASRForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
    decoder = load_decoder(directory)
    ids = torch.randint(0, 304, (2, 57), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    ours = decoder(ids, num_logits=ids.shape[1])
    assert (ours - expected).abs().max() < ATOL
    assert expected.std() > 0.1  # not a degenerate comparison


def test_cached_chunks_equal_one_pass() -> None:
    """Feeding a sequence in chunks through a KV cache gives the one-pass logits."""
    decoder = random_decoder(SMALL)
    x = torch.randn(1, 300, SMALL.hidden_size)
    whole = decoder(x, num_logits=300)
    cache = decoder.new_cache(capacity=1)
    pieces = [decoder(x[:, a:b], cache, num_logits=b - a) for a, b in ((0, 1), (1, 90), (90, 300))]
    assert cache.position == 300 and cache.capacity == 2 * BLOCK  # grew by blocks
    assert (torch.cat(pieces, dim=1) - whole).abs().max() < 1e-5


def test_truncating_the_cache_recomputes_the_tail_exactly() -> None:
    """After truncate(p), a different continuation gives what a fresh pass over it gives."""
    decoder = random_decoder(SMALL)
    prefix, old, new = (torch.randn(1, n, SMALL.hidden_size) for n in (40, 25, 30))
    cache = decoder.new_cache()
    decoder(prefix, cache, num_logits=0)
    decoder(old, cache, num_logits=1)
    cache.truncate(40)
    ours = decoder(new, cache, num_logits=30)
    expected = decoder(torch.cat([prefix, new], dim=1), num_logits=30)
    assert (ours - expected).abs().max() < 1e-5
    stale = decoder(torch.cat([prefix, old, new], dim=1), num_logits=30)
    assert (ours - stale).abs().max() > 1e-3  # without the truncation the answer differs


def test_num_logits_selects_the_last_positions() -> None:
    """num_logits=k returns the last k positions' logits; 0 skips the head."""
    decoder = random_decoder(SMALL)
    ids = torch.randint(0, SMALL.vocab_size, (1, 12))
    full = decoder(ids, num_logits=12)
    assert torch.allclose(decoder(ids, num_logits=3), full[:, -3:], atol=1e-6)
    assert decoder(ids, num_logits=0).shape == (1, 0, SMALL.vocab_size)
    with pytest.raises(ValueError, match="num_logits"):
        decoder(ids, num_logits=13)


def test_cache_validates_its_position() -> None:
    """Truncating past the position or advancing past the capacity raises ValueError."""
    cache = KVCache(2, 2, 8)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(1)
    with pytest.raises(ValueError, match="advance"):
        cache.advance(cache.capacity + 1)
    cache.advance(5)
    cache.truncate(2)
    assert cache.position == 2
    with pytest.raises(ValueError, match="positive"):
        KVCache(0, 2, 8)
    with pytest.raises(ValueError, match="one sequence"):
        random_decoder(SMALL)(torch.zeros(2, 3, dtype=torch.long), KVCache(2, 2, 8))
