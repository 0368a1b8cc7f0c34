"""Live captions from a microphone: `asr-stream mic`.

The microphone (PortAudio through sounddevice) delivers blocks of int16 samples on its own
thread. Each block is handed to the event loop (`call_soon_threadsafe`) into a bounded queue,
and a sender task streams it to the service at the device's own sample rate (the server
resamples). Captions are drawn as events arrive; finals are also saved to `--output`.

Queue policy: the queue holds `MAX_QUEUED_S` seconds of audio. If the network cannot keep up
for longer, the oldest block is dropped to keep captions live, and the loss is reported on the
terminal (never silently).

Level check: a microphone whose gain is set too low delivers speech the service cannot hear
(below about -45 dBFS at its loudest the voice detector misses it: BENCHMARKS.md, "Quiet
speech"), and the captions then stay empty with no reason given. So if nothing in the first
`LEVEL_CHECK_S` seconds reaches `QUIET_PEAK_DBFS`, the terminal says so, once.

Ctrl-C stops capture, sends `input.end`, waits for the last finals, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from client.connection import ServiceError, SessionSettings, StreamClient
from client.transcript_files import TranscriptWriter

MAX_QUEUED_S = 10.0  # audio held while the network is slow, seconds
BLOCK_S = 0.1  # audio per block and per WebSocket frame, seconds
FINALS_TIMEOUT_S = 30.0  # how long Ctrl-C waits for the last finals
LEVEL_CHECK_S = 10.0  # audio whose loudest sample is checked against QUIET_PEAK_DBFS, seconds
QUIET_PEAK_DBFS = -45.0  # the service's voice detector misses speech quieter than this

# Called from the capture thread with one block of int16 samples (frames, channels) and
# whether the device reported an input overflow before it.
BlockCallback = Callable[[np.ndarray, bool], None]


class MicrophoneError(RuntimeError):
    """The microphone cannot be used; the message says what to do about it."""


class AudioSource(Protocol):
    """Something that captures audio and calls back with int16 blocks from its own thread."""

    sample_rate: int
    channels: int
    name: str

    def start(self, on_block: BlockCallback) -> None: ...

    def stop(self) -> None: ...


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # raised when the PortAudio shared library is missing
        raise MicrophoneError(
            "PortAudio is not installed, so no microphone can be opened. Install it with "
            "`sudo apt-get install libportaudio2` (Debian/Ubuntu) or `brew install portaudio` "
            f"(macOS). ({exc})"
        ) from None
    return sounddevice


def list_input_devices() -> list[str]:
    """Printable lines describing the input devices PortAudio sees."""
    sd = _sounddevice()
    lines = []
    for index, device in enumerate(sd.query_devices()):
        if device["max_input_channels"] > 0:
            lines.append(
                f"{index}: {device['name']} ({device['max_input_channels']} ch, "
                f"{device['default_samplerate']:.0f} Hz)"
            )
    return lines


class SoundDeviceSource:
    """A PortAudio input device."""

    def __init__(self, device: str | int | None = None, sample_rate: int | None = None):
        sd = _sounddevice()
        if not list_input_devices():
            raise MicrophoneError(
                "No microphone found: PortAudio reports no input device. Connect one, or "
                "check the system's sound settings."
            )
        try:
            info = sd.query_devices(device, "input")
        except (ValueError, sd.PortAudioError) as exc:
            available = "; ".join(list_input_devices())
            raise MicrophoneError(f"{exc}. Input devices: {available}") from None
        self._sd = sd
        self.device = device
        self.name = str(info["name"])
        self.sample_rate = int(sample_rate or info["default_samplerate"])
        self.channels = 1  # mono is all recognition needs; PortAudio downmixes
        self._stream: Any = None

    def start(self, on_block: BlockCallback) -> None:
        def callback(indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
            on_block(indata.copy(), bool(status.input_overflow))

        try:
            self._stream = self._sd.InputStream(
                device=self.device,
                samplerate=self.sample_rate,
                channels=self.channels,
                dtype="int16",
                blocksize=int(self.sample_rate * BLOCK_S),
                callback=callback,
            )
            self._stream.start()
        except self._sd.PortAudioError as exc:
            raise MicrophoneError(f"cannot open {self.name}: {exc}") from None

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


@dataclass
class MicResult:
    """What a microphone session produced."""

    finals: list[dict[str, Any]]
    dropped_ms: int
    overflows: int
    closed: bool


async def run_microphone(
    url: str,
    source: AudioSource,
    settings: SessionSettings,
    stop: asyncio.Event,
    *,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    writer: TranscriptWriter | None = None,
    token: str | None = None,
    insecure: bool = False,
    notify: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
) -> MicResult:
    """Streams `source` to the service until `stop` is set, then collects the last finals.

    Raises:
        ServiceError: the service cannot be reached, refuses, or ends the session with an error.
        MicrophoneError: the microphone cannot be opened.
    """
    loop = asyncio.get_running_loop()
    bytes_per_second = source.sample_rate * source.channels * 2
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=max(1, int(MAX_QUEUED_S / BLOCK_S)))
    result = MicResult(finals=[], dropped_ms=0, overflows=0, closed=False)
    reported_ms = 0  # dropped audio already reported to the user
    level_frames = 0  # captured so far, until the level check (done once it reaches the limit)
    level_peak = 0  # the loudest sample among them
    level_limit = LEVEL_CHECK_S * source.sample_rate

    def check_level(data: bytes) -> None:
        nonlocal level_frames, level_peak
        if level_frames >= level_limit:
            return
        samples = np.frombuffer(data, np.int16).astype(np.int32)
        level_peak = max(level_peak, int(np.abs(samples).max(initial=0)))
        level_frames += len(samples) // source.channels
        if level_frames < level_limit:
            return
        peak_dbfs = 20 * np.log10(max(level_peak, 1) / 32768)
        if peak_dbfs < QUIET_PEAK_DBFS:
            notify(
                f"the microphone is very quiet: its loudest sound in {LEVEL_CHECK_S:.0f} s was "
                f"{peak_dbfs:.0f} dBFS. If you were speaking, raise its input gain: speech "
                f"below {QUIET_PEAK_DBFS:.0f} dBFS is not heard."
            )

    def enqueue(data: bytes, overflowed: bool) -> None:  # on the loop thread
        nonlocal reported_ms
        result.overflows += overflowed
        check_level(data)
        if queue.full():
            dropped = queue.get_nowait()
            assert dropped is not None  # the end marker is only queued after capture stopped
            result.dropped_ms += len(dropped) * 1000 // bytes_per_second
            if result.dropped_ms - reported_ms >= 1000 or not reported_ms:
                reported_ms = result.dropped_ms
                notify(f"network too slow: {result.dropped_ms} ms of audio dropped so far")
        queue.put_nowait(data)

    def on_block(block: np.ndarray, overflowed: bool) -> None:  # on the capture thread
        loop.call_soon_threadsafe(enqueue, block.astype(np.int16, copy=False).tobytes(), overflowed)

    settings = replace(
        settings, encoding="pcm_s16le", sample_rate=source.sample_rate, channels=source.channels
    )
    client = await StreamClient.open(url, settings, token=token, insecure=insecure)

    async def send() -> None:
        while (data := await queue.get()) is not None:
            await client.send_audio(data)
        await client.end()

    async def receive() -> None:
        async for event in client.events():
            if on_event is not None:
                on_event(event)
            if event["type"] == "transcript.final":
                result.finals.append(event)
                if writer is not None:
                    writer.write(event)
            elif event["type"] == "session.closed":
                result.closed = True
                return

    sender = asyncio.create_task(send(), name="mic-sender")
    receiver = asyncio.create_task(receive(), name="mic-receiver")
    source.start(on_block)
    try:
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {stopped, receiver, sender}, return_when=asyncio.FIRST_COMPLETED
        )
        stopped.cancel()
        source.stop()
        if receiver in done or sender in done:  # the server ended the session early
            await receiver
            await sender
            return result
        await asyncio.sleep(0)  # let blocks already handed over by the capture thread land
        await queue.put(None)  # behind all captured audio; the sender drains the queue
        async with asyncio.timeout(FINALS_TIMEOUT_S):
            await sender
            await receiver
    finally:
        source.stop()
        for task in (sender, receiver):
            task.cancel()
        with contextlib.suppress(Exception):
            await client.close()
    return result


__all__ = [
    "AudioSource",
    "MicResult",
    "MicrophoneError",
    "ServiceError",
    "SoundDeviceSource",
    "list_input_devices",
    "run_microphone",
]
