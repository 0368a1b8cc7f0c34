"""Checks a session's event log against protocol v1's invariants.

Used by the tests and the benchmark on what a real client received, and usable by any client
that wants to verify a server. Each violation comes back as one sentence; an empty list means
the log is valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FINAL_REASONS = {"endpoint", "finalize", "max_length", "end"}
REQUIRED = {
    "session.created": ("model", "sample_rate", "limits"),
    "speech.started": ("segment_id",),
    "transcript.partial": ("segment_id", "committed", "tentative"),
    "transcript.final": ("segment_id", "text", "language", "start_ms", "end_ms", "reason"),
    "speech.stopped": ("segment_id",),
    "audio.ack": ("received_ms", "processed_ms", "lag_ms"),
    "warning": ("code", "message"),
    "error": ("code", "message", "fatal"),
    "session.closed": ("reason", "segments"),
}


def check_events(
    events: Sequence[dict[str, Any]], *, input_ended: bool = False, allow_seq_gaps: bool = False
) -> list[str]:
    """Returns the protocol violations in `events` (everything one session sent, in order).

    Args:
        events: the decoded JSON events.
        input_ended: the client sent `input.end` on a healthy session, so the log must end
            with the finals of all segments and `session.closed`.
        allow_seq_gaps: `seq` must only increase, not by exactly one: for transports that may
            lose events on purpose (MQTT publishes partials and acks at QoS 0).
    """
    problems: list[str] = []
    if not events:
        return ["no events at all"]
    if events[0].get("type") != "session.created":
        problems.append(f"first event is {events[0].get('type')!r}, not session.created")
    session_id = events[0].get("session_id")
    open_segment: int | None = None  # started, not yet final
    closed_segments: set[Any] = set()  # ids as received (a missing one is None)
    committed = ""
    finals = 0
    fatal_at: int | None = None
    for i, event in enumerate(events):
        kind = event.get("type")
        where = f"event {i} ({kind})"
        for key in ("type", "session_id", "seq", "audio_ms"):
            if key not in event:
                problems.append(f"{where} lacks {key!r}")
        seq, previous_seq = event.get("seq", 0), events[i - 1].get("seq", 0) if i else 0
        if allow_seq_gaps and seq <= previous_seq:
            problems.append(f"{where} has seq {seq}, not above {previous_seq}")
        elif not allow_seq_gaps and seq != i + 1:
            problems.append(f"{where} has seq {seq}, expected {i + 1}")
        if event.get("session_id") != session_id:
            problems.append(f"{where} has another session_id")
        for key in REQUIRED.get(str(kind), ()):
            if key not in event:
                problems.append(f"{where} lacks {key!r}")
        if fatal_at is not None and kind not in ("session.closed",):
            problems.append(f"{where} follows a fatal error")
        segment = event.get("segment_id")
        if kind == "speech.started":
            if open_segment is not None:
                problems.append(f"{where}: segment {segment} starts while {open_segment} is open")
            if segment in closed_segments:
                problems.append(f"{where}: segment id {segment} reused")
            open_segment, committed = segment, ""
        elif kind in ("transcript.partial", "speech.stopped", "transcript.final"):
            if segment != open_segment:
                problems.append(f"{where}: segment {segment} is not the open segment")
            if kind == "transcript.partial":
                new = event.get("committed", "")
                if not new.startswith(committed):
                    problems.append(f"{where}: committed {new!r} revises {committed!r}")
                committed = new
            elif kind == "speech.stopped":
                following = events[i + 1] if i + 1 < len(events) else {}
                if following.get("type") != "transcript.final" or (
                    following.get("segment_id") != segment
                ):
                    problems.append(f"{where} is not immediately followed by its final")
            else:
                previous = events[i - 1] if i else {}
                if previous.get("type") != "speech.stopped":
                    problems.append(f"{where} does not follow its speech.stopped")
                problems.extend(_check_final(where, event, committed))
                finals += 1
                closed_segments.add(segment)
                open_segment = None
        elif kind == "audio.ack":
            received, processed = event.get("received_ms", 0), event.get("processed_ms", 0)
            if processed > received or event.get("lag_ms") != received - processed:
                problems.append(f"{where}: inconsistent received/processed/lag")
        elif kind == "error" and event.get("fatal"):
            fatal_at = i
        elif kind == "session.closed":
            if i != len(events) - 1:
                problems.append(f"{where} is not the last event")
            if event.get("segments") != finals:
                problems.append(f"{where} counts {event.get('segments')} segments, sent {finals}")
    if input_ended and fatal_at is None:
        if events[-1].get("type") != "session.closed":
            problems.append("input ended but the log does not end with session.closed")
        if open_segment is not None:
            problems.append(f"segment {open_segment} never got its final")
    return problems


def _check_final(where: str, event: dict[str, Any], committed: str) -> list[str]:
    problems = []
    text = event.get("text", "")
    if not text.startswith(committed):
        problems.append(f"{where}: text {text!r} does not start with committed {committed!r}")
    if event.get("reason") not in FINAL_REASONS:
        problems.append(f"{where}: reason {event.get('reason')!r} is not one of {FINAL_REASONS}")
    start, end = event.get("start_ms", 0), event.get("end_ms", 0)
    if start > end:
        problems.append(f"{where}: start_ms {start} after end_ms {end}")
    for word in event.get("words") or ():
        if not start <= word["start_ms"] <= word["end_ms"] <= end:
            problems.append(f"{where}: word {word} lies outside its segment")
        if not 0 <= word.get("probability", 0) <= 1:
            problems.append(f"{where}: word {word} has a probability outside 0..1")
    return problems
