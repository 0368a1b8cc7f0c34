"""The native face: protocol v1 on `/v1/stream` (docs/protocol.md).

Nothing to translate: binary frames are audio, text frames are the protocol's control messages,
and events go out as their own JSON with `seq` numbers given as they leave.
"""

from __future__ import annotations

import json

from streaming import events as ev
from streaming.server.connection import Face


class NativeFace(Face):
    """Protocol v1 as the session engine speaks it."""

    name = "native"

    def receive_text(self, text: str) -> None:
        self.runner.receive_text(text)

    def receive_bytes(self, data: bytes) -> None:
        self.runner.receive_audio(data)

    def render(self, event: ev.Event, seq: int) -> list[str]:
        wire = event.to_wire(self.session.session_id, seq)
        return [json.dumps(wire, ensure_ascii=False)]
