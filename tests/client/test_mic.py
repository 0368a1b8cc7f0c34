"""The microphone client, fed by an injected source through the path PortAudio feeds."""

from __future__ import annotations

import asyncio
import builtins
import io
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import srt

from client.captions import DIM, TerminalCaptions
from client.connection import ServiceError, SessionSettings
from client.mic import MicrophoneError, SoundDeviceSource, run_microphone
from client.transcript_files import TranscriptWriter
from streaming.invariants import check_events
from streaming.scoring import corpus_wer
from tests.client.conftest import running_server
from tests.conftest import MS


class ReplaySource:
    """Plays int16 samples like a capture device: 100 ms blocks, in real time, from a thread."""

    name = "replay"

    def __init__(self, samples: np.ndarray, sample_rate: int = 16000):
        self.samples = samples.reshape(-1, 1)
        self.sample_rate = sample_rate
        self.channels = 1
        self._running = threading.Event()
        self._thread: threading.Thread | None = None
        self.finished = threading.Event()

    def start(self, on_block) -> None:
        self._running.set()
        block = self.sample_rate // 10

        def play():
            start = time.monotonic()
            for k, i in enumerate(range(0, len(self.samples), block)):
                delay = start + k * 0.1 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if not self._running.is_set():
                    return
                on_block(self.samples[i : i + block], False)
            self.finished.set()

        self._thread = threading.Thread(target=play, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=2)


def int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1, 1) * 32767).astype(np.int16)


@pytest.mark.asyncio
@pytest.mark.slow
async def test_microphone_captions_and_subtitle_file(whisper, corpus, tmp_path):
    """A spoken sentence shows live captions, prints the final, and saves a valid SRT."""
    utterance = corpus[8]
    source = ReplaySource(int16(np.concatenate([utterance.samples(), np.zeros(16000)])))
    screen = io.StringIO()
    captions = TerminalCaptions(screen, live=True)
    events = []
    with (tmp_path / "out.srt").open("w") as out:
        writer = TranscriptWriter(out, "srt")
        async with running_server(whisper) as server:
            stop = asyncio.Event()
            watcher = asyncio.create_task(asyncio.to_thread(source.finished.wait))
            watcher.add_done_callback(lambda _: stop.set())  # "Ctrl-C" when the audio is over
            result = await run_microphone(
                f"ws://127.0.0.1:{server.port}", source,
                SessionSettings(word_timestamps=True), stop,
                on_event=lambda e: (events.append(e), captions(e)), writer=writer,
            )  # fmt: skip
    assert result.closed and result.dropped_ms == 0
    assert check_events(events, input_ended=True) == []
    text = " ".join(f["text"] for f in result.finals)
    assert corpus_wer([(utterance.reference, text)]).wer <= 0.15, text
    drawn = screen.getvalue()
    assert DIM in drawn  # tentative words were drawn dimmed, in place
    assert drawn.rstrip().endswith(result.finals[-1]["text"])  # finals scroll up as lines
    subtitles = list(srt.parse((tmp_path / "out.srt").read_text()))
    assert " ".join(s.content.replace("\n", " ") for s in subtitles) == text
    assert subtitles[0].start.total_seconds() < 1.0
    assert subtitles[-1].end.total_seconds() <= utterance.seconds + 1.0


@pytest.mark.asyncio
@pytest.mark.slow
async def test_ctrl_c_mid_sentence_still_delivers_the_words_spoken(whisper, corpus):
    """Stopping mid-utterance sends input.end and waits for the final of what was heard."""
    utterance = corpus[11]
    source = ReplaySource(int16(utterance.samples()))
    async with running_server(whisper) as server:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(3.0, stop.set)
        result = await run_microphone(
            f"ws://127.0.0.1:{server.port}", source, SessionSettings(), stop
        )
    assert result.closed
    assert [f["reason"] for f in result.finals] == ["end"]
    assert result.finals[0]["text"].lower().startswith("had he married")


