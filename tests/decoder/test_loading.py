"""Loading the decoder and the whole model from both checkpoint layouts, in every mode."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from decoder.loader import load_decoder, load_qwen
from decoder.quant import Int8Linear
from encoder.checkpoint import CheckpointError
from encoder.model import EncoderLayer

# Logits error of the cheaper modes against fp32 on the tiny model (hidden 64), as (largest,
# mean) absolute error over the logits' standard deviation; measured 0.035 / 0.007 (bf16) and
# 0.22 / 0.035 (int8). BENCHMARKS.md has the figures for the real 0.6B shapes.
TOLERANCES = {"bfloat16": (0.1, 0.02), "int8": (0.4, 0.07)}


def edited(directory: Path, out: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> Path:
    """A copy of a single-file checkpoint with its tensors changed by `edit`."""
    shutil.copytree(directory, out)
    weights = load_file(str(out / "model.safetensors"))
    edit(weights)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_both_layouts_and_shards_give_the_same_weights(
    make_checkpoint: Callable[..., Path],
) -> None:
    """Original (2 shards) and -hf layouts of the same seed load into identical decoders."""
    original = load_decoder(make_checkpoint(layout="original", shards=2))
    hf = load_decoder(make_checkpoint(layout="hf"))
    a, b = original.state_dict(), hf.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["layers.0.self_attn.q_proj.weight"].dtype == torch.float32  # bf16 file, fp32 model


def test_a_tied_head_shares_the_embedding(make_checkpoint: Callable[..., Path]) -> None:
    """Without lm_head.weight in a tied checkpoint, the head is the embedding itself."""
    decoder = load_decoder(make_checkpoint(layout="hf"), dtype=torch.bfloat16)
    assert decoder.lm_head.weight is decoder.embed_tokens.weight
    assert decoder.dtype == torch.bfloat16


def test_an_untied_head_is_read_and_a_missing_one_is_tied(
    untied: Callable[[str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored head is used; an untied config without one falls back to tying, with a log."""
    directory = untied("original")
    decoder = load_decoder(directory)
    assert decoder.lm_head.weight is not decoder.embed_tokens.weight
    stored = load_file(str(directory / "model.safetensors"))["thinker.lm_head.weight"]
    assert isinstance(decoder.lm_head, torch.nn.Linear)
    assert torch.equal(decoder.lm_head.weight, stored)
    headless = edited(directory, tmp_path / "headless", lambda w: w.pop("thinker.lm_head.weight"))
    with caplog.at_level(logging.WARNING):
        tied = load_decoder(headless)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert "tying" in caplog.text


def test_missing_misshaped_and_unexpected_tensors_are_named(
    make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    """CheckpointError names the tensors that are missing, mis-shaped or unexpected."""
    directory = make_checkpoint(layout="hf", dtype="float32")
    prefix = "model.language_model."
    up = "layers.1.mlp.up_proj.weight"
    missing = edited(directory, tmp_path / "m", lambda w: w.pop(prefix + up))
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): model\.layers\.1\.mlp"):
        load_decoder(missing)

    def reshape(w: dict[str, torch.Tensor]) -> None:
        w[prefix + "norm.weight"] = torch.ones(63)

    with pytest.raises(CheckpointError, match=r"model\.norm\.weight \[63\] \(expected \[64\]\)"):
        load_decoder(edited(directory, tmp_path / "s", reshape))

    def extra(w: dict[str, torch.Tensor]) -> None:
        w[prefix + "layers.2.mlp.up_proj.weight"] = torch.ones(2, 2)

    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): model\.layers\.2"):
        load_decoder(edited(directory, tmp_path / "u", extra))


def test_a_bad_text_config_is_a_checkpoint_error(
    make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    """A text_config the decoder cannot serve raises CheckpointError naming config.json."""
    directory = shutil.copytree(make_checkpoint(layout="hf"), tmp_path / "bad")
    config = json.loads((directory / "config.json").read_text())
    config["text_config"]["hidden_act"] = "relu"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: .*hidden_act"):
        load_decoder(directory)


def test_the_whole_model_reads_generation_settings_and_languages(
    make_checkpoint: Callable[..., Path],
) -> None:
    """Stop ids come from generation_config.json; languages from support_languages."""
    model = load_qwen(make_checkpoint(layout="original"), window_seconds=2)
    assert model.stop_ids == {304, 306} and model.max_new_tokens == 512
    assert model.languages == ("Chinese", "English")
    assert model.encoder.config.window_seconds == 2
    assert len(load_qwen(make_checkpoint(layout="hf")).languages) == 30  # -hf: none listed


def test_modes_stay_close_to_fp32(untied: Callable[[str], Path]) -> None:
    """bf16 and int8 logits stay within their stated tolerance of fp32 on the same prompt."""
    directory = untied("hf")
    ids = torch.randint(0, 304, (1, 80), generator=torch.Generator().manual_seed(3))
    reference = load_qwen(directory).decoder(ids, num_logits=80)
    spread = reference.std()
    for mode, (largest, mean) in TOLERANCES.items():
        model = load_qwen(directory, mode=mode)  # type: ignore[arg-type]
        cache = model.decoder.new_cache()  # int8 keeps bf16 keys and values: measured too
        error = (model.decoder(ids, cache, num_logits=80).float() - reference).abs() / spread
        assert 0 < error.max() < largest and error.mean() < mean, (mode, error.max(), error.mean())
    quantized = load_qwen(directory, mode="int8")
    assert isinstance(quantized.decoder.lm_head, Int8Linear)
    assert quantized.decoder.new_cache().dtype == torch.bfloat16
    layer = quantized.encoder.layers[0]
    assert isinstance(layer, EncoderLayer) and isinstance(layer.ffn.fc1, Int8Linear)


def test_invalid_modes_are_refused(make_checkpoint: Callable[..., Path]) -> None:
    """An unknown mode, or int8 on a GPU, raises ValueError naming it."""
    with pytest.raises(ValueError, match="float16"):
        load_qwen(make_checkpoint(layout="hf"), mode="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CPU only"):
        load_qwen(make_checkpoint(layout="hf"), mode="int8", device="cuda")
