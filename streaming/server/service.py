"""The service: one HTTP server on one port for every face, around one recognizer.

| path | face |
|---|---|
| `WS /v1/stream` | native protocol v1 (`native.py`) |
| `WS /v1/realtime?intent=transcription` | OpenAI Realtime transcription sessions (`realtime.py`) |
| `WS /v1/listen` | Deepgram live (`deepgram.py`) |
| `POST /v1/audio/transcriptions`, `/translations`, `GET /v1/models` | OpenAI audio API |
| `GET /health`, `GET /metrics` | status JSON, Prometheus metrics (`metrics.py`) |
| `POST /v1/auth/grant` | short-lived grants for browsers, Deepgram's shape (`auth.py`) |
| `GET /` | the browser captioning page (client/web) |

Why Starlette on uvicorn: the `websockets` server this service began on cannot take a POST with
a body (checked with 15.0.1 and 17.4: the connection is dropped), and the OpenAI SDK posts
multipart files. uvicorn keeps `websockets` as the WebSocket protocol implementation (its sans-I/O
one: flow control, size limits, pings); Starlette routes, parses multipart bodies (python-multipart)
and streams server-sent events. aiohttp would do too, with its own WebSocket implementation.

Bounds and their policies:
- sessions: at most `max_sessions` over all faces, and `max_sessions_per_client` from one client
  address; one more WebSocket is accepted only to be told why (`server_full` or
  `client_limit`, close 1013); an HTTP request gets 429 with `Retry-After`;
- incoming frames: `max_message_bytes` (larger messages close the connection with 1009) and a
  queue of 16 frames per connection (reading pauses, TCP pushes back on the client);
- outgoing events: per connection (`streaming.server.connection`);
- uploads: `max_upload_bytes` (413 above it);
- shutdown: new sessions are refused, open ones end their input and get their finals (1001),
  for at most `shutdown_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import mimetypes
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import client
from streaming import events as ev
from streaming.config import SessionConfig
from streaming.errors import CapacityError, CloseCode, StreamingError
from streaming.recognizer import Recognizer
from streaming.server.auth import (
    DEFAULT_TTL_S,
    ConnectionRate,
    GrantError,
    Grants,
    SingleUseTableFull,
    origin_allowed,
    token_matches,
)
from streaming.server.connection import Face, FaceConnection, client_address, refuse
from streaming.server.metrics import CONTENT_TYPE, ServiceMetrics
from streaming.server.native import NativeFace
from streaming.session import Limits, Session
from streaming.vad import VadConfig
from streaming.worker import ModelWorker

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/stream"
HEALTH_PATH = "/health"
# the browser page, shipped as package data of `client`
WEB_ROOT = Path(client.__file__).resolve().parent / "web"


@dataclass(frozen=True)
class ServerConfig:
    """Operator settings of the service."""

    host: str = "127.0.0.1"
    port: int = 8765
    # concurrent sessions over all faces; one more is refused (server_full / 1013 / 429)
    max_sessions: int = 8
    # largest WebSocket message, bytes (1 s of 48 kHz stereo float32 is 384 000)
    max_message_bytes: int = 1 << 20
    # largest uploaded file of the HTTP transcription API, bytes (OpenAI's limit)
    max_upload_bytes: int = 25 << 20
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
    # when set, clients must send it or a grant signed with it (?token=, "Authorization: Bearer
    # ..." or "Token ..."); see `streaming.server.auth`
    token: str | None = None
    # browser origins (scheme://host[:port]) allowed to open WebSockets; empty allows any
    allowed_origins: tuple[str, ...] = ()
    # sessions one client address may hold at once (behind a proxy on 127.0.0.1, uvicorn takes
    # the address from X-Forwarded-For); None: only max_sessions applies
    max_sessions_per_client: int | None = None
    # new sessions one client address may open per minute (bursts of as many); None: no limit
    connects_per_minute: float | None = None
    # directory served at / (the browser page); None disables it
    web_root: Path | None = WEB_ROOT
    limits: Limits = field(default_factory=Limits)
    session_defaults: SessionConfig = field(default_factory=SessionConfig)
    vad: VadConfig = field(default_factory=VadConfig)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {self.max_sessions!r}")
        if self.connects_per_minute is not None and self.connects_per_minute <= 0:
            raise ValueError(
                f"connects_per_minute must be positive, got {self.connects_per_minute!r}"
            )
        if self.max_sessions_per_client is not None and self.max_sessions_per_client < 1:
            raise ValueError(
                f"max_sessions_per_client must be at least 1, got {self.max_sessions_per_client!r}"
            )
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile must be given together")


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process owner (CLI, tests) handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class StreamingServer:
    """The service around one recognizer."""

    def __init__(self, recognizer: Recognizer, config: ServerConfig | None = None):
        self.recognizer = recognizer
        self.config = config or ServerConfig()
        self.metrics = ServiceMetrics()
        self.worker = ModelWorker(
            recognizer, max_batch=self.config.max_batch, observer=self._observe_batch
        )
        self.metrics.queue_depth.set_function(lambda: self.worker.pending)
        self._connections: set[FaceConnection] = set()
        self._per_client: dict[str, int] = {}  # open sessions by client address, all faces
        self.grants = Grants(self.config.token) if self.config.token is not None else None
        rate = self.config.connects_per_minute
        self.connection_rate = (
            ConnectionRate(rate, burst=max(1, math.ceil(rate))) if rate is not None else None
        )
        self._http_sessions = 0  # HTTP transcriptions running (they count as sessions)
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self._uvicorn: _QuietServer | None = None
        self._serving: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._started = time.monotonic()
        self.created = int(time.time())
        self._stopping = False
        self._refused = 0
        self.app = Starlette(routes=self._routes())

    # ------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        assert self._socket is not None, "server not started"
        return int(self._socket.getsockname()[1])

    @property
    def model_name(self) -> str:
        return self.recognizer.info.name

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def start(self) -> None:
        """Starts listening (port 0 picks a free port; see `port`)."""
        self.worker.start()
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.port))
        sock.set_inheritable(True)
        self._socket = sock
        config = uvicorn.Config(
            self.app,
            ws="websockets-sansio",
            ws_max_size=self.config.max_message_bytes,
            ws_max_queue=16,
            ws_per_message_deflate=False,  # PCM does not compress; deflate would only cost CPU
            lifespan="off",
            log_config=None,
            access_log=False,
            ssl_certfile=str(self.config.certfile) if self.config.certfile else None,
            ssl_keyfile=str(self.config.keyfile) if self.config.keyfile else None,
            ssl_cert_reqs=ssl.CERT_NONE,
            timeout_graceful_shutdown=1,
        )
        self._uvicorn = _QuietServer(config)
        self._serving = asyncio.create_task(self._uvicorn.serve(sockets=[sock]), name="http")
        while not self._uvicorn.started:
            if self._serving.done():
                self._serving.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("listening on %s:%d (model %s)", self.config.host, self.port, self.model_name)

    async def shutdown(self) -> None:
        """Stops taking sessions, lets open ones deliver their finals, then closes everything."""
        if self._uvicorn is None or self._stopping:
            return
        self._stopping = True
        for connection in list(self._connections):
            connection.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.shutdown_timeout_s):
                await self._no_sessions.wait()
        self._uvicorn.should_exit = True
        if self._serving is not None:
            await self._serving
        if self._socket is not None:
            self._socket.close()
        await self.worker.stop()

    async def serve_forever(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Runs until `stop()` returns, then shuts down gracefully."""
        await self.start()
        try:
            await stop()
        finally:
            await self.shutdown()

    # ---------------------------------------------------------------- routes

    def _routes(self) -> list[Any]:
        from streaming.server import deepgram, openai_http, realtime

        return [
            WebSocketRoute(STREAM_PATH, self._native),
            WebSocketRoute("/v1/realtime", lambda ws: realtime.handle(self, ws)),
            WebSocketRoute("/v1/listen", lambda ws: deepgram.handle(self, ws)),
            *openai_http.routes(self),
            Route(HEALTH_PATH, self._health),
            Route(GRANT_PATH, self._grant, methods=["POST"]),
            Route("/metrics", self._metrics),
            Route("/{path:path}", self._static),
        ]

    def health(self) -> dict[str, object]:
        stats = self.worker.stats
        return {
            "status": "stopping" if self._stopping else "ok",
            "model": self.model_name,
            "model_details": self.recognizer.info.details,
            "sessions": self.active_sessions,
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
                "promoted": stats.promoted,
            },
        }

    async def _health(self, request: Request) -> Response:
        status = 503 if self._stopping else 200
        return JSONResponse(self.health(), status_code=status, headers=NO_STORE)

    async def _grant(self, request: Request) -> Response:
        """Deepgram's `POST /v1/auth/grant`: a short-lived grant, for the server token only."""
        offered = offered_token(request.headers) or ""
        if self.config.token is None or self.grants is None:
            return _grant_error(404, "no_token", "this server takes no token: connect without one")
        if not token_matches(offered, self.config.token):  # a grant never mints grants
            return _grant_error(401, "unauthorized", "the server token is required")
        try:
            options = json.loads(await request.body() or b"{}")
        except ValueError:
            return _grant_error(400, "invalid_json", "the body must be a JSON object")
        if not isinstance(options, dict):
            return _grant_error(400, "invalid_json", "the body must be a JSON object")
        ttl = options.get("ttl_seconds")
        if ttl is None:
            ttl = DEFAULT_TTL_S
        if isinstance(ttl, float) and ttl.is_integer():
            ttl = int(ttl)  # Deepgram's SDK sends a float
        single_use = options.get("single_use", False)
        if not isinstance(single_use, bool):
            return _grant_error(400, "invalid_request", "single_use must be true or false")
        try:
            grant = self.grants.issue(ttl, single_use=single_use)
        except GrantError as exc:
            status = 429 if isinstance(exc, SingleUseTableFull) else 400
            return _grant_error(status, "invalid_request", str(exc))
        body = {"access_token": grant, "expires_in": ttl}
        return JSONResponse(body, headers=NO_STORE)

    async def _metrics(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE, headers=NO_STORE)

    async def _static(self, request: Request) -> Response:
        if self.config.web_root is None:
            return _not_found()
        page = self._static_file(request.url.path)
        if page is None:
            return _not_found()
        content_type = mimetypes.guess_type(page.name)[0] or "application/octet-stream"
        if page.suffix == ".js":
            content_type = "text/javascript"
        return Response(page.read_bytes(), media_type=content_type, headers=NO_STORE)

    def _static_file(self, path: str) -> Path | None:
        assert self.config.web_root is not None
        root = self.config.web_root.resolve()
        name = "index.html" if path in ("", "/") else path.lstrip("/")
        candidate = (root / name).resolve()
        if candidate.is_file() and candidate.is_relative_to(root):
            return candidate
        return None

    # ---------------------------------------------------------- sessions

    @property
    def active_sessions(self) -> int:
        return len(self._connections) + self._http_sessions

    def refusal(
        self, headers: Mapping[str, str], query: Mapping[str, str], client: str = ""
    ) -> StreamingError | None:
        """Why a new WebSocket session cannot start now, or None.

        Checked in this order: shutting down, a browser origin not allowed, the server or this
        client full, this client's connection rate, then the credentials last, so that a
        single-use grant is spent only by a session that really opens.
        """
        if self._stopping:
            return CapacityError("the server is shutting down", code="server_shutting_down")
        if not origin_allowed(headers, self.config.allowed_origins):
            error = StreamingError(
                f"origin {headers.get('origin')!r} may not connect (--allowed-origin)",
                code="origin_not_allowed", fatal=True,
            )  # fmt: skip
            error.close_code = CloseCode.FORBIDDEN_ORIGIN
            return error
        refused = self.admission_refusal(client)
        if refused is not None:
            return refused
        if not self.authorized(headers, query):
            error = StreamingError("missing or wrong token", code="unauthorized", fatal=True)
            error.close_code = CloseCode.UNAUTHORIZED
            return error
        return None

    def admission_refusal(self, client: str) -> CapacityError | None:
        """Why `client` cannot start one more session of any face now (HTTP ones included):
        the server full, this client's sessions, or this client's rate of new sessions."""
        if self.active_sessions >= self.config.max_sessions:
            return CapacityError(
                f"the server is full ({self.config.max_sessions} sessions); try again later"
            )
        per_client = self.config.max_sessions_per_client
        if per_client is not None and self._per_client.get(client, 0) >= per_client:
            return CapacityError(
                f"this client already holds {per_client} sessions; close one first",
                code="client_limit",
            )
        if self.connection_rate is not None and not self.connection_rate.allow(client):
            return CapacityError(
                f"this client opens sessions too fast ({self.config.connects_per_minute:g} per "
                f"minute); try again in {self.connection_rate.retry_after_s(client)} s",
                code="rate_limited",
            )
        return None

    def retry_after_s(self, client: str) -> int:
        """When `client` may try again after a refusal (its rate bucket's refill, or 1 s)."""
        if self.connection_rate is None:
            return 1
        return max(1, self.connection_rate.retry_after_s(client))

    def authorized(self, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        """Whether the request carries the server token or a valid grant (always, if no token)."""
        if self.config.token is None or self.grants is None:
            return True
        offered = query.get("token") or offered_token(headers) or ""
        return token_matches(offered, self.config.token) or self.grants.accept(offered)

    def new_session(
        self, query: Mapping[str, str] | None = None, config: SessionConfig | None = None
    ) -> Session:
        """A session of this server's settings (query parameters as in session.start)."""
        return Session(
            uuid.uuid4().hex[:16],
            self.recognizer.info,
            limits=self.config.limits,
            config=config or self.config.session_defaults,
            query=dict(query or {}),
            vad=self.config.vad,
        )

    def count_refusal(self, face: str, error: StreamingError) -> None:
        self._refused += 1
        self.metrics.refused.labels(face, error.code).inc()

    async def run_face(self, websocket: WebSocket, face: Face) -> None:
        """Runs one accepted WebSocket face session to its end, counted against the limits."""
        client = client_address(websocket)
        self._per_client[client] = self._per_client.get(client, 0) + 1
        connection = FaceConnection(
            websocket, face, self.worker,
            max_outbox=self.config.max_outbox, idle_timeout_s=self.config.idle_timeout_s,
            on_event=lambda event: self._observe(face, event),
        )  # fmt: skip
        self._connections.add(connection)
        self._no_sessions.clear()
        self.metrics.sessions.labels(face.name).inc()
        self.metrics.sessions_active.labels(face.name).inc()
        session_id = face.session.session_id
        log.info("%s session %s opened from %s (%d active)", face.name, session_id, client,
                 self.active_sessions, extra={"session": session_id})  # fmt: skip
        try:
            await connection.run()
        except Exception:
            log.exception("session %s failed", session_id, extra={"session": session_id})
            with contextlib.suppress(Exception):
                await websocket.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]  # bounded by the open sessions
            self._connections.discard(connection)
            self.metrics.sessions_active.labels(face.name).dec()
            self._session_ended()
            log.info("session %s closed", session_id, extra={"session": session_id})

    @contextlib.asynccontextmanager
    async def http_session(self, client: str) -> Any:
        """Counts an HTTP transcription as a session of `client` while it runs."""
        self._http_sessions += 1
        self._per_client[client] = self._per_client.get(client, 0) + 1
        self._no_sessions.clear()
        self.metrics.sessions.labels("http").inc()
        self.metrics.sessions_active.labels("http").inc()
        try:
            yield
        finally:
            self._http_sessions -= 1
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]
            self.metrics.sessions_active.labels("http").dec()
            self._session_ended()

    def _session_ended(self) -> None:
        if not self.active_sessions:
            self._no_sessions.set()

    def _observe(self, face: Face, event: ev.Event) -> None:
        self.metrics.observe_event(face.name, event)
        if isinstance(event, ev.AudioAck | ev.SessionClosed):
            received = face.session.received_ms
            self.metrics.audio.labels(face.name).inc((received - face.counted_ms) / 1000)
            face.counted_ms = received

    def _observe_batch(self, kind: str, size: int, seconds: float) -> None:
        self.metrics.decode.labels(kind).observe(seconds)
        if kind != "job":
            self.metrics.batch.observe(size)

    async def _native(self, websocket: WebSocket) -> None:
        query = dict(websocket.query_params)
        refusal = self.refusal(websocket.headers, query, client_address(websocket))
        if refusal is not None:
            self.count_refusal("native", refusal)
            event = ev.Error(0, refusal.code, refusal.message, True)
            wire = json.dumps(event.to_wire(uuid.uuid4().hex[:16], 1))
            await refuse(websocket, wire, refusal.close_code, refusal.code)
            return
        query.pop("token", None)  # a credential, not a session setting
        await websocket.accept()
        await self.run_face(websocket, NativeFace(self.new_session(query)))


NO_STORE = {"Cache-Control": "no-store"}
GRANT_PATH = "/v1/auth/grant"


def _grant_error(status: int, code: str, message: str) -> Response:
    """An error in Deepgram's shape (`err_code`, `err_msg`)."""
    return JSONResponse({"err_code": code, "err_msg": message}, status_code=status,
                        headers=NO_STORE)  # fmt: skip


def offered_token(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer ...` (OpenAI) or `Token ...` (Deepgram) header."""
    value = headers.get("authorization", "")
    for scheme in ("bearer ", "token "):
        if value.lower().startswith(scheme):
            return value[len(scheme) :].strip()
    return None


def _not_found() -> Response:
    return Response(b"not found\n", status_code=404, media_type="text/plain", headers=NO_STORE)
