"""The calls one MQTT worker transcribes: one `Session` per (call, channel), fed from packets.

This module knows nothing about MQTT. The bridge (`streaming.mqtt.bridge`) hands it the control
messages and audio packets of the calls this worker owns; `CallManager` keeps one `SessionRunner`
per channel, puts packets in order (`streaming.mqtt.audio.Sequencer`), fills missing audio with
silence so stream positions stay aligned with the call, turns bad input into `warning` events,
ends calls on `input.end` or after an idle timeout, and hands every event to the bridge's `emit`
in order, tagged with the `EventStream` (session id and channel) it belongs to.

Event streams: each channel session numbers its events 1, 2, 3, ... (`seq`, assigned by the
bridge when it publishes). Warnings that belong to no live session (garbage on the control
topic, audio for a call that has ended, a call refused because the worker is full) go to the
call's *bridge stream*, whose `session_id` is `bridge:{worker_id}` and whose `channel` is the
channel concerned, or None.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streaming import events as ev
from streaming.config import SessionConfig, parse_session_start, parse_session_update
from streaming.errors import AudioFormatError, ConfigError
from streaming.mqtt.audio import (
    AudioPacket,
    Duplicate,
    Gap,
    Late,
    Note,
    Reordered,
    Sequencer,
    silence,
)
from streaming.recognizer import ModelInfo
from streaming.runner import SessionRunner
from streaming.session import Limits, Session
from streaming.vad import VadConfig
from streaming.worker import ModelWorker

log = logging.getLogger(__name__)

CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# bridge streams of calls this worker does not hold (refused, ended), and once-per-call warnings
MAX_BRIDGE_STREAMS = 4096


@dataclass(frozen=True)
class CallKey:
    """A call: `asr/{tenant}/{call_id}/...`."""

    tenant: str
    call_id: str

    def __str__(self) -> str:
        return f"{self.tenant}/{self.call_id}"


@dataclass(frozen=True)
class CallsConfig:
    """Operator settings for the calls of one worker."""

    # concurrent calls this worker claims; a new call beyond it is refused (warning server_full)
    max_calls: int = 16
    # channels (sessions) per call; more are refused with warning too_many_channels
    max_channels: int = 4
    # a call with no message at all for this long ends (finals first), seconds
    idle_timeout_s: float = 30.0
    # packets held while waiting for a missing one, and for how long at most, seconds
    reorder_window: int = 16
    reorder_hold_s: float = 1.0
    # longest stretch of missing audio replaced by silence, ms (more is reported, not filled)
    max_gap_fill_ms: int = 30_000
    # reordered and duplicate packets are reported at most this often per channel, seconds
    report_interval_s: float = 5.0
    limits: Limits = field(default_factory=Limits)
    session_defaults: SessionConfig = field(default_factory=SessionConfig)
    vad: VadConfig = field(default_factory=VadConfig)

    def __post_init__(self) -> None:
        if self.max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, got {self.max_calls!r}")
        if self.max_channels < 1:
            raise ValueError(f"max_channels must be at least 1, got {self.max_channels!r}")
        if self.idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive, got {self.idle_timeout_s!r}")


class EventStream:
    """One gapless sequence of events on a call's events topic."""

    def __init__(self, session_id: str, channel: str | None):
        self.session_id = session_id
        self.channel = channel
        self._seq = 0

    def next_seq(self) -> int:
        """The seq of the next event published on this stream."""
        self._seq += 1
        return self._seq


@dataclass(frozen=True)
class Outgoing:
    """One event to publish on a call's events topic."""

    key: CallKey
    stream: EventStream
    event: ev.Event
    # extra wire fields of this event (besides type, session_id, seq and channel)
    extra: dict[str, Any] = field(default_factory=dict)


class _Channel:
    """One channel of a call: its sequencer and its current session."""

    def __init__(self, name: str, config: CallsConfig):
        self.name = name
        self.sequencer = Sequencer(config.reorder_window, config.reorder_hold_s)
        self.runner: SessionRunner | None = None
        self.stream: EventStream | None = None
        self.expected = 0  # position the next packet should start at (channel samples)
        self.pending_gap: Gap | None = None
        self.reordered = 0  # not yet reported
        self.duplicates = 0
        self.reported_at = float("-inf")

    @property
    def live(self) -> bool:
        """Whether a session is open: not closed or failed (a failed one may still be decoding)."""
        return self.runner is not None and not self.runner.session.finished


