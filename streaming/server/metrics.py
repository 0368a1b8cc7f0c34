"""Prometheus metrics of one server (`GET /metrics`), in a registry of its own.

A registry per server (not the library's global one) keeps several servers in one process, as
the tests run them, from mixing their figures. Every name starts with `asr_`:

| metric | kind | labels | meaning |
|---|---|---|---|
| `asr_sessions_active` | gauge | face | open sessions (native, realtime, deepgram, http) |
| `asr_sessions_total` | counter | face | sessions opened |
| `asr_sessions_refused_total` | counter | face, code | sessions refused (server_full, ...) |
| `asr_audio_seconds_total` | counter | face | audio received |
| `asr_finals_total` | counter | face, reason | finals sent (endpoint, finalize, max_length, end) |
| `asr_errors_total` | counter | face, code | `error` events sent |
| `asr_ack_lag_seconds` | histogram | face | lag behind the audio received (audio.ack) |
| `asr_decode_seconds` | histogram | kind | model time per batch (partial, final, offline) |
| `asr_batch_size` | histogram | | requests per model call |
| `asr_queue_depth` | gauge | | decode requests waiting for the model |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streaming import events as ev

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
LAG_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 90.0)


class ServiceMetrics:
    """The server's counters; `observe_event` feeds them from what sessions send."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("asr_sessions_active", "open sessions", ["face"], registry=r)
        self.sessions = Counter("asr_sessions", "sessions opened", ["face"], registry=r)
        self.refused = Counter(
            "asr_sessions_refused", "sessions refused", ["face", "code"], registry=r
        )
        self.audio = Counter("asr_audio_seconds", "audio received, s", ["face"], registry=r)
        self.finals = Counter("asr_finals", "finals sent", ["face", "reason"], registry=r)
        self.errors = Counter("asr_errors", "error events sent", ["face", "code"], registry=r)
        self.lag = Histogram(
            "asr_ack_lag_seconds", "lag behind the audio received", ["face"],
            buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.decode = Histogram(
            "asr_decode_seconds", "model time per batch", ["kind"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch = Histogram(
            "asr_batch_size", "requests per model call", buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("asr_queue_depth", "decode requests waiting", registry=r)

    def observe_event(self, face: str, event: ev.Event) -> None:
        """Counts what a session emits (called once per event, before it is sent)."""
        if isinstance(event, ev.TranscriptFinal):
            self.finals.labels(face, event.reason).inc()
        elif isinstance(event, ev.Error):
            self.errors.labels(face, event.code).inc()
        elif isinstance(event, ev.AudioAck):
            self.lag.labels(face).observe(event.lag_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
