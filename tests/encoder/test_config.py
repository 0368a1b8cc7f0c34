"""EncoderConfig: published sizes, both config.json layouts, validation messages."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from encoder.config import (
    QWEN3_ASR_0_6B,
    QWEN3_ASR_1_7B,
    QWEN3_FORCED_ALIGNER_0_6B,
    EncoderConfig,
    num_tokens,
)

ORIGINAL_06B: dict[str, Any] = {
    "model_type": "qwen3_asr",
    "thinker_config": {
        "audio_config": {
            "d_model": 896,
            "encoder_layers": 18,
            "num_hidden_layers": 18,
            "encoder_attention_heads": 14,
            "encoder_ffn_dim": 3584,
            "output_dim": 1024,
            "num_mel_bins": 128,
            "downsample_hidden_size": 480,
            "n_window": 50,
            "n_window_infer": 800,
            "activation_function": "gelu",
        },
        "text_config": {"hidden_size": 1024},
    },
}
HF_17B: dict[str, Any] = {
    "model_type": "qwen3_asr",
    "audio_config": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "output_dim": 2048,
        "n_window": 50,
        "n_window_infer": 800,
    },
    "text_config": {"hidden_size": 2048},
}


def test_published_sizes() -> None:
    """The three named configs carry the published encoder shapes and an 8 s window."""
    assert (
        QWEN3_ASR_0_6B.d_model,
        QWEN3_ASR_0_6B.num_layers,
        QWEN3_ASR_0_6B.num_heads,
        QWEN3_ASR_0_6B.ffn_dim,
        QWEN3_ASR_0_6B.output_dim,
    ) == (896, 18, 14, 3584, 1024)
    assert (QWEN3_ASR_1_7B.d_model, QWEN3_ASR_1_7B.num_layers, QWEN3_ASR_1_7B.output_dim) == (
        1024,
        24,
        2048,
    )
    assert (QWEN3_FORCED_ALIGNER_0_6B.d_model, QWEN3_FORCED_ALIGNER_0_6B.output_dim) == (1024, 1024)
    assert QWEN3_ASR_0_6B.head_dim == 64 and QWEN3_ASR_0_6B.window_tokens == 104
    assert QWEN3_ASR_0_6B.conv_features == 480 * 16


def test_token_counts() -> None:
    """num_tokens gives 13 tokens per second plus the conv length of a partial second."""
    assert [num_tokens(n) for n in (0, 1, 50, 99, 100, 200, 800, 3000)] == [
        0,
        1,
        7,
        13,
        13,
        26,
        104,
        390,
    ]


def test_reads_original_layout() -> None:
    """An original-layout config.json (thinker_config.audio_config) gives the 0.6B encoder."""
    assert EncoderConfig.from_checkpoint_config(ORIGINAL_06B) == QWEN3_ASR_0_6B


def test_reads_hf_layout_with_renamed_fields() -> None:
    """A -hf config.json with the aliased field names gives the 1.7B encoder."""
    assert EncoderConfig.from_checkpoint_config(HF_17B) == QWEN3_ASR_1_7B


def test_window_from_checkpoint_and_override() -> None:
    """n_window_infer sets the window in seconds, and an explicit window overrides it."""
    config = copy.deepcopy(HF_17B)
    config["audio_config"]["n_window_infer"] = 200
    assert EncoderConfig.from_checkpoint_config(config).window_seconds == 2
    assert EncoderConfig.from_checkpoint_config(config, window_seconds=5).window_tokens == 65


@pytest.mark.parametrize("value", [0, 9, 2.5, True, "8"])
def test_window_seconds_is_validated(value: object) -> None:
    """A window outside whole seconds 1..8 raises ValueError naming the field and the value."""
    with pytest.raises(ValueError, match=rf"window_seconds.*{value!r}"):
        QWEN3_ASR_0_6B.with_window(value)  # type: ignore[arg-type]


def test_heads_must_divide_width() -> None:
    """A width not divisible by the head count raises ValueError naming both fields."""
    with pytest.raises(ValueError, match=r"d_model \(100\).*num_heads \(3\)"):
        EncoderConfig(d_model=100, num_layers=1, num_heads=3, ffn_dim=8, output_dim=8)


def test_missing_field_is_named() -> None:
    """A config.json without output_dim raises ValueError naming the full field path."""
    config = copy.deepcopy(ORIGINAL_06B)
    del config["thinker_config"]["audio_config"]["output_dim"]
    with pytest.raises(ValueError, match=r"thinker_config\.audio_config\.output_dim is missing"):
        EncoderConfig.from_checkpoint_config(config)


def test_conflicting_aliases_are_rejected() -> None:
    """Two spellings of one field with different values raise ValueError showing both."""
    config = copy.deepcopy(ORIGINAL_06B)
    config["thinker_config"]["audio_config"]["num_hidden_layers"] = 24
    with pytest.raises(ValueError, match=r"conflicting.*encoder_layers.*18.*24"):
        EncoderConfig.from_checkpoint_config(config)


def test_projector_must_match_llm_width() -> None:
    """An output_dim different from text_config.hidden_size raises ValueError naming both."""
    config = copy.deepcopy(HF_17B)
    config["text_config"]["hidden_size"] = 1024
    with pytest.raises(ValueError, match=r"output_dim \(2048\).*hidden_size \(1024\)"):
        EncoderConfig.from_checkpoint_config(config)


def test_bad_window_frames_are_rejected() -> None:
    """An n_window_infer that is not whole seconds raises ValueError naming it."""
    config = copy.deepcopy(HF_17B)
    config["audio_config"]["n_window_infer"] = 250
    with pytest.raises(ValueError, match=r"audio_config\.n_window_infer.*250"):
        EncoderConfig.from_checkpoint_config(config)


def test_unknown_layout_is_rejected() -> None:
    """A config.json with no audio config at all raises ValueError saying what was expected."""
    with pytest.raises(ValueError, match=r"neither thinker_config\.audio_config.*nor audio_config"):
        EncoderConfig.from_checkpoint_config({"model_type": "qwen3"})
