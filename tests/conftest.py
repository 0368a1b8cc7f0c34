"""Shared test configuration: real speech data and one scalable time unit."""

from __future__ import annotations

import os
import pathlib
import wave
from dataclasses import dataclass

import numpy as np
import pytest

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"

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
