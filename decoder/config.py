"""Configuration of the Qwen3 LLM decoder of Qwen3-ASR.

`DecoderConfig` holds only what shapes the decoder. `DecoderConfig.from_checkpoint_config` reads
the `config.json` of a checkpoint in either published layout:

- original (`Qwen/Qwen3-ASR-0.6B`): `thinker_config.text_config`, with `rope_theta` at its top
  and an MRoPE `rope_scaling` (`mrope_section`, `interleaved`). Every position row of the
  MRoPE is the same sequential index for an audio-in-text prompt, so the interleaved MRoPE
  equals ordinary 1D RoPE over positions 0..L-1 (checked against the reference in the tests);
  only `rope_type` "default" is accepted.
- transformers-native (`...-hf`): top-level `text_config` (model_type `qwen3`), with
  `rope_parameters.rope_theta` and the MRoPE keys stripped.

`tie_word_embeddings` is looked up in `text_config`, then in the model config; the ASR
checkpoints tie the output head to the input embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Field names in text_config, per DecoderConfig field.
_TEXT_KEYS: Mapping[str, str] = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
}


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of the Qwen3 decoder (a dense, pre-norm, GQA transformer with QK-norm).

    Raises:
        ValueError: at construction, naming the field and value, when a field is out of range.
    """

    vocab_size: int  # embedding rows (151936 for the ASR models; the tokenizer uses fewer)
    hidden_size: int  # residual width (1024 for 0.6B, 2048 for 1.7B)
    intermediate_size: int  # SwiGLU hidden width (3072 for 0.6B)
    num_layers: int  # decoder layers (28)
    num_heads: int  # query heads (16)
    num_kv_heads: int  # key/value heads shared by groups of query heads (8)
    head_dim: int = 128  # width of one head; q_proj is num_heads * head_dim wide
    rms_norm_eps: float = 1e-6  # epsilon of every RMSNorm, QK-norms included
    rope_theta: float = 1_000_000.0  # RoPE base
    tie_word_embeddings: bool = True  # the output head is the input embedding
    max_positions: int = 65_536  # longest prompt + generation the checkpoint supports
    # rows of the output head: None for the language-model head (vocab_size rows); the forced
    # aligner's head has one row per 80 ms timestamp class instead (5000, untied)
    num_classes: int | None = None

    @property
    def head_size(self) -> int:
        """Outputs of the head: the vocabulary, or the aligner's timestamp classes."""
        return self.num_classes if self.num_classes is not None else self.vocab_size

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_positions",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"DecoderConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"DecoderConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"DecoderConfig.num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            # rotate-half RoPE pairs dimension i with i + head_dim / 2
            raise ValueError(f"DecoderConfig.head_dim must be even, got {self.head_dim}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DecoderConfig.{name} must be a positive number, got {value!r}")

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per prompt position at 4 bytes per value (halve for bf16)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * 4

    @classmethod
    def from_checkpoint_config(cls, config: Mapping[str, Any]) -> DecoderConfig:
        """Reads the decoder shape from a checkpoint's parsed `config.json` (either layout).

        Args:
            config: the whole parsed `config.json`.

        Returns:
            The decoder config.

        Raises:
            ValueError: naming the field when text_config is absent, a required field is
                missing, or a value is unsupported (activation, bias, RoPE type).
        """
        parent = config.get("thinker_config", config)
        where = "thinker_config.text_config" if "thinker_config" in config else "text_config"
        if not isinstance(parent, Mapping):
            raise ValueError(f"config.json: thinker_config must be an object, got {parent!r}")
        text = parent.get("text_config")
        if not isinstance(text, Mapping):
            raise ValueError(f"config.json: {where} must be an object, got {text!r}")
        values: dict[str, Any] = {}
        for field, key in _TEXT_KEYS.items():
            if key not in text:
                raise ValueError(f"config.json: {where}.{key} is missing")
            values[field] = text[key]
        values["head_dim"] = text.get("head_dim") or values["hidden_size"] // values["num_heads"]
        values["rms_norm_eps"] = text.get("rms_norm_eps", 1e-6)
        values["max_positions"] = text.get("max_position_embeddings", 65_536)
        if text.get("hidden_act", "silu") != "silu":
            raise ValueError(
                f"config.json: {where}.hidden_act must be 'silu', got {text['hidden_act']!r}"
            )
        if text.get("attention_bias", False):
            raise ValueError(f"config.json: {where}.attention_bias must be false")
        values["rope_theta"] = _rope_theta(text, where)
        tie = text.get("tie_word_embeddings", parent.get("tie_word_embeddings"))
        if tie is None:
            tie = config.get("tie_word_embeddings", True)
        values["tie_word_embeddings"] = bool(tie)
        classes = aligner_classes(config)
        if classes is not None:  # a classification head is never the embedding
            values["num_classes"] = classes
            values["tie_word_embeddings"] = False
        return cls(**values)


def aligner_classes(config: Mapping[str, Any]) -> int | None:
    """The timestamp classes of a forced-aligner checkpoint's config.json, None for an ASR one.

    Original layout: `thinker_config.model_type == "qwen3_forced_aligner"` with `classify_num`;
    -hf layout: architecture `Qwen3ASRForTokenClassification` with `num_labels`.

    Raises:
        ValueError: an aligner config without a positive class count.
    """
    thinker = config.get("thinker_config")
    if isinstance(thinker, Mapping) and thinker.get("model_type") == "qwen3_forced_aligner":
        key, value = "thinker_config.classify_num", thinker.get("classify_num")
    elif "Qwen3ASRForTokenClassification" in (config.get("architectures") or ()):
        key, value = "num_labels", config.get("num_labels")
        if value is None and isinstance(config.get("id2label"), Mapping):
            value = len(config["id2label"])
    else:
        return None
    if not _is_int(value) or int(value) <= 0:  # type: ignore[arg-type]
        raise ValueError(f"config.json: {key} must be a positive int, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def _rope_theta(text: Mapping[str, Any], where: str) -> float:
    """The RoPE base from either layout; only the default (unscaled) RoPE is supported."""
    for key in ("rope_parameters", "rope_scaling"):
        rope = text.get(key)
        if rope is None:
            continue
        if not isinstance(rope, Mapping):
            raise ValueError(f"config.json: {where}.{key} must be an object, got {rope!r}")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise ValueError(
                f"config.json: {where}.{key}.rope_type must be 'default', got {kind!r}"
            )
    theta = text.get("rope_theta")
    parameters = text.get("rope_parameters")
    if theta is None and isinstance(parameters, Mapping):
        theta = parameters.get("rope_theta")
    if theta is None:
        raise ValueError(
            f"config.json: {where}.rope_theta (or rope_parameters.rope_theta) is missing"
        )
    return float(theta)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Qwen3-ASR-0.6B's LLM (and the aligner's); 1.7B is hidden 2048 / intermediate 6144.
QWEN3_0_6B = DecoderConfig(
    vocab_size=151_936,
    hidden_size=1024,
    intermediate_size=3072,
    num_layers=28,
    num_heads=16,
    num_kv_heads=8,
)
QWEN3_1_7B = DecoderConfig(
    vocab_size=151_936,
    hidden_size=2048,
    intermediate_size=6144,
    num_layers=28,
    num_heads=16,
    num_kv_heads=8,
)
