"""Fixtures for the encoder tests: tiny checkpoints, real speech of any length, its features."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from encoder.features import SAMPLE_RATE, log_mel

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
LONGEST_SECONDS = 40.0  # longest audio the streaming tests use


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
) -> Callable[..., Path]:
    """Writes (once per set of arguments) a tiny checkpoint and returns its directory."""
    made: dict[tuple[tuple[str, Any], ...], Path] = {}

    def make(**kwargs: Any) -> Path:
        key = tuple(sorted(kwargs.items()))
        if key not in made:
            out = tmp_path_factory.mktemp("tiny")
            made[key] = tiny_script.make_tiny_checkpoint(out, **kwargs)
        return made[key]

    return make


@pytest.fixture(scope="session")
def speech(corpus: list[Any]) -> Callable[[float], np.ndarray]:
    """Real speech of any length: corpus utterances concatenated in order, cut to length."""
    pool = np.concatenate([u.samples() for u in corpus])
    repeats = int(np.ceil(LONGEST_SECONDS * SAMPLE_RATE / len(pool))) + 1
    pool = np.tile(pool, repeats)

    def cut(seconds: float) -> np.ndarray:
        return pool[: round(seconds * SAMPLE_RATE)].copy()

    return cut


@pytest.fixture(scope="session")
def speech_features(speech: Callable[[float], np.ndarray]) -> torch.Tensor:
    """Log-mel features (128, 4000) of 40 s of real speech; prefixes serve shorter lengths."""
    return log_mel(speech(LONGEST_SECONDS))
