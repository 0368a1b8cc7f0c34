"""Checkpoint loading: both layouts, shards, dtypes, and clear errors for broken directories."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from encoder.checkpoint import Checkpoint, CheckpointError, canonical_name, load_audio_encoder

SINGLE = "model.safetensors"


@pytest.fixture
def broken(make_checkpoint: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """Copies a tiny checkpoint into a fresh directory that the test may damage."""

    def copy(**kwargs: object) -> Path:
        target = tmp_path / "ckpt"
        shutil.copytree(make_checkpoint(**kwargs), target)
        return target

    return copy


def encode(directory: Path, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Output of the encoder loaded from `directory` on a fixed 9.5 s random input."""
    encoder = load_audio_encoder(directory, dtype=dtype)
    features = torch.randn(1, 128, 950, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return encoder(features)[0]


def test_layouts_and_shards_load_identically(make_checkpoint: Callable[..., Path]) -> None:
    """Original sharded and -hf single-file checkpoints of the same weights give equal outputs."""
    original = make_checkpoint(layout="original", shards=3)
    hf = make_checkpoint(layout="hf")
    assert Checkpoint(original).layout == "original" and Checkpoint(hf).layout == "hf"
    assert (original / "model-00003-of-00003.safetensors").is_file()
    assert torch.equal(encode(original), encode(hf))


def test_same_canonical_names_in_both_layouts(make_checkpoint: Callable[..., Path]) -> None:
    """Both layouts expose the same canonical names, LLM included, with equal tensors."""
    original = Checkpoint(make_checkpoint(layout="original", shards=3))
    hf = Checkpoint(make_checkpoint(layout="hf"))
    assert original.names == hf.names
    assert "model.layers.1.self_attn.q_norm.weight" in hf.names
    assert "audio_tower.proj2.weight" in hf.names and not hf.unrecognized
    for name in ("model.embed_tokens.weight", "audio_tower.proj1.bias"):
        assert torch.equal(original.tensor(name), hf.tensor(name))


def test_name_mapping() -> None:
    """Stored names map to canonical ones as documented, and foreign names to None."""
    assert canonical_name("model.multi_modal_projector.linear_2.bias", "hf") == (
        "audio_tower.proj2.bias"
    )
    assert canonical_name("model.language_model.norm.weight", "hf") == "model.norm.weight"
    assert canonical_name("score.weight", "hf") == "lm_head.weight"
    assert canonical_name("thinker.audio_tower.ln_post.weight", "original") == (
        "audio_tower.ln_post.weight"
    )
    assert canonical_name("talker.x", "original") is None


def test_bf16_weights_load_as_float32_or_bf16(make_checkpoint: Callable[..., Path]) -> None:
    """bf16 weights load exactly into fp32, and into bf16 when asked."""
    directory = make_checkpoint(layout="hf")
    stored = Checkpoint(directory).tensor("audio_tower.conv_out.weight")
    assert stored.dtype == torch.bfloat16
    as_fp32 = load_audio_encoder(directory)
    as_bf16 = load_audio_encoder(directory, dtype=torch.bfloat16)
    assert as_fp32.conv.conv_out.weight.dtype == torch.float32
    assert torch.equal(as_fp32.conv.conv_out.weight, stored.float())
    assert as_bf16.dtype == torch.bfloat16 and not as_bf16.training


def test_missing_config(broken: Callable[..., Path]) -> None:
    """A directory without config.json fails naming that file."""
    directory = broken(layout="hf")
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: file is missing"):
        Checkpoint(directory)


def test_invalid_config_json(broken: Callable[..., Path]) -> None:
    """A config.json that is not JSON fails naming the file."""
    directory = broken(layout="hf")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        Checkpoint(directory)


def test_missing_weights(broken: Callable[..., Path]) -> None:
    """A directory without any safetensors fails naming both accepted files."""
    directory = broken(layout="hf")
    (directory / SINGLE).unlink()
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors nor .*index\.json"):
        Checkpoint(directory)


def test_missing_shard(broken: Callable[..., Path]) -> None:
    """A shard named by the index but absent fails naming the shard."""
    directory = broken(layout="original", shards=2)
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing: model-00002-of-00002\.safetensors"):
        Checkpoint(directory)


def test_index_names_absent_tensor(broken: Callable[..., Path]) -> None:
    """An index entry whose shard lacks the tensor fails naming the tensor and the shard."""
    directory = broken(layout="original", shards=2)
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["thinker.audio_tower.extra.weight"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"00001-of-00002.*thinker\.audio_tower\.extra"):
        Checkpoint(directory)


def test_truncated_safetensors(broken: Callable[..., Path]) -> None:
    """A truncated weight file fails naming the file."""
    directory = broken(layout="hf")
    data = (directory / SINGLE).read_bytes()
    (directory / SINGLE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors"):
        load_audio_encoder(directory)


def test_garbage_safetensors(broken: Callable[..., Path]) -> None:
    """A weight file with a garbage header fails naming the file."""
    directory = broken(layout="hf")
    (directory / SINGLE).write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors"):
        Checkpoint(directory)


def rewrite(directory: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    """Applies `edit` to the tensors of a single-file checkpoint."""
    tensors = load_file(str(directory / SINGLE))
    edit(tensors)
    save_file(tensors, str(directory / SINGLE), metadata={"format": "pt"})


def test_missing_tensor_is_named(broken: Callable[..., Path]) -> None:
    """A checkpoint lacking one encoder tensor fails naming it by its canonical name."""
    directory = broken(layout="hf")
    rewrite(directory, lambda t: t.pop("model.audio_tower.layers.1.fc2.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): audio_tower\.layers\.1\."):
        load_audio_encoder(directory)


def test_unexpected_tensor_is_named(broken: Callable[..., Path]) -> None:
    """An extra encoder tensor (a third layer the config does not have) is named."""
    directory = broken(layout="hf")

    def add_layer(t: dict[str, torch.Tensor]) -> None:
        t["model.audio_tower.layers.2.fc1.bias"] = torch.zeros(64)

    rewrite(directory, add_layer)
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): audio_tower\.layers\.2"):
        load_audio_encoder(directory)


def test_misshaped_tensor_is_named(broken: Callable[..., Path]) -> None:
    """A config that disagrees with the weights names each tensor with both shapes."""
    directory = broken(layout="original")
    config = json.loads((directory / "config.json").read_text())
    config["thinker_config"]["audio_config"]["encoder_ffn_dim"] = 96
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"audio_tower\.layers\.0\.fc1\.weight \[64, 32\] "
        r"\(expected \[96, 32\]\)",
    ):
        load_audio_encoder(directory)


def test_bad_config_field_names_file(broken: Callable[..., Path]) -> None:
    """An invalid field in config.json fails naming the file and the field."""
    directory = broken(layout="hf")
    config = json.loads((directory / "config.json").read_text())
    config["audio_config"]["n_window_infer"] = 1000
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: .*window_seconds.*10"):
        load_audio_encoder(directory)


def test_layout_mismatch_is_reported(broken: Callable[..., Path]) -> None:
    """-hf weights under an original-layout config fail saying no tensor fits the layout."""
    directory = broken(layout="hf")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({"thinker_config": config}))
    with pytest.raises(CheckpointError, match=r"no tensor fits the original layout"):
        Checkpoint(directory)
