"""Qwen3-ForcedAligner on our modules: parity with transformers, the repair, words, bad input."""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, Qwen3ASRForTokenClassification
from transformers.models.qwen3_asr import processing_qwen3_asr as reference

from decoder.aligner import MAX_ALIGN_S, load_aligner
from decoder.alignment import (
    ALIGNER_LANGUAGES,
    AlignmentError,
    aligner_language,
    alignment_words,
    display_words,
    fix_timestamps,
    positive_spans,
)
from decoder.loader import load_qwen
from encoder.checkpoint import CheckpointError

CLASSES = 64  # 5.12 s at 80 ms: the tiny checkpoints' clips stay below it

# one sentence per language the aligner supports, with the punctuation each script uses
SENTENCES = {
    "Chinese": "今天天气很好，我们去公园吧。",
    "English": "Well, it's 4:30 — don't be late! (Really.)",
    "Cantonese": "我哋今日去咗飲茶，好開心。",
    "French": "L'homme a dit : « café-crème, 3,5 € » ; voilà.",
    "German": "Größe und Maß: „Straße“ — 12 Grad.",
    "Italian": "Perché l'ho fatto? È così, dell'anno 1999.",
    "Japanese": "東京都に住んでいます。今日は晴れです！",
    "Korean": "안녕하세요 저는 학생입니다. 반갑습니다!",
    "Portuguese": "Não sei, ação e coração — vovó disse.",
    "Russian": "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Spanish": "¿Qué tal? ¡Muy bien! El niño comió 2,5 kg.",
}


@pytest.fixture(scope="module")
def aligner_dirs(make_checkpoint: Callable[..., Path]) -> dict[str, Path]:
    """The same tiny random aligner in both layouts (fp32)."""
    return {
        layout: make_checkpoint(layout=layout, dtype="float32", aligner_classes=CLASSES)
        for layout in ("hf", "original")
    }


@pytest.fixture(scope="module")
def reference_model(aligner_dirs: dict[str, Path]) -> tuple[object, object]:
    model = Qwen3ASRForTokenClassification.from_pretrained(str(aligner_dirs["hf"])).eval()
    processor = AutoProcessor.from_pretrained(str(aligner_dirs["hf"]))
    return model, processor


