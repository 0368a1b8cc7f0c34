"""A client connection to the streaming service's `/v1/stream` endpoint.

Shared by the file streamer and the microphone client: connect, announce the audio format with
`session.start`, send PCM frames, and read events until `session.closed`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI


class ServiceError(RuntimeError):
    """The service refused or ended the session; the message says why, in words for a person."""


@dataclass(frozen=True)
class SessionSettings:
    """What a client announces in session.start."""

    encoding: str = "pcm_s16le"
    sample_rate: int = 16_000
    channels: int = 1
    language: str = "auto"
    context: str = ""
    hotwords: tuple[str, ...] = ()
    partials: bool = True
    word_timestamps: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def message(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "session.start",
            "audio": {
                "encoding": self.encoding,
                "sample_rate": self.sample_rate,
                "channels": self.channels,
            },
            "language": self.language,
            "partials": self.partials,
            "word_timestamps": self.word_timestamps,
        }
        if self.context:
            body["context"] = self.context
        if self.hotwords:
            body["hotwords"] = list(self.hotwords)
        body.update(self.extra)
        return body


def stream_url(base: str) -> str:
    """Accepts `ws://host:port`, `ws://host:port/` or the full `/v1/stream` URL."""
    if "/v1/stream" in base:
        return base
    return base.rstrip("/") + "/v1/stream"


def _describe_refusal(code: int | None, reason: str) -> str:
    if code == 1013:
        return "the server is full; try again in a moment"
    if code == 4008:
        return "the server refused the token (pass the right one with --token)"
    return f"the server closed the session (code {code}: {reason or 'no reason given'})"


class StreamClient:
    """One streaming session from the client side."""

    def __init__(self, websocket: ClientConnection):
        self.websocket = websocket
        self.created: dict[str, Any] | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        settings: SessionSettings,
        *,
        token: str | None = None,
        insecure: bool = False,
        open_timeout: float = 10.0,
    ) -> StreamClient:
        """Connects and starts a session.

        Raises:
            ServiceError: the server cannot be reached or refuses the session.
        """
        tls = None
        if url.startswith("wss://") and insecure:
            tls = ssl.create_default_context()
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            websocket = await connect(
                stream_url(url),
                ssl=tls,
                additional_headers=headers,
                open_timeout=open_timeout,
                max_size=1 << 22,
                compression=None,
            )
        except (OSError, TimeoutError, InvalidStatus, InvalidURI) as exc:
            raise ServiceError(f"cannot reach the service at {url}: {exc}") from exc
        client = cls(websocket)
        first = await client._receive_json()
        if first.get("type") == "error":
            await websocket.close()
            raise ServiceError(first.get("message", "the server refused the session"))
        client.created = first
        await client.send_json(settings.message())
        return client

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.websocket.send(json.dumps(message))

    async def send_audio(self, pcm: bytes) -> None:
        await self.websocket.send(pcm)

    async def finalize(self) -> None:
        await self.send_json({"type": "input.finalize"})

    async def end(self) -> None:
        await self.send_json({"type": "input.end"})

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event of the session, `session.created` first, until the server closes.

        Raises:
            ServiceError: the connection ended with an error close code.
        """
        if self.created is not None:
            yield self.created
        while True:
            try:
                yield await self._receive_json()
            except ConnectionClosed as closed:
                rcvd = closed.rcvd
                if rcvd is not None and rcvd.code in (1000, 1001):
                    return
                code = rcvd.code if rcvd else None
                raise ServiceError(_describe_refusal(code, rcvd.reason if rcvd else "")) from None

    async def close(self) -> None:
        await self.websocket.close()

    async def _receive_json(self) -> dict[str, Any]:
        message = await self.websocket.recv()
        if isinstance(message, bytes):
            raise ServiceError("the server sent a binary frame; expected JSON events")
        event = json.loads(message)
        if not isinstance(event, dict):
            raise ServiceError(f"the server sent a non-object event: {message[:80]!r}")
        return event


async def wait_closed(client: StreamClient, grace_s: float) -> None:
    """Waits for the server to close after session.closed (a courtesy, not an error)."""
    try:
        async with asyncio.timeout(grace_s):
            await client.websocket.wait_closed()
    except TimeoutError:
        await client.close()
