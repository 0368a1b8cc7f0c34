"""Writes a tiny random-weight Qwen3-ASR checkpoint, for tests and demos.

The directory is complete: config.json, generation_config.json, preprocessor_config.json,
chat_template.json, safetensors weights for the audio encoder, projector and a tiny Qwen3 LLM
(tied embeddings, so no lm_head), and a byte-level BPE tokenizer in both forms (vocab.json +
merges.txt + tokenizer_config.json, and tokenizer.json). The `hf` layout loads with
`transformers.Qwen3ASRForConditionalGeneration.from_pretrained(dir)` and
`transformers.AutoProcessor.from_pretrained(dir)`.

    python scripts/make_tiny_checkpoint.py OUT_DIR [--layout original|hf] [--shards N]
        [--dtype bfloat16|float32] [--seed 0] [--window-seconds 8] [--aligner [CLASSES]]

`--aligner` writes a Qwen3-ForcedAligner checkpoint instead: the same encoder and LLM body
(the same seed gives the same weights), an untied head of CLASSES timestamp classes (default
64, 5.1 s at 80 ms; the real model has 5000) stored as `thinker.lm_head` (original, with
`thinker_config.model_type = "qwen3_forced_aligner"` and `classify_num`) or `score` (-hf, with
`num_labels`, loading into `transformers.Qwen3ASRForTokenClassification`), and the aligner's
chat template (audio, then each word and two `<timestamp>` slots, no chat turns).

Token ids of the tiny tokenizer (the real model's are in brackets):

    <|endoftext|> 304 [151643]   <|im_start|> 305 [151644]   <|im_end|> 306 [151645]
    <|audio_start|> 307 [151669] <|audio_end|> 308 [151670]  <non_speech> 309 [151675]
    <|audio_pad|> 310 [151676]   <asr_text> 311 [151704]      <timestamp> 312 [151705]

Ids 0..303 are 256 byte tokens and 48 merges; the embedding has VOCAB_SIZE = 320 rows, padded
like the real 151936-row table.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.trainers import BpeTrainer

from encoder.checkpoint import INDEX_FILE, SINGLE_FILE, Layout, stored_name
from encoder.config import CHUNK_FRAMES, EncoderConfig

NUM_MERGES = 48  # BPE merges on top of the 256 byte tokens
VOCAB_SIZE = 320  # embedding rows; ids past the tokenizer's are unused padding rows
# Special tokens in the real model's order; `special` False survives skip_special_tokens.
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<non_speech>", False),
    ("<|audio_pad|>", True),
    ("<asr_text>", False),
    ("<timestamp>", False),
)
TOKEN_IDS: Mapping[str, int] = MappingProxyType(
    {token: 256 + NUM_MERGES + i for i, (token, _) in enumerate(SPECIAL_TOKENS)}
)

TINY_ENCODER = EncoderConfig(
    d_model=32, num_layers=2, num_heads=2, ffn_dim=64, output_dim=64, conv_channels=8
)
# A Qwen3 decoder: hidden 64, 2 layers, 4 query / 2 KV heads of 16, SwiGLU 128, tied embeddings.
TINY_TEXT: Mapping[str, Any] = MappingProxyType(
    {
        "model_type": "qwen3",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 65536,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "use_cache": True,
    }
)
ROPE_THETA = 1_000_000.0
# Qwen2's pre-tokenizer split (contractions, letters, single digits, punctuation, whitespace).
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TRAINING_TEXT = (
    "the quick brown fox jumps over the lazy dog. she sells sea shells on the sea shore. "
    "ten of clubs, four queen of clubs, seven of hearts, eight of spades. go forward ten meters. "
    "feels like these days go on forever. he was not an ill disposed young man. "
    "language English<asr_text>hello world, this is a test of the speech recognition system. "
)
_CHAT_TEMPLATE = (
    "{%- set system = namespace(text='') -%}"
    "{%- for message in messages if message.role == 'system' -%}"
    "{%- if message.content is string -%}{%- set system.text = system.text + message.content -%}"
    "{%- else -%}{%- for part in message.content if part.type == 'text' -%}"
    "{%- set system.text = system.text + part.text -%}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_start|>system\\n' + system.text + '<|im_end|>\\n' -}}"
    "{%- for message in messages if message.role != 'system' -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content is string -%}{{- message.content -}}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'audio' -%}{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
    "{%- elif part.type == 'text' -%}{{- part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


# the -hf aligner's template (transformers' convert script): audio, then words joined by slots
_ALIGNER_TEMPLATE = (
    "{%- set ns = namespace(audio_tokens='', words=[]) -%}{%- for m in messages -%}"
    "{%- if m.content is not string -%}{%- for c in m.content -%}"
    "{%- if c.type == 'audio' or ('audio' in c) or ('audio_url' in c) -%}"
    "{%- set ns.audio_tokens = ns.audio_tokens + '<|audio_start|><|audio_pad|><|audio_end|>' -%}"
    "{%- endif -%}"
    "{%- if c.type == 'text' and (c.text is defined) -%}{%- set ns.words = ns.words + [c.text] -%}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{{- ns.audio_tokens + ns.words | join('<timestamp><timestamp>') + '<timestamp><timestamp>' -}}"
)


def make_tiny_checkpoint(
    out_dir: str | Path,
    layout: Layout = "original",
    shards: int = 1,
    dtype: Literal["bfloat16", "float32"] = "bfloat16",
    seed: int = 0,
    window_seconds: int = 8,
    aligner_classes: int | None = None,
) -> Path:
    """Writes a complete tiny random-weight Qwen3-ASR (or ForcedAligner) checkpoint.

    Args:
        out_dir: directory to create or fill.
        layout: "original" (`thinker.*`, `thinker_config`) or "hf" (transformers-native).
        shards: number of safetensors files; more than 1 also writes the index.
        dtype: stored weight dtype.
        seed: seed of the random weights (the same seed gives the same weights in both layouts).
        window_seconds: attention window written as `n_window_infer` (1..8 s).
        aligner_classes: write a forced aligner with this many timestamp classes.

    Returns:
        The directory.

    Raises:
        ValueError: on an unknown layout or dtype, a non-positive shard count, or a bad window.
    """
    if layout not in ("original", "hf"):
        raise ValueError(f"layout must be 'original' or 'hf', got {layout!r}")
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {dtype!r}")
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    encoder = TINY_ENCODER.with_window(window_seconds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    weights = _random_weights(encoder, seed, getattr(torch, dtype))
    config = _model_config(encoder, layout, dtype)
    template = _CHAT_TEMPLATE
    if aligner_classes is not None:
        if aligner_classes < 2:
            raise ValueError(f"aligner_classes must be at least 2, got {aligner_classes}")
        weights["lm_head.weight"] = _aligner_head(aligner_classes, seed, getattr(torch, dtype))
        config = _aligner_config(config, layout, aligner_classes)
        template = _ALIGNER_TEMPLATE
    stored = {stored_name(name, layout): value for name, value in weights.items()}
    if aligner_classes is not None and layout == "hf":
        stored["score.weight"] = stored.pop("lm_head.weight")
    _write_weights(out, stored, shards)
    _write_json(out / "config.json", config)
    _write_json(
        out / "generation_config.json",
        {
            "eos_token_id": [TOKEN_IDS["<|endoftext|>"], TOKEN_IDS["<|im_end|>"]],
            "pad_token_id": TOKEN_IDS["<|im_end|>"],
            "do_sample": False,
            "max_new_tokens": 512,
        },
    )
    _write_json(out / "preprocessor_config.json", _preprocessor_config(layout))
    _write_json(out / "chat_template.json", {"chat_template": template})
    _write_tokenizer(out)
    return out


def _random_weights(encoder: EncoderConfig, seed: int, dtype: torch.dtype) -> dict[str, Any]:
    """Canonical name -> tensor, scaled so activations are O(1) and tolerances mean something."""
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}

    def matrix(name: str, *shape: int) -> None:
        fan_in = math.prod(shape[1:])
        weights[name] = torch.randn(*shape, generator=generator) / math.sqrt(fan_in)

    def vector(name: str, size: int, centre: float) -> None:
        weights[name] = centre + 0.1 * torch.randn(size, generator=generator)

    def linear(name: str, out_features: int, in_features: int, bias: bool = True) -> None:
        matrix(f"{name}.weight", out_features, in_features)
        if bias:
            vector(f"{name}.bias", out_features, 0.0)

    def layer_norm(name: str, size: int) -> None:
        vector(f"{name}.weight", size, 1.0)
        vector(f"{name}.bias", size, 0.0)

    a, d, ch = "audio_tower", encoder.d_model, encoder.conv_channels
    for i, in_channels in enumerate((1, ch, ch), start=1):
        matrix(f"{a}.conv2d{i}.weight", ch, in_channels, 3, 3)
        vector(f"{a}.conv2d{i}.bias", ch, 0.0)
    linear(f"{a}.conv_out", d, encoder.conv_features, bias=False)
    for i in range(encoder.num_layers):
        p = f"{a}.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{p}.self_attn.{proj}", d, d)
        layer_norm(f"{p}.self_attn_layer_norm", d)
        linear(f"{p}.fc1", encoder.ffn_dim, d)
        linear(f"{p}.fc2", d, encoder.ffn_dim)
        layer_norm(f"{p}.final_layer_norm", d)
    layer_norm(f"{a}.ln_post", d)
    linear(f"{a}.proj1", d, d)
    linear(f"{a}.proj2", encoder.output_dim, d)

    t = TINY_TEXT
    hidden, head_dim = t["hidden_size"], t["head_dim"]
    weights["model.embed_tokens.weight"] = torch.randn(VOCAB_SIZE, hidden, generator=generator)
    for i in range(t["num_hidden_layers"]):
        p = f"model.layers.{i}"
        linear(f"{p}.self_attn.q_proj", t["num_attention_heads"] * head_dim, hidden, bias=False)
        linear(f"{p}.self_attn.k_proj", t["num_key_value_heads"] * head_dim, hidden, bias=False)
        linear(f"{p}.self_attn.v_proj", t["num_key_value_heads"] * head_dim, hidden, bias=False)
        linear(f"{p}.self_attn.o_proj", hidden, t["num_attention_heads"] * head_dim, bias=False)
        vector(f"{p}.self_attn.q_norm.weight", head_dim, 1.0)
        vector(f"{p}.self_attn.k_norm.weight", head_dim, 1.0)
        linear(f"{p}.mlp.gate_proj", t["intermediate_size"], hidden, bias=False)
        linear(f"{p}.mlp.up_proj", t["intermediate_size"], hidden, bias=False)
        linear(f"{p}.mlp.down_proj", hidden, t["intermediate_size"], bias=False)
        vector(f"{p}.input_layernorm.weight", hidden, 1.0)
        vector(f"{p}.post_attention_layernorm.weight", hidden, 1.0)
    vector("model.norm.weight", hidden, 1.0)
    return {name: value.to(dtype).contiguous() for name, value in weights.items()}


def _aligner_head(classes: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """A random class head with O(1) logits, so that the argmax varies from slot to slot."""
    generator = torch.Generator().manual_seed(seed + 1)
    hidden = TINY_TEXT["hidden_size"]
    return (torch.randn(classes, hidden, generator=generator) / 8).to(dtype).contiguous()


def _aligner_config(config: dict[str, Any], layout: Layout, classes: int) -> dict[str, Any]:
    """The ASR config turned into the aligner's, in the layout's own spelling."""
    timing = {"timestamp_token_id": TOKEN_IDS["<timestamp>"], "timestamp_segment_time": 80}
    if layout == "original":
        thinker = {
            **config["thinker_config"],
            "model_type": "qwen3_forced_aligner",
            "classify_num": classes,
            "text_config": {
                **config["thinker_config"]["text_config"],
                "tie_word_embeddings": False,
            },
        }
        return {
            **config,
            "architectures": ["Qwen3ASRForConditionalGeneration"],
            "support_languages": ["Chinese", "English"],
            "thinker_config": thinker,
            **timing,
        }
    return {
        **config,
        "architectures": ["Qwen3ASRForTokenClassification"],
        "num_labels": classes,
        "tie_word_embeddings": False,
        "text_config": {**config["text_config"], "tie_word_embeddings": False},
        **timing,
    }


def _write_weights(out: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(out / SINGLE_FILE), metadata={"format": "pt"})
        return
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for index in range(shards):
        file_name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[index * per_shard : (index + 1) * per_shard]}
        save_file(part, str(out / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file_name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(out / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})


def _model_config(encoder: EncoderConfig, layout: Layout, dtype: str) -> dict[str, Any]:
    audio = {
        "num_mel_bins": encoder.num_mel_bins,
        "encoder_layers": encoder.num_layers,
        "encoder_attention_heads": encoder.num_heads,
        "encoder_ffn_dim": encoder.ffn_dim,
        "d_model": encoder.d_model,
        "output_dim": encoder.output_dim,
        "downsample_hidden_size": encoder.conv_channels,
        "n_window": CHUNK_FRAMES // 2,
        "n_window_infer": encoder.window_frames,
        "activation_function": "gelu",
        "scale_embedding": False,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    }
    ids = {
        "audio_token_id": TOKEN_IDS["<|audio_pad|>"],
        "audio_start_token_id": TOKEN_IDS["<|audio_start|>"],
        "audio_end_token_id": TOKEN_IDS["<|audio_end|>"],
    }
    if layout == "original":
        text = {
            **TINY_TEXT,
            "rope_theta": ROPE_THETA,
            "rope_scaling": {
                "rope_type": "default",
                "type": "default",
                "interleaved": True,
                "mrope_interleaved": True,
                "mrope_section": [2, 3, 3],
            },
        }
        thinker = {
            "model_type": "qwen3_asr",
            "audio_config": {
                **audio,
                "model_type": "qwen3_asr_audio_encoder",
                "num_hidden_layers": encoder.num_layers,
                "max_source_positions": 1500,
                "conv_chunksize": 500,
            },
            "text_config": text,
            **ids,
            "dtype": dtype,
        }
        return {
            "architectures": ["Qwen3ASRForConditionalGeneration"],
            "model_type": "qwen3_asr",
            "support_languages": ["Chinese", "English"],
            "thinker_config": thinker,
        }
    text = {**TINY_TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA}}
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "audio_config": {**audio, "model_type": "qwen3_asr_encoder", "max_position_embeddings": 13},
        "text_config": text,
        **ids,
        "timestamp_token_id": TOKEN_IDS["<timestamp>"],
        "pad_token_id": TOKEN_IDS["<|im_end|>"],
        "eos_token_id": [TOKEN_IDS["<|endoftext|>"], TOKEN_IDS["<|im_end|>"]],
        "tie_word_embeddings": True,
        "dtype": dtype,
    }


def _preprocessor_config(layout: Layout) -> dict[str, Any]:
    common = {
        "feature_size": 128,
        "sampling_rate": 16000,
        "hop_length": 160,
        "n_fft": 400,
        "chunk_length": 30,
        "padding_value": 0.0,
        "padding_side": "right",
        "dither": 0.0,
        "return_attention_mask": True,
        "processor_class": "Qwen3ASRProcessor",
    }
    if layout == "original":
        return {
            **common,
            "feature_extractor_type": "WhisperFeatureExtractor",
            "n_samples": 480000,
            "nb_max_frames": 3000,
        }
    return {
        **common,
        "feature_extractor_type": "Qwen3ASRFeatureExtractor",
        "n_window": CHUNK_FRAMES // 2,
        "min_length": 8000,
    }


def train_byte_level_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """A Qwen2-style byte-level BPE (NFC, Qwen2 split pattern) trained on `texts`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _write_tokenizer(out: Path) -> None:
    """Trains a 48-merge byte-level BPE and writes it in both the slow and the fast form."""
    tokenizer = train_byte_level_bpe([_TRAINING_TEXT] * 4, 256 + NUM_MERGES)
    assert tokenizer.get_vocab_size() == 256 + NUM_MERGES, tokenizer.get_vocab_size()
    for token, special in SPECIAL_TOKENS:
        added = AddedToken(token, special=special, normalized=False)
        count = tokenizer.add_special_tokens([added]) if special else tokenizer.add_tokens([added])
        assert count == 1 and tokenizer.token_to_id(token) == TOKEN_IDS[token], token
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer.model.save(str(out))  # vocab.json and merges.txt

    added_decoder = {
        str(TOKEN_IDS[token]): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for token, special in SPECIAL_TOKENS
    }
    audio_tokens = {
        "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>",
        "audio_token": "<|audio_pad|>",
    }
    _write_json(
        out / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": added_decoder,
            "additional_special_tokens": [t for t, special in SPECIAL_TOKENS[1:] if special],
            **audio_tokens,
            "extra_special_tokens": audio_tokens,
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 131072,
            "pad_token": "<|endoftext|>",
            "processor_class": "Qwen3ASRProcessor",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--layout", choices=("original", "hf"), default="original")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window-seconds", type=int, default=8)
    parser.add_argument("--aligner", type=int, nargs="?", const=64, default=None, metavar="CLASSES")
    args = parser.parse_args()
    path = make_tiny_checkpoint(
        args.out_dir,
        layout=args.layout,
        shards=args.shards,
        dtype=args.dtype,
        seed=args.seed,
        window_seconds=args.window_seconds,
        aligner_classes=args.aligner,
    )
    print(path)


if __name__ == "__main__":
    main()