def clip(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(
        np.float32
    )


def test_logits_and_times_match_transformers(aligner_dirs, reference_model) -> None:
    """Single input: slot logits within 1e-4 and identical repaired times, in both layouts."""
    model, processor = reference_model
    audio, text = clip(3.0, 0), "the quick, brown fox don't jump"
    inputs, (words,) = processor.prepare_forced_aligner_inputs(
        audio=audio, transcript=text, language="en"
    )
    with torch.inference_mode():
        logits = model(**inputs).logits[0]
    slots = inputs["input_ids"][0] == model.config.timestamp_token_id
    expected = processor.decode_forced_alignment(
        logits[None], inputs["input_ids"], [words], model.config.timestamp_token_id
    )[0]
    for layout, directory in aligner_dirs.items():
        aligner = load_aligner(directory)
        ours = aligner.logits(audio, alignment_words(text, "English"))
        assert ours.shape == (2 * len(words), CLASSES), layout
        assert torch.allclose(ours, logits[slots], atol=1e-4), layout
        result = aligner.align(audio, text, "en")
        assert list(result.tokens) == words
        reference_ms = [round(t * 1000) for w in expected for t in (w["start_time"], w["end_time"])]
        assert list(result.raw_ms) == reference_ms, layout


def test_batched_reference_inputs_match_one_by_one(aligner_dirs, reference_model) -> None:
    """A padded reference batch (texts of different lengths) equals our unbatched results."""
    model, processor = reference_model
    audios = [clip(2.5, 1), clip(2.5, 2)]  # equal lengths: the reference's STFT edge quirk
    texts = ["one two three four five six", "seven"]  # ... does not apply, text padding does
    inputs, words = processor.prepare_forced_aligner_inputs(
        audio=audios, transcript=texts, language=["en", "en"]
    )
    with torch.inference_mode():
        logits = model(**inputs).logits
    expected = processor.decode_forced_alignment(
        logits, inputs["input_ids"], words, model.config.timestamp_token_id
    )
    aligner = load_aligner(aligner_dirs["hf"])
    for index, (audio, text) in enumerate(zip(audios, texts, strict=True)):
        slots = inputs["input_ids"][index] == model.config.timestamp_token_id
        ours = aligner.logits(audio, alignment_words(text, "English"))
        assert torch.allclose(ours, logits[index][slots], atol=1e-4)
        times = [round(t * 1000) for w in expected[index] for t in (w["start_time"], w["end_time"])]
        assert list(aligner.align(audio, text, "en").raw_ms) == times


def test_the_repair_equals_the_references_on_random_sequences() -> None:
    """300 random predictions (runs, plateaus, reversals): our repair == the reference's."""
    rng = random.Random(7)
    for case in range(300):
        length = rng.randint(1, 40)
        style = case % 3
        if style == 0:  # noise around a rising line: reversals of every size
            values = [max(0, 80 * (i + rng.randint(-6, 6))) for i in range(length)]
        elif style == 1:  # plateaus: many exact ties, the tie-breaking matters
            values = [80 * rng.choice((3, 3, 5, 5, 9)) for _ in range(length)]
        else:  # anything
            values = [80 * rng.randint(0, 50) for _ in range(length)]
        expected = reference._fix_timestamps(np.array(values, dtype=np.float32))
        assert fix_timestamps(values) == expected, values


def test_the_repair_of_the_checked_examples() -> None:
    assert fix_timestamps([0, 160, 80, 240]) == [0, 160, 160, 240]
    assert fix_timestamps([0, 500, 400, 300, 200, 100, 600]) == [0, 500, 520, 540, 560, 580, 600]
    with pytest.raises(ValueError):
        fix_timestamps([])


@pytest.mark.parametrize("language", sorted(ALIGNER_LANGUAGES.values()))
def test_word_splitting_equals_the_reference(language: str, reference_model) -> None:
    """Every supported language, with its punctuation, splits as transformers splits it."""
    _, processor = reference_model
    text = SENTENCES[language]
    expected = processor.split_words_for_alignment(text, language)
    words = alignment_words(text, language)
    assert [w.text for w in words] == expected
    assert words, language


def test_mixed_scripts_and_punctuation_only(reference_model) -> None:
    _, processor = reference_model
    for text in ("我们用 Python 3.11 写代码, OK?", "café-crème l'été 中文mixed", "", "... — !?"):
        expected = processor.split_words_for_alignment(text, "English")
        assert [w.text for w in alignment_words(text, "English")] == expected
    assert alignment_words("... — !?", "English") == []


def test_display_words_keep_the_transcript() -> None:
    """Display words carry punctuation, case and curly apostrophes; they join to the text."""
    text = "  (Well) don’t — STOP, café-crème!  Now. 我们去"
    words = alignment_words(text, "English")
    shown = display_words(text, words)
    assert [w.text for w in words] == ["Well", "dont", "STOP", "cafécrème", "Now", "我", "们", "去"]
    # punctuation standing alone opens the next word, as "(" does
    assert shown == [" (Well)", " don’t", " — STOP,", " café-crème!", " Now.", " 我", "们", "去"]
    assert "".join(shown).strip() == " ".join(text.split())


def test_every_word_gets_a_positive_duration() -> None:
    """Stacked and zero-length times become positive spans, in order, within the audio."""
    rng = random.Random(3)
    for _ in range(300):
        words = rng.randint(1, 30)
        raw = [80 * rng.randint(0, 40) for _ in range(2 * words)]
        end_ms = rng.choice((None, 3200, 1000))
        spans = positive_spans(fix_timestamps(raw), end_ms=end_ms)
        assert len(spans) == words
        for index, (start, end) in enumerate(spans):
            assert end > start, spans
            if index:
                assert start >= spans[index - 1][1], spans
            if end_ms is not None:
                assert end <= max(end_ms, 2 * words)
    # the reference's own fixture: "the" 2.32-2.32 inside a run
    assert positive_spans([2000, 2320, 2320, 2320, 2400, 2480]) == [
        (2000, 2320),
        (2347, 2373),
        (2400, 2480),
    ]


def test_bad_input_is_refused_clearly(aligner_dirs) -> None:
    aligner = load_aligner(aligner_dirs["hf"])
    assert aligner.align(clip(1.0, 4), "... !!", "en").words == ()
    with pytest.raises(AlignmentError, match=r"does not support 'ar'.*en \(English\)"):
        aligner.align(clip(1.0, 4), "marhaba", "ar")
    with pytest.raises(AlignmentError, match="longer than this aligner's head"):
        aligner.align(clip(6.0, 4), "too long for sixty four classes", "en")
    assert MAX_ALIGN_S == 180.0
    with pytest.raises(AlignmentError, match="longer than the aligner's 180 s"):
        aligner.align(np.zeros(181 * 16000, np.float32), "hello", "en")
    assert aligner_language("EN") == "English" and aligner_language("japanese") == "Japanese"


def test_missing_tokenizer_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nagisa", None)  # import nagisa now raises ImportError
    monkeypatch.setitem(sys.modules, "soynlp.tokenizer", None)
    with pytest.raises(AlignmentError, match=r"needs the nagisa package: pip install nagisa"):
        alignment_words(SENTENCES["Japanese"], "Japanese")
    with pytest.raises(AlignmentError, match="needs the soynlp package"):
        alignment_words(SENTENCES["Korean"], "Korean")


def test_checkpoints_are_told_apart(aligner_dirs, make_checkpoint, tmp_path: Path) -> None:
    """An aligner is no recognizer and the other way round; a bad class count is named."""
    with pytest.raises(CheckpointError, match="ForcedAligner checkpoint, not a speech recognizer"):
        load_qwen(aligner_dirs["original"])
    with pytest.raises(CheckpointError, match="not a Qwen3-ForcedAligner checkpoint"):
        load_aligner(make_checkpoint(layout="hf"))
    broken = shutil.copytree(aligner_dirs["original"], tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    config["thinker_config"]["classify_num"] = 0
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="classify_num must be a positive int"):
        load_aligner(broken)
