"""The WebSocket front end: protocol v1 on `/v1/stream`, plus `/health` and the browser page.

This module only moves bytes: frames from a socket into a `Session`, decode requests from the
session to the shared `ModelWorker`, and events from the session back to the socket. All
protocol decisions live in `streaming.session`.

Bounds and their policies:
- sessions: at most `max_sessions`; one more is accepted only to be told `server_full` and
  closed with 1013 (try again later), so a browser can show why;
- incoming frames: websockets' `max_size` (larger messages close the connection with 1009)
  and `max_queue` (reading pauses, TCP pushes back on the client);
- outgoing events: a per-connection outbox that coalesces superseded partials and acks while
  the client reads slowly, never drops anything else, and closes the connection with 4004 when
  more than `max_outbox` events wait (the client has stopped reading);
- idle: no frame for `idle_timeout_s` ends the input (finals still come) and closes with 4005.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import mimetypes
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

import client
from streaming import events as ev
from streaming.config import SessionConfig
from streaming.errors import CapacityError, CloseCode, StreamingError
from streaming.recognizer import Recognizer
from streaming.runner import SessionRunner
from streaming.session import Limits, Session
from streaming.vad import VadConfig
from streaming.worker import ModelWorker

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/stream"
HEALTH_PATH = "/health"
WEB_ROOT = (
    Path(client.__file__).resolve().parent / "web"
)  # the browser page, shipped as package data
# session.closed reasons and the close code each ends with
CLOSE_FOR_REASON = {
    "input_end": CloseCode.NORMAL,
    "server_shutdown": CloseCode.GOING_AWAY,
    "idle_timeout": CloseCode.IDLE_TIMEOUT,
    "max_session": CloseCode.SESSION_LIMIT,
}


@dataclass(frozen=True)
class ServerConfig:
    """Operator settings of the WebSocket service."""

    host: str = "127.0.0.1"
    port: int = 8765
    # concurrent streaming sessions; one more is refused with server_full / 1013
    max_sessions: int = 8
    # largest WebSocket message, bytes (1 s of 48 kHz stereo float32 is 384 000)
    max_message_bytes: int = 1 << 20
    # events waiting for a client that does not read, before it is disconnected
    max_outbox: int = 1_000
    # no frame at all for this long ends the session, seconds
    idle_timeout_s: float = 60.0
    # how long shutdown waits for open sessions to deliver their finals, seconds
    shutdown_timeout_s: float = 15.0
    # requests decoded together on the model thread
    max_batch: int = 8
    # TLS certificate and key (PEM) for wss:// and https://
    certfile: Path | None = None
    keyfile: Path | None = None
    # when set, clients must send it as ?token= or "Authorization: Bearer ..."
    token: str | None = None
    # directory served at / (the browser page); None disables it
    web_root: Path | None = WEB_ROOT
    limits: Limits = field(default_factory=Limits)
    session_defaults: SessionConfig = field(default_factory=SessionConfig)
    vad: VadConfig = field(default_factory=VadConfig)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {self.max_sessions!r}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile must be given together")


class _Outbox:
    """Events waiting to be sent to one client, numbered with `seq` as they leave."""

    def __init__(self, limit: int):
        self.limit = limit
        self._events: deque[ev.Event] = deque()
        self._ready = asyncio.Event()
        self.seq = 0
        self.overflow = False

    def push(self, event: ev.Event) -> None:
        if event.coalescable:
            self._events = deque(e for e in self._events if not ev.supersedes(event, e))
        self._events.append(event)
        if len(self._events) > self.limit:
            self.overflow = True
        self._ready.set()

    def take(self) -> ev.Event | None:
        if not self._events:
            self._ready.clear()
            return None
        self.seq += 1
        return self._events.popleft()

    async def wait(self) -> None:
        await self._ready.wait()

    def __len__(self) -> int:
        return len(self._events)


class _Connection:
    """Drives one Session over one WebSocket."""

    def __init__(self, server: StreamingServer, websocket: ServerConnection, session: Session):
        self.server = server
        self.websocket = websocket
        self.session = session
        self.outbox = _Outbox(server.config.max_outbox)
        self.runner = SessionRunner(session, server.worker, self.outbox.push)
        self._done = asyncio.Event()

    async def run(self) -> None:
        writer = asyncio.create_task(self._write(), name=f"{self.session.session_id}:writer")
        try:
            await self._read()
        finally:
            self.runner.abandon()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def shutdown(self) -> None:
        """Server shutdown: finish the input; the finals are sent, then the socket closes."""
        self.runner.close("server_shutdown")

    async def _read(self) -> None:
        idle = self.server.config.idle_timeout_s
        while not self._done.is_set():
            try:
                async with asyncio.timeout(idle):
                    message = await self.websocket.recv()
            except TimeoutError:
                self.runner.close("idle_timeout")
                await self._done.wait()  # the writer closes the socket after the finals
                return
            except ConnectionClosed:
                return  # the client left: nobody is there to send finals to
            if isinstance(message, bytes):
                self.runner.receive_audio(message)
            else:
                self.runner.receive_text(message)

    async def _write(self) -> None:
        websocket, session = self.websocket, self.session
        try:
            while True:
                await self.outbox.wait()
                if self.outbox.overflow:
                    await websocket.close(CloseCode.SLOW_CLIENT, "client does not read events")
                    return
                while (event := self.outbox.take()) is not None:
                    wire = event.to_wire(session.session_id, self.outbox.seq)
                    await websocket.send(json.dumps(wire, ensure_ascii=False))
                if session.finished and not len(self.outbox):
                    await websocket.close(*self._close_code())
                    return
        except ConnectionClosed:
            return
        finally:
            self._done.set()

    def _close_code(self) -> tuple[int, str]:
        if self.session.fatal is not None:
            return self.session.fatal.close_code, self.session.fatal.code
        reason = self.session.close_reason
        return CLOSE_FOR_REASON.get(reason, CloseCode.NORMAL), reason


class StreamingServer:
    """The WebSocket service around one recognizer."""

    def __init__(self, recognizer: Recognizer, config: ServerConfig | None = None):
        self.recognizer = recognizer
        self.config = config or ServerConfig()
        self.worker = ModelWorker(recognizer, max_batch=self.config.max_batch)
        self._connections: set[_Connection] = set()
        self._no_connections = asyncio.Event()
        self._no_connections.set()
        self._server: Server | None = None
        self._started = time.monotonic()
        self._stopping = False
        self._refused = 0

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Starts listening (port 0 picks a free port; see `port`)."""
        self.worker.start()
        tls = None
        if self.config.certfile is not None:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(self.config.certfile, self.config.keyfile)
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            max_size=self.config.max_message_bytes,
            max_queue=16,
            compression=None,  # PCM does not compress; deflate would only cost CPU
            ssl=tls,
        )
        log.info("listening on %s:%d (model %s)", self.config.host, self.port, self.model_name)

    @property
    def model_name(self) -> str:
        return self.recognizer.info.name

    async def shutdown(self) -> None:
        """Stops accepting, lets open sessions deliver their finals, then closes everything."""
        if self._server is None or self._stopping:
            return
        self._stopping = True
        self._server.close(close_connections=False)
        for connection in list(self._connections):
            connection.shutdown()
        deadline = self.config.shutdown_timeout_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await self._no_connections.wait()
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        await self.worker.stop()

    async def serve_forever(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Runs until `stop()` returns, then shuts down gracefully."""
        await self.start()
        try:
            await stop()
        finally:
            await self.shutdown()

    # ------------------------------------------------------------------ HTTP

    def health(self) -> dict[str, object]:
        stats = self.worker.stats
        return {
            "status": "stopping" if self._stopping else "ok",
            "model": self.model_name,
            "model_details": self.recognizer.info.details,
            "sessions": len(self._connections),
            "max_sessions": self.config.max_sessions,
            "refused_sessions": self._refused,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "decoder": {
                "batches": stats.batches,
                "requests": stats.requests,
                "busy_s": round(stats.busy_s, 3),
                "largest_batch": stats.largest_batch,
                "pending": self.worker.pending,
                "failures": stats.failures,
            },
        }

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == STREAM_PATH:
            return None  # proceed with the WebSocket handshake
        if path == HEALTH_PATH:
            status = HTTPStatus.SERVICE_UNAVAILABLE if self._stopping else HTTPStatus.OK
            return _respond(status, json.dumps(self.health()).encode(), "application/json")
        if self.config.web_root is not None:
            page = self._static_file(path)
            if page is not None:
                content_type = mimetypes.guess_type(page.name)[0] or "application/octet-stream"
                if page.suffix == ".js":
                    content_type = "text/javascript"
                return _respond(HTTPStatus.OK, page.read_bytes(), content_type)
        return _respond(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _static_file(self, path: str) -> Path | None:
        assert self.config.web_root is not None
        root = self.config.web_root.resolve()
        name = "index.html" if path in ("", "/") else path.lstrip("/")
        candidate = (root / name).resolve()
        if candidate.is_file() and candidate.is_relative_to(root):
            return candidate
        return None

    # ------------------------------------------------------------- WebSocket

    async def _handle(self, websocket: ServerConnection) -> None:
        assert websocket.request is not None
        query = dict(parse_qsl(urlsplit(websocket.request.path).query))
        session_id = uuid.uuid4().hex[:16]
        refusal = self._refusal(websocket, query)
        if refusal is not None:
            self._refused += 1
            await _refuse(websocket, session_id, refusal)
            return
        query.pop("token", None)  # a credential, not a session setting
        session = Session(
            session_id,
            self.recognizer.info,
            limits=self.config.limits,
            config=self.config.session_defaults,
            query=query,
            vad=self.config.vad,
        )
        connection = _Connection(self, websocket, session)
        self._connections.add(connection)
        self._no_connections.clear()
        log.info("session %s opened (%d active)", session_id, len(self._connections))
        try:
            await connection.run()
        except Exception:
            log.exception("session %s failed", session_id)
            with contextlib.suppress(ConnectionClosed):
                await websocket.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._connections.discard(connection)
            if not self._connections:
                self._no_connections.set()
            log.info("session %s closed", session_id)

    def _refusal(self, websocket: ServerConnection, query: dict[str, str]) -> StreamingError | None:
        if self._stopping:
            return CapacityError("the server is shutting down", code="server_shutting_down")
        if self.config.token is not None:
            assert websocket.request is not None
            offered = query.get("token") or _bearer(websocket.request.headers)
            if not offered or not hmac.compare_digest(offered, self.config.token):
                error = StreamingError("missing or wrong token", code="unauthorized", fatal=True)
                error.close_code = CloseCode.UNAUTHORIZED
                return error
        if len(self._connections) >= self.config.max_sessions:
            return CapacityError(
                f"the server is full ({self.config.max_sessions} sessions); try again later"
            )
        return None


def _bearer(headers: Headers) -> str | None:
    value = headers.get("Authorization", "")
    return value[7:] if value.lower().startswith("bearer ") else None


async def _refuse(websocket: ServerConnection, session_id: str, error: StreamingError) -> None:
    event = ev.Error(0, error.code, error.message, True)
    with contextlib.suppress(ConnectionClosed):
        await websocket.send(json.dumps(event.to_wire(session_id, 1)))
        await websocket.close(error.close_code, error.code)


def _respond(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
