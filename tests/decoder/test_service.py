"""The Qwen recognizer in the service: --model resolution, the real WebSocket server, the CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from client.connection import SessionSettings
from client.file_streamer import PaceOptions, stream_samples
from decoder.loader import load_qwen
from decoder.recognizer import QwenRecognizer
from streaming import cli
from streaming.invariants import check_events
from streaming.models.loading import ModelNotFoundError, load_recognizer
from streaming.server.service import ServerConfig, StreamingServer
from tests.conftest import DATA_DIR, MS


def int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16)[:, None]


def test_a_checkpoint_folder_builds_a_qwen_recognizer(make_checkpoint: Callable[..., Path]) -> None:
    """--model DIR of either layout gives a QwenRecognizer with the asked mode and window."""
    for layout in ("original", "hf"):
        directory = make_checkpoint(layout=layout)
        recognizer = load_recognizer(str(directory), dtype="bfloat16", window_s=2)
        assert isinstance(recognizer, QwenRecognizer)
        assert recognizer.info.details["mode"] == "bfloat16"
        assert recognizer.info.details["window_s"] == "2"
    default = load_recognizer(str(make_checkpoint(layout="hf")))
    assert default.info.details["mode"] == "int8"  # the CPU default


def test_a_broken_checkpoint_says_why(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """A Qwen folder without weights is refused with the checkpoint's own explanation."""
    broken = shutil.copytree(make_checkpoint(layout="hf"), tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match=r"not a usable Qwen3-ASR checkpoint.*no weights"):
        load_recognizer(str(broken))


def test_hub_names_resolve_only_through_the_local_cache(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached repository loads by name; an uncached one explains how to provide weights."""
    from huggingface_hub import constants

    # the cache folder is read from the environment at import time, so patch the constant
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a network attempt would fail
    with pytest.raises(
        ModelNotFoundError, match=r"not in the local Hugging Face cache.*--model DIR"
    ):
        load_recognizer("Qwen/Qwen3-ASR-0.6B")
    repo = tmp_path / "models--Qwen--Qwen3-ASR-Tiny"
    shutil.copytree(make_checkpoint(layout="original"), repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    recognizer = load_recognizer("Qwen/Qwen3-ASR-Tiny", dtype="float32")
    assert recognizer.info.name == "qwen3-asr:Qwen/Qwen3-ASR-Tiny"


@pytest.mark.asyncio
async def test_the_service_streams_with_every_invariant(
    untied: Callable[[str], Path], corpus: list
) -> None:
    """Real WebSocket sessions on the tiny model keep every protocol invariant."""
    recognizer = QwenRecognizer(load_qwen(untied("hf"), mode="int8", window_seconds=2), "tiny")
    server = StreamingServer(recognizer, ServerConfig(port=0, web_root=None))
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    settings = [
        SessionSettings(),
        SessionSettings(language="en", context="cards", hotwords=("queen", "spades")),
    ]
    try:
        async with asyncio.timeout(120_000 * MS):
            results = await asyncio.gather(
                *(
                    stream_samples(
                        url,
                        int16(np.concatenate([corpus[i].samples(), corpus[i + 1].samples()])),
                        16_000,
                        settings[k],
                        # fast, but never more than 2 s ahead of the server: partials happen
                        PaceOptions(
                            100, realtime=False, max_ahead_ms=2000, trailing_silence_ms=900
                        ),
                    )
                    for k, i in enumerate((4, 9))
                )
            )
    finally:
        await server.shutdown()
    for result in results:
        assert check_events(result.events, input_ended=True) == []
        assert result.finals and any(e["type"] == "transcript.partial" for e in result.events)
    assert {f["language"] for f in results[1].finals} == {"en"}


def test_offline_transcription_prints_the_whole_file_text(
    untied: Callable[[str], Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`transcribe --offline` decodes the whole file at once and prints its text."""
    directory = untied("original")
    wav = DATA_DIR / "cards_001.wav"
    args = ["transcribe", str(wav), "--offline", "--model", str(directory), "--dtype", "float32"]
    assert cli.main([*args, "--window-s", "8", "--format", "json"]) == 0
    final = json.loads(capsys.readouterr().out.strip())
    assert final["type"] == "transcript.final" and final["start_ms"] == 0
    from streaming.offline import read_audio

    expected = load_qwen(directory).transcribe(read_audio(wav))
    assert final["text"] == expected.text and expected.text
    out = tmp_path / "out.txt"
    assert cli.main([*args, "--output", str(out)]) == 0
    assert out.read_text().strip() == capsys.readouterr().out.strip()


def test_offline_transcription_of_a_missing_model_fails_clearly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A --model that is nowhere ends with exit code 2 and a one-line reason."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["transcribe", str(DATA_DIR / "cards_001.wav"), "--offline", "--model",
                  str(tmp_path / "nothing")])  # fmt: skip
    assert stop.value.code == 2 and "unknown model" in capsys.readouterr().err