class _Call:
    def __init__(self, key: CallKey, config: SessionConfig, bridge: EventStream, now: float):
        self.key = key
        self.config = config
        self.bridge = bridge
        self.channels: dict[str, _Channel] = {}
        self.last_activity = now
        self.end_at: float | None = None  # input.end received; applied at this time
        self.closing_reason: str | None = None  # the input has ended for good


class CallManager:
    """The calls of one worker and their sessions. Single-threaded: call it from the event loop."""

    def __init__(
        self,
        worker: ModelWorker,
        model: ModelInfo,
        config: CallsConfig,
        emit: Callable[[Outgoing], None],
        worker_id: str,
    ):
        """Creates an empty manager.

        Args:
            worker: the shared model worker that decodes for every session.
            model: what the recognizer can do.
            config: limits and timeouts.
            emit: takes every event to publish, in order.
            worker_id: stamped on session.created and on bridge streams.
        """
        self.worker = worker
        self.model = model
        self.config = config
        self.emit = emit
        self.worker_id = worker_id
        # seconds input.end waits for audio still in flight through another worker (set by the
        # bridge: zero while no other worker is online)
        self.end_grace_s = 0.0
        self.opened = 0  # calls opened since start
        self._calls: dict[CallKey, _Call] = {}
        self._streams: collections.OrderedDict[CallKey, EventStream] = collections.OrderedDict()
        # (call, code) of the warnings given once per call, whether the call is still closing
        # here or already gone (the bridge warns about those): one memory, so late audio that
        # arrives across the call's removal is warned about once, not once on each side
        self._warned: collections.OrderedDict[tuple[CallKey, str], None] = collections.OrderedDict()
        self._empty = asyncio.Event()
        self._empty.set()

    # ------------------------------------------------------------------ calls

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, key: object) -> bool:
        return key in self._calls

    @property
    def full(self) -> bool:
        """Whether a new call would exceed `max_calls`."""
        return len(self._calls) >= self.config.max_calls

    def open(self, key: CallKey, now: float) -> None:
        """Starts holding a call (its sessions start on its first audio)."""
        if key in self._calls:
            return
        self._calls[key] = _Call(key, self.config.session_defaults, self.bridge_stream(key), now)
        self._warned.pop((key, "call_ended"), None)  # a restarted call can end again
        self.opened += 1
        self._empty.clear()
        log.info("call %s opened (%d active)", key, len(self._calls))

    def bridge_stream(self, key: CallKey) -> EventStream:
        """The stream of the bridge's own warnings for a call (see the module docstring)."""
        call = self._calls.get(key)
        if call is not None:
            return call.bridge
        stream = self._streams.get(key) or EventStream(f"bridge:{self.worker_id}", None)
        self._remember(key, stream)
        return stream

    def _remember(self, key: CallKey, stream: EventStream) -> None:
        self._streams[key] = stream
        self._streams.move_to_end(key)
        if len(self._streams) > MAX_BRIDGE_STREAMS:
            self._streams.popitem(last=False)

    def warned(self, key: CallKey, code: str) -> bool:
        return (key, code) in self._warned

    def warn_once(self, key: CallKey, channel: str | None, code: str, message: str) -> None:
        """`warn`, unless this call already got a warning of this code (bounded memory)."""
        if (key, code) in self._warned:
            return
        self._warned[(key, code)] = None
        if len(self._warned) > MAX_BRIDGE_STREAMS:
            self._warned.popitem(last=False)
        self.warn(key, channel, code, message)

    def warn(
        self, key: CallKey, channel: str | None, code: str, message: str, **extra: Any
    ) -> None:
        """Publishes a warning on the call's bridge stream."""
        extra = {"channel": channel, **extra}
        self.emit(Outgoing(key, self.bridge_stream(key), ev.Warning(0, code, message), extra))

    def end(self, key: CallKey, reason: str) -> None:
        """Ends one call now: its finals follow, then session.closed per channel."""
        call = self._calls.get(key)
        if call is not None:
            self._end(call, reason)

    def end_all(self, reason: str) -> None:
        """Ends every call now (shutdown): finals follow, then session.closed per channel."""
        for call in list(self._calls.values()):
            self._end(call, reason)

    def abandon_all(self) -> int:
        """Drops every call at once without waiting for finals; returns how many were dropped."""
        dropped = len(self._calls)
        for call in self._calls.values():
            for channel in call.channels.values():
                if channel.runner is not None:
                    channel.runner.abandon()
        self._calls.clear()
        self._empty.set()
        return dropped

    async def wait_empty(self) -> None:
        """Waits until no call is held."""
        await self._empty.wait()

    # --------------------------------------------------------------- messages

    def control(self, key: CallKey, payload: bytes, now: float) -> None:
        """Handles one message of `asr/{tenant}/{call_id}/control`."""
        call = self._calls[key]
        call.last_activity = now
        try:
            message = json.loads(payload.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            self.warn(
                key,
                None,
                "invalid_json",
                f"control message is not JSON ({payload[:60]!r}); ignored",
            )
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.warn(
                key,
                None,
                "invalid_message",
                'a control message must be a JSON object with a string "type"; ignored',
            )
            return
        kind = message["type"]
        if kind == "keepalive":
            return
        if call.end_at is not None or call.closing_reason is not None:
            self.warn(key, None, "session_ending", f"{kind} after input.end; ignored")
        elif kind == "session.start":
            self._start(call, message)
        elif kind == "session.update":
            self._update(call, message)
        elif kind == "input.finalize":
            for channel in call.channels.values():
                if channel.live:
                    assert channel.runner is not None
                    channel.runner.receive_text(json.dumps(message))
        elif kind == "input.end":
            call.end_at = now + self.end_grace_s
            if self.end_grace_s <= 0:
                self._end(call, "input_end")
        else:
            self.warn(
                key,
                None,
                "unknown_message_type",
                f"unknown control message type {kind!r}; expected session.start, "
                "session.update, input.finalize, input.end or keepalive",
            )

    def audio(self, key: CallKey, channel_name: str, payload: bytes, now: float) -> None:
        """Handles one message of `asr/{tenant}/{call_id}/{channel}/audio`."""
        call = self._calls[key]
        call.last_activity = now
        if call.closing_reason is not None:
            self.warn_once(key, channel_name, "call_ended", "audio after the call ended; dropped")
            return
        try:
            packet = AudioPacket.unpack(payload)
        except AudioFormatError as exc:
            self._channel_warning(
                call, call.channels.get(channel_name), channel_name, exc.code, exc.message
            )
            return
        if packet.duration_ms > self.config.limits.max_frame_ms:
            self._channel_warning(
                call,
                call.channels.get(channel_name),
                channel_name,
                "frame_too_large",
                f"audio message seq {packet.seq} holds {packet.duration_ms:.0f} ms, "
                f"more than {self.config.limits.max_frame_ms} ms; dropped",
            )
            return
        channel = call.channels.get(channel_name)
        if channel is None:
            if not CHANNEL_NAME.fullmatch(channel_name):
                self.warn(
                    key,
                    None,
                    "invalid_channel",
                    f"channel name {channel_name[:80]!r} is not 1-64 of A-Z a-z 0-9 _ . -; "
                    "audio dropped",
                )
                return
            if len(call.channels) >= self.config.max_channels:
                self.warn(
                    key,
                    channel_name,
                    "too_many_channels",
                    f"a call may have at most {self.config.max_channels} channels; audio dropped",
                )
                return
            channel = call.channels[channel_name] = _Channel(channel_name, self.config)
        for item in channel.sequencer.push(packet, now):
            self._deliver(call, channel, item, now)

    # ----------------------------------------------------------------- ticks

    def tick(self, now: float) -> list[tuple[CallKey, str]]:
        """Timers: held packets, input.end grace, idle timeouts, finished calls.

        Returns:
            The calls that were dropped, with the reason their input ended.
        """
        finished = []
        for call in list(self._calls.values()):
            for channel in call.channels.values():
                for item in channel.sequencer.expire(now):
                    self._deliver(call, channel, item, now)
                self._report_counts(call, channel, now)
            if call.closing_reason is None:
                if call.end_at is not None and now >= call.end_at:
                    self._end(call, "input_end")
                elif now - call.last_activity >= self.config.idle_timeout_s:
                    self._end(call, "idle_timeout")
            for channel in call.channels.values():
                if channel.runner is not None and channel.runner.session.finished:
                    channel.runner.abandon()  # a failed session may still have a decode running
            if call.closing_reason is not None and not any(c.live for c in call.channels.values()):
                del self._calls[call.key]
                self._remember(call.key, call.bridge)  # late warnings keep numbering it
                finished.append((call.key, call.closing_reason))
                log.info(
                    "call %s ended (%s; %d active)", call.key, call.closing_reason, len(self._calls)
                )
        if not self._calls:
            self._empty.set()
        return finished

    # --------------------------------------------------------------- details

    def _start(self, call: _Call, message: dict[str, Any]) -> None:
        if call.channels:
            self.warn(
                call.key,
                None,
                "session_already_started",
                "session.start must come before the call's first audio; ignored",
            )
            return
        try:
            config, ignored = parse_session_start(
                message,
                self.config.session_defaults,
                languages=self.model.languages,
                max_segment_s=self.model.max_segment_s,
            )
        except ConfigError as exc:
            self.warn(
                call.key,
                None,
                exc.code,
                f"session.start rejected: {exc.message}; the call keeps its settings",
            )
            return
        if "audio" in message:
            ignored.append("audio (each audio message's header gives codec and sample rate)")
        if ignored:
            self.warn(call.key, None, "unknown_field", f"ignored settings: {', '.join(ignored)}")
        call.config = config

    def _update(self, call: _Call, message: dict[str, Any]) -> None:
        try:
            call.config = parse_session_update(message, call.config, languages=self.model.languages)
        except ConfigError as exc:
            self.warn(call.key, None, exc.code, f"session.update rejected: {exc.message}")
            return
        for channel in call.channels.values():
            if channel.live:
                assert channel.runner is not None
                channel.runner.receive_text(json.dumps(message))

    def _end(self, call: _Call, reason: str) -> None:
        if call.closing_reason is not None:
            return
        call.closing_reason = reason
        for channel in call.channels.values():
            for item in channel.sequencer.flush():
                self._deliver(call, channel, item, 0.0)
            self._report_counts(call, channel, 0.0, force=True)
            if channel.live:
                assert channel.runner is not None
                channel.runner.close(reason)

    def _deliver(
        self, call: _Call, channel: _Channel, item: AudioPacket | Note, now: float
    ) -> None:
        if isinstance(item, Gap):
            channel.pending_gap = item  # reported with the next packet, which tells its duration
        elif isinstance(item, Late):
            self._channel_warning(
                call,
                channel,
                channel.name,
                "audio_late",
                f"audio seq {item.seq} arrived after it was given up as lost "
                "(its time was filled with silence); dropped",
                audio_seq=item.seq,
            )
        elif isinstance(item, Duplicate):
            channel.duplicates += 1
            self._report_counts(call, channel, now)
        elif isinstance(item, Reordered):
            channel.reordered += 1
            self._report_counts(call, channel, now)
        else:
            self._feed(call, channel, item)

    def _feed(self, call: _Call, channel: _Channel, packet: AudioPacket) -> None:
        if channel.runner is None or channel.runner.session.finished:
            if call.closing_reason is not None:
                return
            self._new_session(call, channel, packet)
        assert channel.runner is not None
        fmt = channel.runner.session.config.audio
        if packet.format != fmt:
            self._channel_warning(
                call,
                channel,
                channel.name,
                "audio_format_changed",
                f"audio seq {packet.seq} is {packet.format.encoding} at "
                f"{packet.format.sample_rate} Hz, but the channel started as "
                f"{fmt.encoding} at {fmt.sample_rate} Hz; dropped",
            )
            return
        missing = packet.position - channel.expected
        gap, channel.pending_gap = channel.pending_gap, None
        if missing > 0:
            filled = min(missing, fmt.sample_rate * self.config.max_gap_fill_ms // 1000)
            if gap is not None or filled < missing:
                self._channel_warning(
                    call,
                    channel,
                    channel.name,
                    "audio_gap",
                    f"{_gap_text(gap)}{missing * 1000 // fmt.sample_rate} ms of "
                    f"audio missing before seq {packet.seq}; "
                    f"{filled * 1000 // fmt.sample_rate} ms filled with silence",
                    missing_ms=missing * 1000 // fmt.sample_rate,
                    missing_packets=gap.packets if gap else 0,
                )
            chunk = fmt.sample_rate * self.config.limits.max_frame_ms // 1000
            for start in range(0, filled, chunk):
                channel.runner.receive_audio(silence(fmt, min(chunk, filled - start)))
        elif gap is not None:
            self._channel_warning(
                call,
                channel,
                channel.name,
                "audio_gap",
                f"{_gap_text(gap)}no audio position is missing",
                missing_ms=0,
                missing_packets=gap.packets,
            )
        channel.runner.receive_audio(packet.audio)
        channel.expected = max(channel.expected, packet.position) + packet.samples

    def _new_session(self, call: _Call, channel: _Channel, packet: AudioPacket) -> None:
        session_id = f"{call.key.call_id}.{channel.name}.{uuid.uuid4().hex[:8]}"
        config = dataclasses.replace(call.config, audio=packet.format)
        session = Session(
            session_id,
            self.model,
            limits=self.config.limits,
            config=config,
            vad=self.config.vad,
        )
        stream = EventStream(session_id, channel.name)
        offset_ms = packet.position * 1000 // packet.format.sample_rate
        key, emit, worker_id = call.key, self.emit, self.worker_id

        def sink(event: ev.Event) -> None:
            extra: dict[str, Any] = {"channel": stream.channel}
            if isinstance(event, ev.SessionCreated):
                extra.update(worker=worker_id, offset_ms=offset_ms)
            emit(Outgoing(key, stream, event, extra))

        channel.stream = stream
        channel.expected = packet.position
        channel.runner = SessionRunner(session, self.worker, sink)

    def _channel_warning(
        self,
        call: _Call,
        channel: _Channel | None,
        name: str,
        code: str,
        message: str,
        **extra: Any,
    ) -> None:
        """A warning in the channel's session stream while it is live, else the bridge stream."""
        if channel is None or not channel.live or channel.stream is None:
            self.warn(call.key, name, code, message, **extra)
            return
        assert channel.runner is not None
        event = ev.Warning(channel.runner.session.received_ms, code, message)
        self.emit(Outgoing(call.key, channel.stream, event, {"channel": name, **extra}))

    def _report_counts(
        self, call: _Call, channel: _Channel, now: float, *, force: bool = False
    ) -> None:
        """Reports reordered and duplicate packets, at most once per report_interval_s."""
        if not (channel.reordered or channel.duplicates):
            return
        if not force and now - channel.reported_at < self.config.report_interval_s:
            return  # counted; reported with the next report
        channel.reported_at = now
        if channel.reordered:
            self._channel_warning(
                call,
                channel,
                channel.name,
                "audio_reordered",
                f"{channel.reordered} audio message(s) arrived out of order "
                "and were put back in order",
                packets=channel.reordered,
            )
        if channel.duplicates:
            self._channel_warning(
                call,
                channel,
                channel.name,
                "audio_duplicate",
                f"{channel.duplicates} audio message(s) repeated a seq already "
                "received (redelivery); ignored",
                packets=channel.duplicates,
            )
        channel.reordered = channel.duplicates = 0


def _gap_text(gap: Gap | None) -> str:
    if gap is None:
        return ""
    if gap.packets == 1:
        return f"audio seq {gap.first} never arrived; "
    return f"audio seq {gap.first}-{gap.last} ({gap.packets} messages) never arrived; "