@pytest.mark.asyncio
async def test_a_stalled_network_drops_the_oldest_audio_and_says_so(whisper, monkeypatch):
    """With the send queue full, old blocks are dropped and the user is told how much."""
    import client.mic as mic

    monkeypatch.setattr(mic, "MAX_QUEUED_S", 0.3)  # three blocks
    notes = []
    source = ReplaySource(np.zeros(16000 * 3, np.int16))
    async with running_server(whisper) as server:
        original = mic.StreamClient.send_audio

        async def slow_send(self, pcm):
            await asyncio.sleep(0.5)  # the network takes 0.5 s per 0.1 s block
            await original(self, pcm)

        monkeypatch.setattr(mic.StreamClient, "send_audio", slow_send)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(2.0, stop.set)
        result = await run_microphone(
            f"ws://127.0.0.1:{server.port}", source, SessionSettings(), stop, notify=notes.append
        )
    assert result.dropped_ms >= 500
    assert notes and "dropped" in notes[0]


@pytest.mark.asyncio
@pytest.mark.parametrize("peak_dbfs", [-50.0, -20.0])
async def test_a_microphone_too_quiet_to_be_heard_is_reported(
    whisper, corpus, monkeypatch, peak_dbfs
):
    """Real speech at a peak of -50 dBFS, below what the service's voice detector hears, gets
    one note saying so; the same speech at -20 dBFS gets none."""
    import client.mic as mic

    monkeypatch.setattr(mic, "LEVEL_CHECK_S", 1.0)
    speech = corpus[11].samples()
    source = ReplaySource(int16(speech / np.abs(speech).max() * 10 ** (peak_dbfs / 20)))
    notes: list[str] = []
    async with running_server(whisper) as server:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(1.6, stop.set)
        await run_microphone(
            f"ws://127.0.0.1:{server.port}", source, SessionSettings(), stop, notify=notes.append
        )
    quiet = [n for n in notes if "very quiet" in n]
    if peak_dbfs < mic.QUIET_PEAK_DBFS:
        assert len(quiet) == 1 and "raise its input gain" in quiet[0], notes
    else:
        assert not quiet, notes


@pytest.mark.asyncio
async def test_an_unreachable_server_is_a_clear_error():
    """The client names the address it could not reach."""
    with pytest.raises(ServiceError, match=r"ws://127\.0\.0\.1:9"):
        await run_microphone(
            "ws://127.0.0.1:9", ReplaySource(np.zeros(1600, np.int16)), SessionSettings(),
            asyncio.Event(),
        )  # fmt: skip


def test_missing_portaudio_says_what_to_install(monkeypatch):
    """Without the PortAudio library the error names the package to install."""
    real_import = builtins.__import__

    def without_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", without_portaudio)
    with pytest.raises(MicrophoneError, match="libportaudio2"):
        SoundDeviceSource()


def test_no_input_device_is_reported(monkeypatch):
    """PortAudio present but no input device: the error says no microphone was found."""
    import sounddevice

    monkeypatch.setattr(sounddevice, "query_devices", lambda *a, **k: [])
    with pytest.raises(MicrophoneError, match="No microphone found"):
        SoundDeviceSource()


def test_an_unknown_device_lists_the_real_ones(monkeypatch):
    """Asking for a device that does not exist lists the input devices there are."""
    import sounddevice

    devices = [{"name": "USB Mic", "max_input_channels": 1, "default_samplerate": 48000.0}]

    def query(device=None, kind=None):
        if device is None and kind is None:
            return devices
        raise ValueError(f"No input device matching {device!r}")

    monkeypatch.setattr(sounddevice, "query_devices", query)
    with pytest.raises(MicrophoneError, match="0: USB Mic"):
        SoundDeviceSource("Studio Mic")


def test_the_mic_command_reports_the_machine_state_in_one_line():
    """`asr-stream mic` on this machine either lists devices or explains what is missing."""
    result = subprocess.run(
        [sys.executable, "-m", "streaming.cli", "mic", "--url", "ws://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60 * 1000 * MS, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("asr-stream: ")
    assert any(hint in message for hint in ("No microphone found", "PortAudio", "cannot reach")), (
        message
    )
