"""Fixtures for client tests: an in-process server on the real model, and a real Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest

from streaming.server.service import ServerConfig, StreamingServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@contextlib.asynccontextmanager
async def running_server(recognizer, **options):
    """The real service on a free port, serving the page from client/web."""
    server = StreamingServer(recognizer, ServerConfig(port=0, **options))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


class FlakyNetwork:
    """A TCP relay between clients and a server whose links can all be cut at once.

    Cutting aborts both sockets of every link (no close frame, no FIN handshake): what a client
    sees when Wi-Fi drops. New connections are relayed again right after.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        for a, b in self._links:
            a.transport.abort()
            b.transport.abort()
        self._links.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._links.append((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def flaky_network(port: int):
    network = FlakyNetwork(port)
    await network.start()
    try:
        yield network
    finally:
        await network.stop()


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """16-bit mono WAV, the format Chromium's fake capture device reads."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def padded(samples: np.ndarray, lead_s: float = 0.5, trail_s: float = 1.5) -> np.ndarray:
    """Chromium's fake device starts reading at getUserMedia and repeats its last 10 ms
    forever after the file ends: digital silence on both sides keeps the test exact."""
    return np.concatenate(
        [np.zeros(int(lead_s * 16000)), samples, np.zeros(int(trail_s * 16000))]
    ).astype(np.float32)


def self_signed_context(folder: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """A throw-away certificate for 127.0.0.1 (openssl), for https:// and wss:// tests."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert, key


@contextlib.asynccontextmanager
async def chromium(fake_audio: Path | None, *, grant_microphone: bool = True):
    """Headless Debian Chromium driven by Playwright, its microphone fed from `fake_audio`."""
    from playwright.async_api import async_playwright

    if not CHROMIUM.exists():  # noqa: ASYNC240 - one stat() before launching a browser
        pytest.fail("Debian's chromium is not installed: run `bash scripts/system-deps.sh`")
    args = list(CHROMIUM_ARGS)
    if fake_audio is not None:
        path = fake_audio.absolute()  # noqa: ASYNC240 - Chromium needs an absolute path
        args.append(f"--use-file-for-fake-audio-capture={path}%noloop")
    if grant_microphone:
        args.append("--use-fake-ui-for-media-stream")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        async with async_playwright() as p:
            context = await p.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=args,
                permissions=["microphone"] if grant_microphone else [],
                ignore_https_errors=True,
            )
            try:
                yield context.pages[0]
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
