"""Reading Qwen3-ASR checkpoints from a local directory, in both published layouts.

`Checkpoint` opens a directory, parses `config.json`, detects the layout, and serves tensors by a
*canonical* name, lazily (safetensors headers are read at open; data only on request), across
single-file or sharded weights. `load_audio_encoder` builds an `AudioEncoder` from it. The decoder
reuses `Checkpoint` for the LLM weights.

Files:
    config.json                          required
    model.safetensors                    single file, or
    model.safetensors.index.json         {"weight_map": {stored name: shard file}} plus
    model-0000i-of-0000n.safetensors     the shards it names

Layouts (canonical names are the original names without the `thinker.` prefix):

    canonical              original (Qwen/Qwen3-ASR-*)   -hf (transformers-native)
    audio_tower.X          thinker.audio_tower.X         model.audio_tower.X
    audio_tower.proj1.X    thinker.audio_tower.proj1.X   model.multi_modal_projector.linear_1.X
    audio_tower.proj2.X    thinker.audio_tower.proj2.X   model.multi_modal_projector.linear_2.X
    model.X  (LLM body)    thinker.model.X               model.language_model.X
    lm_head.X              thinker.lm_head.X             lm_head.X  (aligner: score.X)

The layout is read from config.json: `thinker_config` means original, a top-level
`audio_config` means -hf. Stored names that fit neither table are kept out of `names` and listed in
`unrecognized`. The sinusoidal position table is not stored in either layout. Tied models omit
`lm_head`; the decoder ties it to `model.embed_tokens.weight`.

Every problem raises `CheckpointError` (a `ValueError`) naming the directory or file and the
missing, unexpected or mis-shaped tensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open

from encoder.config import TOKENS_PER_CHUNK, EncoderConfig
from encoder.model import AudioEncoder, SinusoidalPositions

Layout = Literal["original", "hf"]
CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_LISTED = 8  # names shown per category in an error message

# (stored prefix, canonical prefix) per layout; the first match wins, so specific ones go first.
_PREFIXES: Mapping[Layout, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        "original": (("thinker.", ""),),
        "hf": (
            ("model.multi_modal_projector.linear_1.", "audio_tower.proj1."),
            ("model.multi_modal_projector.linear_2.", "audio_tower.proj2."),
            ("model.audio_tower.", "audio_tower."),
            ("model.language_model.", "model."),
            ("lm_head.", "lm_head."),
            ("score.", "lm_head."),
        ),
    }
)


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete, inconsistent or does not fit the model."""


def canonical_name(stored: str, layout: Layout) -> str | None:
    """Maps a stored tensor name to its canonical name, or None if the layout has no such name."""
    for stored_prefix, canonical_prefix in _PREFIXES[layout]:
        if stored.startswith(stored_prefix):
            return canonical_prefix + stored[len(stored_prefix) :]
    return None


def stored_name(canonical: str, layout: Layout) -> str:
    """Maps a canonical tensor name to the name stored in `layout` (inverse of `canonical_name`).

    Raises:
        ValueError: if the name is outside the canonical `audio_tower.`, `model.`, `lm_head.`.
    """
    if layout == "original":
        return "thinker." + canonical
    for stored_prefix, canonical_prefix in _PREFIXES["hf"][:-1]:  # lm_head, not the aligner's
        if canonical.startswith(canonical_prefix):
            return stored_prefix + canonical[len(canonical_prefix) :]
    raise ValueError(f"canonical name {canonical!r} is not under audio_tower., model. or lm_head.")


