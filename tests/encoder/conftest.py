"""Fixtures for the encoder tests: tiny checkpoints, real speech of any length, its features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from encoder.features import SAMPLE_RATE, log_mel

LONGEST_SECONDS = 40.0  # longest audio the streaming tests use


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
