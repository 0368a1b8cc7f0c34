"""The protocol checker catches each kind of violation (so tests relying on it can fail)."""

from __future__ import annotations

import copy

import pytest

from streaming.invariants import check_events


def good_log():
    events = [
        {"type": "session.created", "model": "m", "sample_rate": 16000, "limits": {}},
        {"type": "speech.started", "segment_id": 0},
        {"type": "transcript.partial", "segment_id": 0, "committed": "", "tentative": "go"},
        {"type": "transcript.partial", "segment_id": 0, "committed": "go", "tentative": " on"},
        {"type": "audio.ack", "received_ms": 900, "processed_ms": 800, "lag_ms": 100},
        {"type": "speech.stopped", "segment_id": 0},
        {"type": "transcript.final", "segment_id": 0, "text": "go on", "language": "en",
         "start_ms": 0, "end_ms": 900, "reason": "endpoint"},
        {"type": "session.closed", "reason": "input_end", "segments": 1},
    ]  # fmt: skip
    for seq, event in enumerate(events, 1):
        event.update(session_id="s", seq=seq, audio_ms=0)
    return events


def test_a_valid_log_passes():
    """The reference log has no violations."""
    assert check_events(good_log(), input_ended=True) == []


def _break(mutate):
    events = copy.deepcopy(good_log())
    mutate(events)
    return check_events(events, input_ended=True)


@pytest.mark.parametrize(
    ("name", "mutate", "needle"),
    [
        ("seq gap", lambda e: e[3].update(seq=9), "seq"),
        ("revised commit", lambda e: e[2].update(committed="no"), "revises"),
        ("final drops committed", lambda e: e[6].update(text="no"), "does not start with"),
        ("bad reason", lambda e: e[6].update(reason="timeout"), "reason"),
        ("missing final", lambda e: e.__delitem__(6), "followed by its final"),
        ("closed not last", lambda e: e.append(dict(e[4], seq=9)), "not the last"),
        ("lag mismatch", lambda e: e[4].update(lag_ms=5), "lag"),
        ("wrong count", lambda e: e[7].update(segments=2), "counts"),
        ("foreign session", lambda e: e[2].update(session_id="x"), "session_id"),
        (
            "word outside",
            lambda e: e[6].update(words=[{"word": "go", "start_ms": 0, "end_ms": 1200}]),
            "outside",
        ),
        (
            "probability over 1",
            lambda e: e[6].update(
                words=[{"word": "go", "start_ms": 0, "end_ms": 500, "probability": 1.5}]
            ),
            "probability",
        ),
    ],
)
def test_each_violation_is_reported(name, mutate, needle):
    """Breaking one invariant produces a message naming it."""
    problems = _break(mutate)
    assert any(needle in p for p in problems), (name, problems)


def test_an_unfinished_segment_fails_when_input_ended():
    """A log that ends without the open segment's final breaks the input.end guarantee."""
    events = good_log()[:4]
    assert any("never got its final" in p for p in check_events(events, input_ended=True))


def test_seq_gaps_are_allowed_only_when_asked_and_order_still_counts():
    """With allow_seq_gaps a skipped seq passes, but a repeated or falling seq does not."""
    events = good_log()
    del events[4]  # a lost audio.ack (QoS 0 over MQTT)
    assert any("seq" in p for p in check_events(events, input_ended=True))
    assert check_events(events, input_ended=True, allow_seq_gaps=True) == []
    events[3]["seq"] = 2
    assert any("not above" in p for p in check_events(events, allow_seq_gaps=True))