class Checkpoint:
    """A local Qwen3-ASR checkpoint, opened lazily.

    Args:
        directory: the checkpoint directory.

    Attributes:
        directory: the directory.
        config: parsed config.json.
        layout: "original" or "hf".
        unrecognized: stored tensor names outside the layout's mapping.

    Raises:
        CheckpointError: if config.json or the weights are missing or unreadable, the index names
            absent shards or tensors, or the layout cannot be determined.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: not a directory")
        self.config: dict[str, Any] = _read_json(self.directory / CONFIG_FILE)
        if "thinker_config" in self.config:
            self.layout: Layout = "original"
        elif "audio_config" in self.config:
            self.layout = "hf"
        else:
            raise CheckpointError(
                f"{self.directory / CONFIG_FILE}: neither thinker_config (original layout) nor "
                f"audio_config (-hf layout) is present; top-level keys: {sorted(self.config)}"
            )
        self._files: dict[str, Path] = {}  # canonical name -> file
        self._stored: dict[str, str] = {}  # canonical name -> stored name
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.unrecognized: list[str] = []
        for path, keys in self._weight_files().items():
            for key, shape in keys.items():
                name = canonical_name(key, self.layout)
                if name is None:
                    self.unrecognized.append(key)
                    continue
                self._files[name], self._stored[name], self._shapes[name] = path, key, shape
        if not self._files:
            raise CheckpointError(
                f"{self.directory}: no tensor fits the {self.layout} layout named by config.json; "
                f"stored names look like {self.unrecognized[:3]}"
            )

    @property
    def sub_config(self) -> dict[str, Any]:
        """The config holding `audio_config` and `text_config` (thinker_config or the top)."""
        return self.config["thinker_config"] if self.layout == "original" else self.config

    @property
    def names(self) -> list[str]:
        """Canonical names of all recognised tensors, sorted."""
        return sorted(self._files)

    def has(self, name: str) -> bool:
        """Whether the canonical tensor is stored."""
        return name in self._files

    def shape(self, name: str) -> tuple[int, ...]:
        """Stored shape of a canonical tensor, from the safetensors header."""
        self._require([name])
        return self._shapes[name]

    def tensor(
        self,
        name: str,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Reads one tensor by canonical name, converted to `dtype` (stored dtype if None)."""
        return self.tensors([name], dtype=dtype, device=device)[name]

    def tensors(
        self,
        names: Iterable[str],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, torch.Tensor]:
        """Reads tensors by canonical name, opening each file once.

        Raises:
            CheckpointError: naming the tensors that are not stored, or an unreadable file.
        """
        wanted = list(names)
        self._require(wanted)
        by_file: dict[Path, list[str]] = {}
        for name in wanted:
            by_file.setdefault(self._files[name], []).append(name)
        result: dict[str, torch.Tensor] = {}
        for path, file_names in by_file.items():
            try:
                with safe_open(str(path), framework="pt", device="cpu") as handle:
                    for name in file_names:
                        value = handle.get_tensor(self._stored[name])
                        result[name] = value.to(device=device, dtype=dtype or value.dtype)
            except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
                raise CheckpointError(f"{path}: cannot read tensor data ({exc})") from exc
        return result

    def check_fits(
        self, expected: dict[str, tuple[int, ...]], unexpected: list[str], what: str
    ) -> None:
        """Checks that the stored tensors are exactly the `expected` names and shapes.

        Args:
            expected: canonical name -> shape the model needs.
            unexpected: stored names of the model's part that it does not need.
            what: the part and its size, for the message ("LLM weights ... (28 layers)").

        Raises:
            CheckpointError: naming the missing, unexpected and mis-shaped tensors.
        """
        missing = [name for name in expected if not self.has(name)]
        misshaped = [
            f"{name} {list(self.shape(name))} (expected {list(shape)})"
            for name, shape in expected.items()
            if self.has(name) and self.shape(name) != shape
        ]
        problems = [
            f"{label} {_listing(items)}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape:", misshaped),
            )
            if items
        ]
        if problems:
            raise CheckpointError(
                f"{self.directory}: {what} do not fit config.json: " + "; ".join(problems)
            )

    def encoder_config(self, *, window_seconds: int | None = None) -> EncoderConfig:
        """The encoder shape from config.json.

        Raises:
            CheckpointError: naming config.json and the bad or missing field.
        """
        try:
            return EncoderConfig.from_checkpoint_config(self.config, window_seconds=window_seconds)
        except ValueError as exc:
            raise CheckpointError(f"{self.directory / CONFIG_FILE}: {exc}") from exc

    def _require(self, names: list[str]) -> None:
        missing = [name for name in names if name not in self._files]
        if missing:
            raise CheckpointError(f"{self.directory}: missing {_listing(missing)}")

    def _weight_files(self) -> dict[Path, dict[str, tuple[int, ...]]]:
        """Stored names and shapes of every weight file, checked against the index if sharded."""
        index_path = self.directory / INDEX_FILE
        if index_path.exists():
            weight_map = _read_json(index_path).get("weight_map")
            if not isinstance(weight_map, Mapping) or not weight_map:
                raise CheckpointError(f"{index_path}: no weight_map")
            listed: dict[str, list[str]] = {}
            for key, file_name in weight_map.items():
                listed.setdefault(str(file_name), []).append(key)
            absent = sorted(f for f in listed if not (self.directory / f).is_file())
            if absent:
                raise CheckpointError(
                    f"{self.directory}: shard files named in {INDEX_FILE} are "
                    f"missing: {', '.join(absent)}"
                )
            files = {self.directory / f: _read_header(self.directory / f) for f in sorted(listed)}
            for file_name, keys in listed.items():
                lacking = [k for k in keys if k not in files[self.directory / file_name]]
                if lacking:
                    raise CheckpointError(
                        f"{self.directory / file_name}: lacks tensors that {INDEX_FILE} places "
                        f"there: {_listing(lacking)}"
                    )
            return files
        single = self.directory / SINGLE_FILE
        if single.is_file():
            return {single: _read_header(single)}
        raise CheckpointError(
            f"{self.directory}: no weights: neither {SINGLE_FILE} nor {INDEX_FILE} is present"
        )


