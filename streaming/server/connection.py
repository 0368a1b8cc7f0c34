"""One session over one WebSocket, for any face: reading, writing, limits, closing.

A face (`streaming.server.native`, `.realtime`, `.deepgram`) only translates: client messages
into session input (`Face.receive_text`, `Face.receive_bytes`), session events into its own
wire messages (`Face.render`). This module owns what every face shares:

- reading: frames go to the face as they arrive; no frame for `idle_timeout_s` ends the input
  (the finals still come) and the connection closes with the face's idle code;
- writing: events wait in a bounded, coalescing `Outbox` (superseded partials and acks are
  dropped; more than `max_outbox` waiting closes the connection with 4004, the client has
  stopped reading); they are rendered and sent in order;
- closing: once the session has closed or failed and everything is sent, with the face's close
  code; a client that goes away abandons its session (no decode keeps running for it);
- shutdown: the input ends on the server's side, the finals are sent, then the close (1001).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect

from streaming import events as ev
from streaming.errors import CloseCode
from streaming.runner import SessionRunner
from streaming.server.outbox import Outbox
from streaming.session import Session
from streaming.worker import ModelWorker

log = logging.getLogger(__name__)
# what sending to a socket that is going away raises (client gone, close already sent)
SEND_FAILURES = (WebSocketDisconnect, RuntimeError, OSError)


@dataclass(frozen=True)
class Reply(ev.Event):
    """A face's own message that no session event produced (e.g. an ack of a client request)."""

    type: ClassVar[str] = "reply"
    payload: dict[str, Any]


class Face(abc.ABC):
    """The protocol of one endpoint, on top of a `Session`."""

    name: str = "face"  # metrics label

    def __init__(self, session: Session) -> None:
        self.session = session
        self.counted_ms = 0  # audio already counted in the metrics
        # set by the connection: hands session input over and sends replies
        self.runner: SessionRunner
        self.reply: Callable[[dict[str, Any]], None]

    @abc.abstractmethod
    def receive_text(self, text: str) -> None:
        """A text frame from the client."""

    @abc.abstractmethod
    def receive_bytes(self, data: bytes) -> None:
        """A binary frame from the client."""

    @abc.abstractmethod
    def render(self, event: ev.Event, seq: int) -> list[str]:
        """The wire messages (JSON text) for one event, in order; may be none."""

    @property
    def finished(self) -> bool:
        """Everything this face will send has been queued: close once it is out."""
        return self.session.finished

    def close_code(self) -> tuple[int, str]:
        """Code and reason of the close once the session is over."""
        fatal = self.session.fatal
        if fatal is not None:
            return fatal.close_code, fatal.code
        reason = self.session.close_reason
        return CLOSE_FOR_REASON.get(reason, CloseCode.NORMAL), reason


# session.closed reasons and the close code each ends with
CLOSE_FOR_REASON = {
    "input_end": CloseCode.NORMAL,
    "server_shutdown": CloseCode.GOING_AWAY,
    "idle_timeout": CloseCode.IDLE_TIMEOUT,
    "max_session": CloseCode.SESSION_LIMIT,
}


class FaceConnection:
    """Drives one face's session over one accepted WebSocket."""

    def __init__(
        self,
        websocket: WebSocket,
        face: Face,
        worker: ModelWorker,
        *,
        max_outbox: int,
        idle_timeout_s: float,
        on_event: Callable[[ev.Event], None] | None = None,
    ) -> None:
        self.websocket = websocket
        self.face = face
        self.idle_timeout_s = idle_timeout_s
        self.outbox = Outbox(max_outbox)
        self._on_event = on_event
        self._done = asyncio.Event()
        face.reply = lambda payload: self.outbox.push(Reply(face.session.received_ms, payload))
        self.runner = SessionRunner(face.session, worker, self._push)
        face.runner = self.runner

    @property
    def session(self) -> Session:
        return self.face.session

    def _push(self, event: ev.Event) -> None:
        if self._on_event is not None:
            self._on_event(event)
        self.outbox.push(event)

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
        """Server shutdown: end the input; the finals are sent, then the socket closes."""
        self.runner.close("server_shutdown")

    async def _read(self) -> None:
        while not self._done.is_set():
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    message = await self.websocket.receive()
            except TimeoutError:
                self.runner.close("idle_timeout")
                await self._done.wait()  # the writer closes the socket after the finals
                return
            except SEND_FAILURES:
                return
            if message["type"] == "websocket.disconnect":
                return  # the client left: nobody is there to send finals to
            if message.get("bytes") is not None:
                self.face.receive_bytes(message["bytes"])
            elif message.get("text") is not None:
                self.face.receive_text(message["text"])

    async def _write(self) -> None:
        websocket = self.websocket
        try:
            while True:
                await self.outbox.wait()
                if self.outbox.overflow:
                    await websocket.close(CloseCode.SLOW_CLIENT, "client does not read events")
                    return
                while (event := self.outbox.take()) is not None:
                    for text in self.face.render(event, self.outbox.seq):
                        await websocket.send_text(text)
                if self.face.finished and not len(self.outbox):
                    await websocket.close(*self.face.close_code())
                    return
        except SEND_FAILURES:
            return
        finally:
            self._done.set()


def client_address(connection: HTTPConnection) -> str:
    """The client's address of a WebSocket or an HTTP request (uvicorn takes it from
    X-Forwarded-For behind a local proxy)."""
    return connection.client.host if connection.client else ""


async def refuse(websocket: WebSocket, message: str, code: int, reason: str) -> None:
    """Accepts the upgrade only to send one refusal message and close with `code`."""
    with contextlib.suppress(*SEND_FAILURES):
        await websocket.accept()
        await websocket.send_text(message)
        await websocket.close(code, reason)
