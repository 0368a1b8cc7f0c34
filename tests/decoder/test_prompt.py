"""Tokenizer, prompt building and output parsing against the reference processor."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoProcessor, AutoTokenizer
from transformers.models.qwen3_asr import processing_qwen3_asr as reference

from decoder.prompt import (
    LANGUAGE_NAMES,
    build_prompt,
    collapse_repetitions,
    language_code,
    language_name,
    parse_asr_output,
    system_text,
)
from decoder.tokenizer import QwenTokenizer
from encoder.checkpoint import CheckpointError

TEXTS = [
    "language English<asr_text>ten of clubs, the sea shore! 42 <|im_end|>",
    "hello  world\n\nsecond line\t tab",
    "Feels like these days go on forever. 你好，世界 ü ß",
    " leading space and trailing ",
    "<|im_start|>system\ncontext words<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|>",
]


def slow_copy(directory: Path, out: Path) -> Path:
    """A copy of the checkpoint's tokenizer without tokenizer.json."""
    out.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(directory / name, out / name)
    return out


def test_both_tokenizer_forms_match_transformers(
    make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    """tokenizer.json and vocab.json + merges.txt encode like transformers' AutoTokenizer."""
    directory = make_checkpoint(layout="hf")
    fast = QwenTokenizer.from_directory(directory)
    slow = QwenTokenizer.from_directory(slow_copy(directory, tmp_path / "slow"))
    expected = AutoTokenizer.from_pretrained(directory)
    for text in TEXTS:
        ids = expected(text).input_ids
        assert fast.encode(text) == ids, text
        assert slow.encode(text) == ids, text
        assert fast.decode(ids) == expected.decode(ids)


def test_special_token_ids_come_from_the_files(make_checkpoint: Callable[..., Path]) -> None:
    """Special ids are read from the tokenizer files (the tiny script's documented ids)."""
    tokenizer = QwenTokenizer.from_directory(make_checkpoint(layout="original"))
    special = tokenizer.special
    assert (special.endoftext, special.im_start, special.im_end) == (304, 305, 306)
    assert (special.audio_start, special.audio_end, special.audio_pad) == (307, 308, 310)
    assert special.asr_text == 311
    assert special.asr_text not in tokenizer.skipped_ids  # <asr_text> survives skipping
    assert tokenizer.decode([311, 306], skip_special=True) == "<asr_text>"


def test_tokenizer_errors_name_the_problem(
    make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    """Missing files and vocab/config mismatches raise CheckpointError naming them."""
    with pytest.raises(CheckpointError, match=r"neither tokenizer\.json nor vocab\.json"):
        QwenTokenizer.from_directory(tmp_path)
    broken = slow_copy(make_checkpoint(layout="hf"), tmp_path / "broken")
    config = (broken / "tokenizer_config.json").read_text()
    (broken / "tokenizer_config.json").write_text(config.replace('"305"', '"399"'))
    with pytest.raises(CheckpointError, match="lands at id"):
        QwenTokenizer.from_directory(broken)


@pytest.mark.parametrize(
    ("language", "context"),
    [(None, None), ("English", None), ("en", "ten of clubs, sea shore"), (None, "交易 停滞")],
)
def test_prompt_matches_the_reference_processor(
    make_checkpoint: Callable[..., Path], speech: Callable[[float], np.ndarray],
    language: str | None, context: str | None,
) -> None:  # fmt: skip
    """build_prompt gives the reference processor's input_ids token for token."""
    directory = make_checkpoint(layout="hf")
    processor = AutoProcessor.from_pretrained(directory)
    audio = speech(2.3)
    expected = processor.apply_transcription_request(audio, language=language, prompt=context)
    ids = expected["input_ids"][0].tolist()
    tokenizer = QwenTokenizer.from_directory(directory)
    prompt = build_prompt(
        tokenizer,
        num_audio=ids.count(tokenizer.special.audio_pad),
        system=context or "",
        language=language_name(language) if language else None,
    )
    assert prompt.ids == ids
    assert prompt.ids[prompt.audio_start] == tokenizer.special.audio_pad
    assert prompt.ids[prompt.audio_start - 1] == tokenizer.special.audio_start


def test_prompt_pieces_tokenize_like_the_whole_string(make_checkpoint: Callable[..., Path]) -> None:
    """Tokenizing the pieces separately equals tokenizing the assembled prompt at once."""
    tokenizer = QwenTokenizer.from_directory(make_checkpoint(layout="hf"))
    for system in ("", "names: Zoë, O'Brien\n", " sea shells"):
        for committed in ("", "Ten of clubs,", " four", "你好"):
            prompt = build_prompt(
                tokenizer, num_audio=3, system=system, language="English", committed=committed
            )
            whole = (
                f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|audio_start|>"
                + "<|audio_pad|>" * 3
                + "<|audio_end|><|im_end|>\n<|im_start|>assistant\n"
                + f"language English<asr_text>{committed}"
            )
            assert prompt.ids == tokenizer.encode(whole), (system, committed)


def test_language_table_is_the_references() -> None:
    """The 30 language names and codes equal transformers' Qwen3-ASR table."""
    assert dict(LANGUAGE_NAMES) == reference.LANGUAGE_CODE_TO_NAME
    assert language_name("EN") == language_name("english") == "English"
    assert language_name("tl") == "Filipino" and language_code("Cantonese") == "yue"
    assert language_code("Klingon") is None and language_code(None) is None
    with pytest.raises(ValueError, match="'xx'"):
        language_name("xx")


def test_system_text_joins_context_hotwords_and_earlier_text() -> None:
    """Context alone is verbatim (as the reference); hotwords and earlier text follow it."""
    assert system_text("  Acme call  ") == "Acme call"
    assert system_text("Acme", ("Zoë", " Qwen "), "and then") == "Acme\nZoë Qwen\nand then"
    assert system_text("", (), "") == ""


@pytest.mark.parametrize(
    "raw",
    [
        "language English<asr_text>Hello world.",
        "language None<asr_text>",
        "  language chinese<asr_text> 你好 ",
        "no tag at all",
        "language English\nsecond line<asr_text>text",
        "ha" * 30 + "<asr_text>x",
        "language English<asr_text>" + "abc" * 25 + " end",
        "",
    ],
)
def test_parsing_matches_the_reference(raw: str) -> None:
    """Language and transcript agree with the reference parser (names normalised)."""
    ours = parse_asr_output(raw)
    theirs = reference._parse_single_output(raw)
    assert ours.text == theirs["transcription"]
    expected = theirs["language"]
    assert ours.language == (expected[:1].upper() + expected[1:].lower() if expected else None)


def test_forced_language_output_is_all_transcript() -> None:
    """With a forced language the whole answer is the transcript."""
    parsed = parse_asr_output(" Hello there. ", "English")
    assert (parsed.language, parsed.text, parsed.tagged) == ("English", "Hello there.", True)


def test_repetition_collapse_matches_the_reference() -> None:
    """collapse_repetitions equals the reference's detect_and_fix_repetitions on loops."""
    rng = random.Random(0)
    cases = ["a" * 25, "ab" * 21, "x" + "abc" * 20 + "y" + "z" * 22, "no loop here"]
    for _ in range(300):
        pattern = "".join(rng.choice("ab ") for _ in range(rng.randint(1, 4)))
        filler = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 30)))
        cases.append(filler + pattern * rng.randint(15, 30) + filler[::-1])
    for text in cases:
        assert collapse_repetitions(text) == reference._detect_and_fix_repetitions(text), text
    assert collapse_repetitions("ab" * 21) == "ab"  # the test can tell a collapse from none