def encoder_parameter_names(encoder: AudioEncoder) -> dict[str, str]:
    """Maps each parameter name of `encoder` to its canonical checkpoint name."""
    mapping = {}
    for name in encoder.state_dict():
        canonical = name.removeprefix("conv.").removeprefix("projector.").replace(".ffn.", ".")
        mapping[name] = "audio_tower." + canonical
    return mapping


def load_audio_encoder(
    source: str | Path | Checkpoint,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    window_seconds: int | None = None,
) -> AudioEncoder:
    """Builds the audio encoder and projector from a checkpoint, in eval mode.

    Args:
        source: checkpoint directory, or an opened `Checkpoint`.
        dtype: parameter dtype (e.g. bf16 weights loaded into float32).
        device: where the parameters go.
        window_seconds: attention window instead of the checkpoint's (whole seconds, 1..8).

    Returns:
        The encoder.

    Raises:
        CheckpointError: if a file is missing or unreadable, config.json is invalid, or the audio
            tensors are missing, unexpected or of the wrong shape for the config.
    """
    checkpoint = source if isinstance(source, Checkpoint) else Checkpoint(source)
    config = checkpoint.encoder_config(window_seconds=window_seconds)
    with torch.device("meta"):
        encoder = AudioEncoder(config)  # shapes only; the weights come from the checkpoint
    names = encoder_parameter_names(encoder)
    expected = {names[key]: tuple(value.shape) for key, value in encoder.state_dict().items()}

    unexpected = [n for n in checkpoint.names if n.startswith("audio_tower.") and n not in expected]
    checkpoint.check_fits(
        expected,
        unexpected,
        f"audio encoder weights ({config.num_layers} layers, d_model {config.d_model})",
    )

    loaded = checkpoint.tensors(expected, dtype=dtype, device=device)
    encoder.load_state_dict({key: loaded[names[key]] for key in names}, assign=True)
    # The position table is a constant, not stored: rebuild it off the meta device.
    encoder.positions = SinusoidalPositions(TOKENS_PER_CHUNK, config.d_model).to(device)
    return encoder.eval()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _read_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, without reading tensor data."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"{len(names)} tensor(s): {shown}{more}"
