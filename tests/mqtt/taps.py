"""Test doubles of the outside world of the MQTT bridge: a mosquitto broker, a call-center tap
that publishes calls, and a listener that records what the bridge publishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import soxr
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from streaming.audio import AudioFormat
from streaming.mqtt.audio import AudioPacket
from tests.conftest import MS

TELEPHONY_RATE = 8_000  # Hz


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A mosquitto process on 127.0.0.1 with persistence in `directory`, restartable."""

    def __init__(self, directory: Path, extra_config: str = "", *, anonymous: bool = True):
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed: run `bash scripts/system-deps.sh`")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.log = directory / "mosquitto.log"
        self.config = directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {str(anonymous).lower()}",
            "persistence true",
            f"persistence_location {directory}/",
            "max_queued_messages 100000",
            # the listener's persistent session also gets the partials (QoS 0) published while
            # it reconnects after a broker restart, so that it can check gapless seq
            "queue_qos0_messages true",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            extra_config,
        ]
        if os.geteuid() == 0:  # mosquitto started as root drops to user mosquitto otherwise
            lines.append("user root")
        self.config.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5_000 * MS
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start:\n{self.log_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stops the broker the way a service manager does (SIGTERM: it saves its state)."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=5_000 * MS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"


# ------------------------------------------------------------------ telephony audio


def _g711_segment(magnitude: np.ndarray, ends: Sequence[int]) -> np.ndarray:
    return np.searchsorted(np.asarray(ends), magnitude, side="left")


def encode_mulaw(pcm: np.ndarray) -> bytes:
    """ITU-T G.711 mu-law encoding of int16 samples (the reference g711.c algorithm)."""
    value = pcm.astype(np.int32) >> 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(value), 8159) + (0x84 >> 2)
    segment = _g711_segment(magnitude, [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> (np.minimum(segment, 7) + 1)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8).tobytes()


def encode_alaw(pcm: np.ndarray) -> bytes:
    """ITU-T G.711 A-law encoding of int16 samples (the reference g711.c algorithm)."""
    value = pcm.astype(np.int32) >> 3
    mask = np.where(value >= 0, 0xD5, 0x55)
    magnitude = np.where(value >= 0, value, -value - 1)
    segment = _g711_segment(magnitude, [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    shift = np.where(segment < 2, 1, segment)
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> np.minimum(shift, 7)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8).tobytes()


def telephony(samples: np.ndarray, encoding: str, rate: int = 16_000) -> bytes:
    """Float samples at `rate` as a phone line carries them: 8 kHz, in `encoding`."""
    narrow = soxr.resample(samples.astype(np.float32), rate, TELEPHONY_RATE, quality="HQ")
    pcm = (np.clip(narrow, -1, 1) * 32767).astype(np.int16)
    if encoding == "pcm_mulaw":
        return encode_mulaw(pcm)
    if encoding == "pcm_alaw":
        return encode_alaw(pcm)
    assert encoding == "pcm_s16le", encoding
    return pcm.astype("<i2").tobytes()


def packets(
    audio: bytes, encoding: str, frame_ms: int = 20, rate: int = TELEPHONY_RATE, first_seq: int = 0
) -> list[bytes]:
    """Splits one channel's audio into header + audio messages of `frame_ms`."""
    fmt = AudioFormat(encoding=encoding, sample_rate=rate)
    step = fmt.frame_bytes * rate * frame_ms // 1000
    out = []
    for seq, start in enumerate(range(0, len(audio), step), start=first_seq):
        position = start // fmt.frame_bytes
        out.append(AudioPacket(seq, position, fmt, audio[start : start + step]).pack())
    return out


# --------------------------------------------------------------------- MQTT clients


def v5_session(expiry_s: int = 300) -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry_s
    return properties


class Tap:
    """A call-center tap: publishes calls' control messages and audio, and rides out broker
    restarts by reconnecting and publishing again what failed."""

    def __init__(self, port: int, prefix: str = "asr", tenant: str = "acme"):
        self.port = port
        self.prefix = prefix
        self.tenant = tenant
        self._client: aiomqtt.Client | None = None
        self.reconnects = 0

    async def __aenter__(self) -> Tap:
        await self._connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)

    async def _connect(self) -> None:
        deadline = time.monotonic() + 20_000 * MS
        while True:
            client = aiomqtt.Client(
                "127.0.0.1", self.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5
            )
            try:
                await client.__aenter__()
            except aiomqtt.MqttError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
                continue
            self._client = client
            return

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        while True:
            assert self._client is not None
            try:
                await self._client.publish(topic, payload, qos=qos)
                return
            except aiomqtt.MqttError:
                self.reconnects += 1
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._client.__aexit__(None, None, None)
                await self._connect()

    async def control(self, call_id: str, message: dict[str, Any] | bytes) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        await self.publish(f"{self.prefix}/{self.tenant}/{call_id}/control", payload)

    async def audio(self, call_id: str, channel: str, payload: bytes, qos: int = 1) -> None:
        await self.publish(f"{self.prefix}/{self.tenant}/{call_id}/{channel}/audio", payload, qos)

    async def stream(
        self,
        call_id: str,
        channels: dict[str, list[bytes]],
        *,
        frame_ms: int = 20,
        realtime: bool = True,
        on_frame: Callable[[int], Any] | None = None,
    ) -> None:
        """Publishes the channels' packets side by side, one frame of each every `frame_ms`."""
        started = time.monotonic()
        frames = max(len(p) for p in channels.values())
        for i in range(frames):
            if on_frame is not None:
                result = on_frame(i)
                if asyncio.iscoroutine(result):
                    await result
            for channel, items in channels.items():
                if i < len(items):
                    await self.audio(call_id, channel, items[i])
            if realtime:
                delay = started + (i + 1) * frame_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None


class Listener:
    """Records every message on `topic_filter`; its persistent session survives broker restarts."""

    def __init__(self, port: int, topic_filter: str, client_id: str):
        self.port = port
        self.topic_filter = topic_filter
        self.client_id = client_id
        self.messages: list[Received] = []
        self._arrived = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Listener:
        self._task = asyncio.create_task(self._run(), name=f"listener:{self.client_id}")
        async with asyncio.timeout(10_000 * MS):
            await self._subscribed.wait()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        while not self._task.done():  # aiomqtt's waits can swallow one cancellation
            self._task.cancel()
            await asyncio.wait([self._task], timeout=1.0)

    async def _run(self) -> None:
        while True:
            client = aiomqtt.Client(
                "127.0.0.1",
                self.port,
                identifier=self.client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=v5_session(),
            )
            try:
                async with client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        self.messages.append(
                            Received(
                                message.topic.value,
                                bytes(message.payload),
                                message.qos,
                                message.retain,
                                time.monotonic(),
                            )
                        )
                        self._arrived.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    def events(self, call_id: str | None = None) -> list[dict[str, Any]]:
        """The JSON events received on events topics (of one call), deduplicated by
        (session_id, seq) as MQTT's at-least-once delivery requires, in seq order."""
        seen: dict[tuple[str, int], dict[str, Any]] = {}
        for message in self.messages:
            if not message.topic.endswith("/events"):
                continue
            if call_id is not None and message.topic.split("/")[-2] != call_id:
                continue
            event = message.json()
            seen.setdefault((event["session_id"], event["seq"]), event)
        return sorted(seen.values(), key=lambda e: (e["session_id"], e["seq"]))

    async def wait_for(self, condition: Callable[[], bool], limit_s: float) -> None:
        """Waits until `condition()` holds, checking after each message."""
        async with asyncio.timeout(limit_s):
            while not condition():
                self._arrived.clear()
                await self._arrived.wait()
