"""Fixtures for the decoder tests: the reference model, real speech."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="session")
def speech(corpus: list[Any]) -> Callable[[float], np.ndarray]:
    """Real speech of any length up to the corpus total: utterances concatenated, cut."""
    pool = np.concatenate([u.samples() for u in corpus])

    def cut(seconds: float) -> np.ndarray:
        return pool[: round(seconds * 16_000)].copy()

    return cut
