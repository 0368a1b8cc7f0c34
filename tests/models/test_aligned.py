"""A recognizer plus the forced aligner: aligned finals over a real WebSocket, and fallbacks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from client.connection import SessionSettings
from client.file_streamer import PaceOptions, stream_samples
from decoder.aligner import load_aligner
from decoder.loader import load_qwen
from decoder.recognizer import QwenRecognizer
from streaming import cli
from streaming.config import SessionConfig
from streaming.invariants import check_events
from streaming.models.aligned import AlignedRecognizer
from streaming.server.service import ServerConfig, StreamingServer
from streaming.session import Session
from tests.conftest import DATA_DIR, MS, read_wav
from tests.streaming.fakes import ScriptedRecognizer, s16, silence, tone

CLASSES = 64  # the tiny aligner times up to 5.12 s


@pytest.fixture(scope="module")
def tiny_aligner(make_checkpoint: Callable[..., Path]):
    return load_aligner(make_checkpoint(layout="hf", dtype="float32", aligner_classes=CLASSES))


def int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16)[:, None]


@pytest.mark.asyncio
async def test_finals_carry_aligned_words_over_a_real_websocket(untied, tiny_aligner) -> None:
    """Tiny Qwen + tiny aligner, word_timestamps on: each final's words are the aligner's,
    monotone, of positive duration, inside their segment; without word_timestamps, none."""
    recognizer = QwenRecognizer(load_qwen(untied("hf"), mode="float32", window_seconds=2), "tiny")
    aligned = AlignedRecognizer(recognizer, tiny_aligner)
    server = StreamingServer(aligned, ServerConfig(port=0, web_root=None))
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    audio, _ = read_wav(DATA_DIR / "cards_005.wav")  # 3.5 s of real speech
    pace = PaceOptions(100, realtime=False, max_ahead_ms=2000, trailing_silence_ms=900)
    try:
        async with asyncio.timeout(120_000 * MS):
            timed, plain = await asyncio.gather(
                stream_samples(
                    url, int16(audio), 16_000, SessionSettings(word_timestamps=True), pace
                ),
                stream_samples(url, int16(audio), 16_000, SessionSettings(), pace),
            )
    finally:
        await server.shutdown()
    assert check_events(timed.events, input_ended=True) == []
    words = [w for f in timed.finals for w in f.get("words") or ()]
    assert words and aligned.align_seconds > 0
    for final in timed.finals:
        previous_end = final["start_ms"]
        for word in final["words"]:
            assert final["start_ms"] <= word["start_ms"] < word["end_ms"] <= final["end_ms"] + 1
            assert word["start_ms"] >= previous_end
            previous_end = word["end_ms"]
        assert " ".join(w["word"] for w in final["words"]) == " ".join(final["text"].split())
    assert all(not f.get("words") for f in plain.finals)
    assert [e["message"] for e in timed.events if e["type"] == "warning"] == []


def test_a_language_the_aligner_lacks_keeps_the_recognizers_times(tiny_aligner) -> None:
    """Arabic finals keep the recognizer's word times; one warning per session, no error."""
    script = [(" marhaba", 600), (" salam", 1100)]
    inner = ScriptedRecognizer(script, languages=frozenset({"ar"}))
    decode = inner.decode
    inner.decode = lambda requests: [replace(h, language="ar") for h in decode(requests)]  # type: ignore[method-assign]
    recognizer = AlignedRecognizer(inner, tiny_aligner)
    session = Session(
        "s", recognizer.info, config=SessionConfig(language="ar", word_timestamps=True)
    )
    pcm = s16(np.concatenate([tone(1.2), silence(1.5), tone(1.2), silence(1.5)]))
    events = []
    for start in range(0, len(pcm), 3200):
        session.receive_audio(pcm[start : start + 3200])
        while (request := session.next_request()) is not None:
            session.complete(recognizer.decode([request])[0])
        events += session.events_to_send()
    session.receive_text('{"type":"input.end"}')
    while (request := session.next_request()) is not None:
        session.complete(recognizer.decode([request])[0])
    events += session.events_to_send()
    finals = [e.to_wire("s", 0) for e in events if type(e).__name__ == "TranscriptFinal"]
    warnings = [e.to_wire("s", 0) for e in events if type(e).__name__ == "Warning"]
    assert len(finals) == 2
    assert [w["word"] for w in finals[0]["words"]] == ["marhaba", "salam"]
    assert finals[0]["words"][0]["end_ms"] - finals[0]["words"][0]["start_ms"] == 200  # scripted
    assert [w["code"] for w in warnings] == ["alignment_unavailable"]
    assert "does not support 'ar'" in warnings[0]["message"]


def test_align_command_writes_subtitles(make_checkpoint, tmp_path: Path, capsys) -> None:
    """`asr-stream align AUDIO TEXT --aligner DIR --output x.srt`: one cue, every word timed."""
    directory = make_checkpoint(layout="original", dtype="float32", aligner_classes=CLASSES)
    out = tmp_path / "words.jsonl"
    wav = DATA_DIR / "cards_005.wav"
    text = "Eight of spades, four of clubs, seven of hearts."
    assert (
        cli.main(["align", str(wav), text, "--aligner", str(directory), "--output", str(out)]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[-1] for line in lines][:3] == ["Eight", "of", "spades,"]
    final = json.loads(out.read_text().splitlines()[0])
    assert [w["word"] for w in final["words"]] == text.split()
    assert cli.main(["align", str(wav), "...", "--aligner", str(directory)]) == 1
    assert "no word to align" in capsys.readouterr().err
    assert cli.main(["align", str(wav), "hi", "--aligner", str(tmp_path / "none")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_offline_transcription_with_the_aligner_writes_word_cues(
    untied, make_checkpoint, tmp_path: Path, capsys
) -> None:
    """`transcribe --offline --aligner DIR --output x.srt`: the cues take the aligner's times."""
    import srt

    aligner = make_checkpoint(layout="hf", dtype="float32", aligner_classes=CLASSES)
    out = tmp_path / "out.srt"
    wav = DATA_DIR / "cards_005.wav"
    args = ["transcribe", str(wav), "--offline", "--model", str(untied("original"))]
    args += ["--dtype", "float32", "--aligner", str(aligner), "--output", str(out)]
    assert cli.main([*args, "--format", "json"]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    cues = list(srt.parse(out.read_text()))
    assert final["words"] and cues
    expected = load_aligner(aligner).align(read_wav(wav)[0], final["text"], None)
    assert [w["start_ms"] for w in final["words"]] == [w.start_ms for w in expected.words]
    assert cues[0].start.total_seconds() * 1000 == final["words"][0]["start_ms"]
