"""Server-to-client events of protocol v1, as value types.

The session engine produces these; a transport (WebSocket, MQTT) numbers them with `seq` when it
actually sends them and serialises them with `to_wire`. Numbering at send time lets a transport
coalesce superseded partials and acks for a slow reader without leaving gaps in `seq`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from streaming.recognizer import Word


def wire_words(words: Iterable[Word], offset_ms: int = 0) -> list[dict[str, Any]]:
    """A final's `words` as the protocol sends them: each spoken word with its times shifted by
    `offset_ms`, and its probability where the model gave one (blank words are left out)."""
    return [
        {
            "word": w.text.strip(),
            "start_ms": offset_ms + w.start_ms,
            "end_ms": offset_ms + w.end_ms,
            **({} if w.probability is None else {"probability": w.probability}),
        }
        for w in words
        if w.text.strip()
    ]


@dataclass(frozen=True)
class Event:
    """Base of all events. `audio_ms` is the stream position the event refers to."""

    type: ClassVar[str] = "event"
    # superseded by a newer event of the same kind and segment (safe to drop when lagging)
    coalescable: ClassVar[bool] = False

    audio_ms: int

    def to_wire(self, session_id: str, seq: int, **extra: Any) -> dict[str, Any]:
        """The JSON object sent to the client (optional fields that are None are left out)."""
        body: dict[str, Any] = {"type": self.type, "session_id": session_id, "seq": seq}
        body.update(extra)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                body[f.name] = value
        return body


@dataclass(frozen=True)
class SessionCreated(Event):
    type: ClassVar[str] = "session.created"
    model: str
    sample_rate: int
    limits: dict[str, Any]
    config: dict[str, Any]
    protocol: str = "1"


@dataclass(frozen=True)
class SessionUpdated(Event):
    """Extension: the effective settings after session.start or session.update."""

    type: ClassVar[str] = "session.updated"
    config: dict[str, Any]


@dataclass(frozen=True)
class SpeechStarted(Event):
    type: ClassVar[str] = "speech.started"
    segment_id: int


@dataclass(frozen=True)
class TranscriptPartial(Event):
    type: ClassVar[str] = "transcript.partial"
    coalescable: ClassVar[bool] = True
    segment_id: int
    committed: str
    tentative: str


@dataclass(frozen=True)
class SpeechStopped(Event):
    type: ClassVar[str] = "speech.stopped"
    segment_id: int


@dataclass(frozen=True)
class TranscriptFinal(Event):
    type: ClassVar[str] = "transcript.final"
    segment_id: int
    text: str
    language: str | None
    start_ms: int
    end_ms: int
    reason: str
    words: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class AudioAck(Event):
    type: ClassVar[str] = "audio.ack"
    coalescable: ClassVar[bool] = True
    received_ms: int
    processed_ms: int
    lag_ms: int


@dataclass(frozen=True)
class Warning(Event):  # shadows the builtin on purpose: it is the protocol's name
    type: ClassVar[str] = "warning"
    code: str
    message: str


@dataclass(frozen=True)
class Error(Event):
    type: ClassVar[str] = "error"
    code: str
    message: str
    fatal: bool


@dataclass(frozen=True)
class SessionClosed(Event):
    type: ClassVar[str] = "session.closed"
    reason: str
    segments: int


def supersedes(newer: Event, older: Event) -> bool:
    """Whether `newer` makes `older` pointless to deliver (same kind, same segment)."""
    if not (newer.coalescable and type(newer) is type(older)):
        return False
    return getattr(newer, "segment_id", None) == getattr(older, "segment_id", None)
