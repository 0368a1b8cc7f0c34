"""Events waiting to be sent to one WebSocket client, for every face.

Policy when a client reads slowly: a newer partial or ack of the same segment supersedes a
waiting one (it is dropped, nothing else ever is); once more than `limit` events wait, the
outbox reports `overflow` and the connection is closed with 4004 (the client has stopped
reading). Events are numbered (`seq`) as they leave, so coalescing leaves no gaps.
"""

from __future__ import annotations

import asyncio
from collections import deque

from streaming import events as ev


class Outbox:
    """A bounded, coalescing queue of session events for one connection."""

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
