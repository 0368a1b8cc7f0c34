"""scripts/make_tiny_checkpoint.py: a complete checkpoint the reference classes can load."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, AutoTokenizer, Qwen3ASRForConditionalGeneration

from encoder.checkpoint import Checkpoint
from encoder.config import num_tokens

SPECIAL_IDS = {
    "<|endoftext|>": 304,
    "<|im_start|>": 305,
    "<|im_end|>": 306,
    "<|audio_start|>": 307,
    "<|audio_end|>": 308,
    "<non_speech>": 309,
    "<|audio_pad|>": 310,
    "<asr_text>": 311,
    "<timestamp>": 312,
}


def test_documented_token_ids(tiny_script: ModuleType) -> None:
    """The special tokens sit at the ids the script documents, after 256 bytes and 48 merges."""
    assert tiny_script.TOKEN_IDS == SPECIAL_IDS


def test_reference_loads_hf_layout_completely(make_checkpoint: Callable[..., Path]) -> None:
    """from_pretrained finds every weight of the -hf layout: no missing or unexpected keys."""
    directory = make_checkpoint(layout="hf")
    # with output_loading_info the reference returns (model, info); its annotation says model
    loaded: Any = Qwen3ASRForConditionalGeneration.from_pretrained(
        directory, output_loading_info=True
    )
    model, info = loaded
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    stored = Checkpoint(directory)
    embed = model.model.language_model.embed_tokens.weight
    assert torch.equal(embed, stored.tensor("model.embed_tokens.weight"))
    assert model.lm_head.weight.data_ptr() == embed.data_ptr()  # tied, as the real ASR models
    assert model.config.audio_token_id == SPECIAL_IDS["<|audio_pad|>"]


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_config_ids_match_tokenizer(make_checkpoint: Callable[..., Path], layout: str) -> None:
    """config.json, tokenizer.json and tokenizer_config.json agree on the special token ids."""
    directory = make_checkpoint(layout=layout)
    config = json.loads((directory / "config.json").read_text())
    ids = config["thinker_config"] if layout == "original" else config
    assert ids["audio_token_id"] == SPECIAL_IDS["<|audio_pad|>"]
    assert ids["audio_start_token_id"] == SPECIAL_IDS["<|audio_start|>"]
    assert ids["audio_end_token_id"] == SPECIAL_IDS["<|audio_end|>"]
    fast = json.loads((directory / "tokenizer.json").read_text())
    assert {t["content"]: t["id"] for t in fast["added_tokens"]} == SPECIAL_IDS
    decoder = json.loads((directory / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {v["content"]: int(k) for k, v in decoder.items()} == SPECIAL_IDS


def test_both_tokenizer_forms_agree(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """The tokenizer built from vocab.json + merges.txt encodes like the one from tokenizer.json."""
    directory = make_checkpoint(layout="hf")
    slow_dir = tmp_path / "slow"
    slow_dir.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (slow_dir / name).write_bytes((directory / name).read_bytes())
    text = "language English<asr_text>ten of clubs, the sea shore! 42 <|im_end|>"
    fast = AutoTokenizer.from_pretrained(directory)
    slow = AutoTokenizer.from_pretrained(slow_dir)
    ids = fast(text).input_ids
    assert ids == slow(text).input_ids
    assert SPECIAL_IDS["<asr_text>"] in ids and ids[-1] == SPECIAL_IDS["<|im_end|>"]
    assert fast.decode(ids) == text
    assert fast.eos_token_id == SPECIAL_IDS["<|im_end|>"]
    assert fast.pad_token_id == SPECIAL_IDS["<|endoftext|>"]
    decoded = fast.decode(ids, skip_special_tokens=True)
    assert isinstance(decoded, str) and decoded.startswith("language English<asr_text>")


def test_processor_builds_the_asr_prompt(
    make_checkpoint: Callable[..., Path], speech: Callable[[float], np.ndarray]
) -> None:
    """The reference processor loads and expands one audio pad per encoder token."""
    directory = make_checkpoint(layout="hf")
    processor = AutoProcessor.from_pretrained(directory)
    audio = speech(2.37)
    inputs: Any = processor.apply_transcription_request(audio, language="English")
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(SPECIAL_IDS["<|audio_pad|>"]) == num_tokens(len(audio) // 160)
    text = processor.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|>")
    assert text.endswith(
        "<|audio_end|><|im_end|>\n<|im_start|>assistant\nlanguage English<asr_text>"
    )
