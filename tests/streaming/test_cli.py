"""The asr-stream command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import DATA_DIR, MS

pytestmark = pytest.mark.slow
ASR_STREAM = [sys.executable, "-m", "streaming.cli", "--log-level", "WARNING"]


def run(*args, timeout=120):
    return subprocess.run(
        [*ASR_STREAM, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_transcribe_in_process_prints_the_final_text():
    """`asr-stream transcribe FILE --fast` without --url runs a server in-process."""
    result = run("transcribe", str(DATA_DIR / "goforward.wav"), "--fast")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().lower().startswith("go forward")


def test_transcribe_json_prints_every_event_as_a_json_line():
    """--format json prints the whole event log, session.created first, session.closed last."""
    result = run("transcribe", str(DATA_DIR / "cards_001.wav"), "--fast", "--format", "json")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "session.created" and events[-1]["type"] == "session.closed"
    assert any(e["type"] == "transcript.final" for e in events)


def test_transcribe_reports_an_unreadable_file_clearly(tmp_path):
    """A file that is not audio gives a one-line error and exit code 1."""
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    result = run("transcribe", str(bad), "--fast")
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_transcribe_reports_an_unreachable_server():
    """--url pointing at a closed port says it cannot reach the service."""
    result = run("transcribe", str(DATA_DIR / "cards_001.wav"), "--url", "ws://127.0.0.1:9")
    assert result.returncode == 1 and "cannot reach" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_health_and_streams_then_stops_on_sigterm(tmp_path):
    """`asr-stream serve` serves /health and /v1/stream, and exits 0 on SIGTERM."""
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    command = [*ASR_STREAM, "serve", "--port", str(port)]
    with (
        log,
        subprocess.Popen(
            command, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        ) as server,
    ):
        try:
            deadline = time.monotonic() + 60_000 * MS
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        assert json.loads(r.read())["status"] == "ok"
                        break
                except OSError:
                    assert time.monotonic() < deadline, "server did not come up"
                    time.sleep(0.2)
            url = f"ws://127.0.0.1:{port}"
            result = run("transcribe", str(DATA_DIR / "goforward.wav"), "--url", url, "--fast")
            assert "forward" in result.stdout.lower(), result.stderr
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0
        finally:
            server.kill()
    assert "shutting down" in (tmp_path / "serve.log").read_text()


def test_transcribe_reads_flac_at_44k_stereo_and_saves_subtitles(tmp_path):
    """A 44.1 kHz stereo FLAC is sent as-is (server resamples, downmixes) and saved as WebVTT."""
    import numpy as np
    import soundfile
    import soxr
    import webvtt

    from tests.conftest import read_wav

    mono, _ = read_wav(DATA_DIR / "goforward.wav")
    stereo = np.stack([soxr.resample(mono, 16000, 44100)] * 2, axis=1)
    soundfile.write(tmp_path / "speech.flac", stereo, 44100, subtype="PCM_16")
    out = tmp_path / "speech.vtt"
    result = run("transcribe", str(tmp_path / "speech.flac"), "--fast", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "forward" in result.stdout.lower()
    captions = webvtt.read(str(out))
    assert "forward" in " ".join(c.text for c in captions).lower()


@pytest.mark.parametrize(
    "command", [["serve"], ["transcribe", "talk.wav"], ["transcribe", "talk.wav", "--offline"],
                ["mqtt", "--broker", "mqtt://localhost"]],
)  # fmt: skip
def test_every_command_that_runs_a_model_takes_the_same_model_options(command):
    from streaming.cli import build_parser

    options = ["--model", "ckpt", "--threads", "1", "--dtype", "bfloat16", "--window-s", "2",
               "--beam-size", "5"]  # fmt: skip
    args = build_parser().parse_args([*command, *options])
    assert (args.model, args.threads, args.device, args.dtype, args.window_s, args.beam_size) == (
        "ckpt", 1, "cpu", "bfloat16", 2, 5,
    )  # fmt: skip
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--window-s", "9"])
