"""Runs one `Session` against the shared `ModelWorker`, for any transport.

A transport (WebSocket, MQTT) hands the runner what its client sent; the runner feeds the
session, starts the decode the session asks for (at most one at a time per session), feeds the
answer back, and passes every event the session emits to the transport's `sink`, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from streaming.errors import ModelError
from streaming.events import Event
from streaming.recognizer import DecodeRequest
from streaming.session import Session
from streaming.worker import ModelWorker


class SessionRunner:
    """Connects a session to the model worker and an event sink."""

    def __init__(self, session: Session, worker: ModelWorker, sink: Callable[[Event], None]):
        self.session = session
        self.worker = worker
        self.sink = sink
        self._decoding: asyncio.Task[None] | None = None
        self._request: DecodeRequest | None = None  # the request `_decoding` waits on
        self._finished = asyncio.Event()  # the session is over and no decode is running
        self.pump()

    def receive_audio(self, data: bytes) -> None:
        self.session.receive_audio(data)
        self.pump()

    def receive_text(self, text: str) -> None:
        self.session.receive_text(text)
        self.pump()

    def close(self, reason: str) -> None:
        """Ends the input on the server's side (shutdown, idle, call timeout); finals follow."""
        self.session.close(reason)
        self.pump()

    def pump(self) -> None:
        """Delivers pending events and starts the next decode if the session needs one."""
        for event in self.session.events_to_send():
            self.sink(event)
        limits = self.session.limits
        step_ms = self.worker.partial_step_ms(limits.step_ms, limits.early_step_ms)
        request = self.session.next_request(step_ms=step_ms)
        if request is not None:
            if self._decoding is not None:
                # superseded (a partial of a segment that has ended): its model call may still
                # run, but its answer is dropped and the final queues at once
                self._decoding.cancel()
            self._request = request
            self._decoding = asyncio.create_task(
                self._decode(request), name=f"{self.session.session_id}:decode"
            )
        elif self._request is not None and not self._request.final and self.session.final_in_flight:
            # the partial still waiting is the final now: it must not queue behind partials
            self.worker.promote(self._request)
        if self.session.finished and self._decoding is None:
            self._finished.set()

    @property
    def finished(self) -> bool:
        """The session has closed or failed and no decode is running for it."""
        return self._finished.is_set()

    async def wait_finished(self) -> None:
        """Waits until the session has closed or failed and no decode is running.

        Only meaningful once the input has ended (input.end, `close`): before that a session
        also waits for more audio.
        """
        await self._finished.wait()

    def abandon(self) -> None:
        """The client is gone: stop decoding for it. The runner then counts as finished."""
        if self._decoding is not None:
            self._decoding.cancel()
            self._decoding = self._request = None
        self._finished.set()

    async def _decode(self, request: DecodeRequest) -> None:
        try:
            hypothesis = await self.worker.decode(request)
        except ModelError as exc:
            self.session.fail(exc)
        else:
            self.session.complete(hypothesis)
        self._decoding = self._request = None  # this task is ending: pump may start the next decode
        self.pump()
