"""The MQTT front end: call-center taps in, transcript events out (docs/mqtt.md).

This module orchestrates one worker: what it subscribes to, where each incoming message goes,
and the worker's lifecycle. Audio and control messages go to the calls this worker owns
(`streaming.mqtt.calls.CallManager`, which drives the same `Session` engine as the WebSocket
server) or are forwarded to the call's owner, by the view of ownership kept in
`streaming.mqtt.ownership`; events go back to the broker through the connection layer,
`streaming.mqtt.link`.

Topics (prefix `asr`):
- `asr/{tenant}/{call_id}/{channel}/audio`  in: 16-byte header + audio (`streaming.mqtt.audio`)
- `asr/{tenant}/{call_id}/control`          in: JSON session.start / session.update / input.end
- `asr/{tenant}/{call_id}/events`           out: protocol v1 events, tagged with their channel
- `asr/{tenant}/{call_id}/owner`            retained claim: which worker transcribes the call
- `asr/_workers/{worker_id}/status`         retained worker status, last will "offline"
- `asr/_route/{worker_id}/{tenant}/...`     messages another worker forwards to the call's owner

Lifecycle: `run()` keeps the inbound and the outbound connection up (`MqttLink`) and runs the
timers. Shutdown first disconnects the inbound client (the broker queues what follows), then
finalizes open calls, then publishes their finals and the offline status.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from streaming import events as ev
from streaming.mqtt.calls import CallKey, CallManager, CallsConfig, Outgoing
from streaming.mqtt.link import BrokerConfig, LinkStats, MqttLink, Publication, cancel
from streaming.mqtt.ownership import (
    CallMessage,
    Ownership,
    Route,
    claim_payload,
    ended_payload,
)
from streaming.recognizer import Recognizer
from streaming.worker import ModelWorker

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # worker ids and group names
TICK_S = 0.05  # timer resolution: reorder holds, input.end grace, idle timeouts
HOPS = "asr-hops"  # MQTT v5 user property: how often a message was forwarded
MAX_HOPS = 3  # views of ownership converge; more forwards than this means a loop
MAX_PENDING_MESSAGES = 512  # messages of one call buffered while its claim is in flight
DROPPABLE_EVENTS = (ev.TranscriptPartial, ev.AudioAck)  # QoS 0: a newer one supersedes them


@dataclass(frozen=True)
class BridgeConfig:
    """Operator settings of one MQTT worker."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    # unique per worker and stable across restarts (its persistent session and claims)
    worker_id: str = field(default_factory=socket.gethostname)
    # workers with the same group share the calls
    group: str = "asr"
    # shared subscriptions: each message reaches one worker of the group, which forwards it to
    # the call's owner. Off: every worker receives every message and ignores other workers'
    # calls (N times the traffic; but mosquitto < 2.0.12 does not restore shared subscriptions
    # after a broker restart, so only this mode loses nothing when the broker restarts there)
    shared: bool = True
    # first topic level
    prefix: str = "asr"
    calls: CallsConfig = field(default_factory=CallsConfig)
    # how long the broker keeps this worker's session (and queues its messages) while it is away
    session_expiry_s: int = 3600
    # input.end waits this long for audio still being forwarded by another worker, seconds
    # (only while another worker of the group is online)
    end_grace_s: float = 0.3
    # a call whose owner has been offline this long is taken over by the next worker, seconds
    takeover_after_s: float = 30.0
    # events waiting to be published; above it QoS-0 events are dropped (QoS-1 ones are kept)
    max_outgoing: int = 10_000
    # QoS-1 publishes awaiting their acknowledgement at once
    max_inflight: int = 32
    # reconnect backoff: first delay and cap, seconds (doubling, jittered)
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 30.0
    # how long shutdown waits for finals and for their publication, seconds each
    shutdown_timeout_s: float = 15.0
    # retained status updates at most this often, seconds
    status_interval_s: float = 2.0
    # how long an ended call's retained marker lives (audio after it is refused), seconds
    ended_ttl_s: int = 300
    # decodes batched per model call
    max_batch: int = 8

    def __post_init__(self) -> None:
        for name in ("worker_id", "group"):
            if not NAME.fullmatch(getattr(self, name)):
                raise ValueError(
                    f"{name} must be 1-64 of A-Z a-z 0-9 _ . -, got {getattr(self, name)!r}"
                )
        if (
            not self.prefix
            or any(c in self.prefix for c in "+#")
            or self.prefix.strip("/") != self.prefix
        ):
            raise ValueError(f"prefix must be topic levels without wildcards, got {self.prefix!r}")


class Topics:
    """The topic layout (see the module docstring)."""

    def __init__(self, prefix: str, worker_id: str, group: str | None):
        self.prefix = prefix
        self.worker_id = worker_id
        share = f"$share/{group}/" if group is not None else ""
        self.control = f"{share}{prefix}/+/+/control"
        self.audio = f"{share}{prefix}/+/+/+/audio"
        self.owners = f"{prefix}/+/+/owner"
        self.statuses = f"{prefix}/_workers/+/status"
        self.route_in = f"{prefix}/_route/{worker_id}/#"

    def events(self, key: CallKey) -> str:
        return f"{self.prefix}/{key.tenant}/{key.call_id}/events"

    def owner(self, key: CallKey) -> str:
        return f"{self.prefix}/{key.tenant}/{key.call_id}/owner"

    def status(self, worker_id: str) -> str:
        return f"{self.prefix}/_workers/{worker_id}/status"

    def route(self, worker_id: str, topic: str) -> str:
        return f"{self.prefix}/_route/{worker_id}/{topic[len(self.prefix) + 1 :]}"

    def parse(self, topic: str) -> tuple[str, CallKey | None, str]:
        """(kind, call, detail): kind is audio (detail: channel), control, owner, status
        (detail: worker id), route (detail: the original topic) or unknown."""
        if not topic.startswith(self.prefix + "/"):
            return "unknown", None, ""
        levels = topic[len(self.prefix) + 1 :].split("/")
        if levels[0] == "_route" and len(levels) > 2 and levels[1] == self.worker_id:
            return "route", None, f"{self.prefix}/{'/'.join(levels[2:])}"
        if levels[0] == "_workers" and len(levels) == 3 and levels[2] == "status":
            return "status", None, levels[1]
        if levels[0].startswith("_"):
            return "unknown", None, ""  # tenants starting with _ are reserved
        if len(levels) == 3 and levels[2] in ("control", "owner"):
            return levels[2], CallKey(levels[0], levels[1]), ""
        if len(levels) == 4 and levels[3] == "audio":
            return "audio", CallKey(levels[0], levels[1]), levels[2]
        return "unknown", None, ""


@dataclass
class BridgeStats(LinkStats):
    """Counters for tests and benchmarks (with the connects, from `LinkStats`)."""

    claims_won: int = 0
    claims_lost: int = 0
    forwarded: int = 0
    refused_calls: int = 0


class MqttBridge:
    """One worker: transcribes the calls it owns, forwards the others' messages to their owner."""

    def __init__(
        self, recognizer: Recognizer, config: BridgeConfig, *, worker: ModelWorker | None = None
    ):
        """Creates the bridge; `run()` connects and serves.

        Args:
            recognizer: the model.
            config: broker, topics and limits.
            worker: a model worker to share with other front ends; by default the bridge makes
                (and stops) its own.
        """
        self.recognizer = recognizer
        self.config = config
        self.worker = worker or ModelWorker(recognizer, max_batch=config.max_batch)
        self._own_worker = worker is None
        self.topics = Topics(
            config.prefix, config.worker_id, config.group if config.shared else None
        )
        self.calls = CallManager(
            self.worker, recognizer.info, config.calls, self._emit, config.worker_id
        )
        self.stats = BridgeStats()
        self.ownership = Ownership(
            config.worker_id, config.group, config.takeover_after_s, config.ended_ttl_s
        )
        self._stop = asyncio.Event()
        self._stopping = False
        self._status_published: tuple[int, int] | None = None
        self._status_at = float("-inf")
        self._started = time.time()
        # Retained claims and statuses come first, so that the calls' owners are known before
        # their messages arrive. They are sent again on every subscribe: handling them twice is
        # harmless, and a restarted worker needs them although its session still subscribes.
        retained = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
        plain = SubscribeOptions(qos=1)
        self.link = MqttLink(
            config.broker,
            config.worker_id,
            subscriptions=[
                (self.topics.owners, retained),
                (self.topics.statuses, retained),
                (self.topics.route_in, plain),
                (self.topics.control, plain),
                (self.topics.audio, plain),
            ],
            deliver=self._on_message,
            greeting=lambda: self._status_item("online"),
            will=lambda: self._status_item("offline", "connection lost"),
            stats=self.stats,
            session_expiry_s=config.session_expiry_s,
            max_outgoing=config.max_outgoing,
            max_inflight=config.max_inflight,
            reconnect_min_s=config.reconnect_min_s,
            reconnect_max_s=config.reconnect_max_s,
        )

    @property
    def worker_id(self) -> str:
        return self.config.worker_id

    @property
    def dropped_events(self) -> int:
        """QoS-0 events dropped by the outgoing queue's policy."""
        return self.link.dropped

    async def ready(self) -> None:
        """Waits until both connections are up and the subscriptions are in place."""
        await self.link.ready()

    def stop(self) -> None:
        """Asks `run()` to shut down gracefully (callable from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Connects (and reconnects) and serves until `stop()`, then shuts down gracefully."""
        name = f"mqtt[{self.worker_id}]"
        self.worker.start()
        try:
            async with asyncio.TaskGroup() as tg:
                inbound = tg.create_task(self.link.run_inbound(), name=f"{name}:inbound")
                outbound = tg.create_task(self.link.run_outbound(), name=f"{name}:outbound")
                timers = tg.create_task(self._timers(), name=f"{name}:timers")
                await self._stop.wait()
                await self._shutdown(inbound)
                await cancel(outbound)
                await cancel(timers)
        finally:
            if self._own_worker:
                await self.worker.stop()
            log.info("worker %s stopped", self.worker_id)

    async def _shutdown(self, inbound: asyncio.Task[None]) -> None:
        log.info("%s: shutting down, finishing %d calls", self.worker_id, len(self.calls))
        # Disconnect the inbound session first: from here on the broker queues this worker's
        # messages (they are handled after a restart) instead of sending them.
        await cancel(inbound)
        self._stopping = True
        for message in self.ownership.drop_pending():
            self._republish(message)
        self.calls.end_all("server_shutdown")
        try:
            async with asyncio.timeout(self.config.shutdown_timeout_s):
                await self.calls.wait_empty()
        except TimeoutError:
            log.warning(
                "%s: %d calls did not finish in time; dropped without their last finals",
                self.worker_id,
                self.calls.abandon_all(),
            )
        self.link.publish(self._status_item("offline", "shutdown"))
        try:
            async with asyncio.timeout(self.config.shutdown_timeout_s):
                await self.link.drained()
        except TimeoutError:
            log.warning(
                "%s: broker unreachable; %d messages were not published",
                self.worker_id,
                self.link.queued,
            )

    # --------------------------------------------------------------- routing

    def _on_message(self, message: aiomqtt.Message) -> None:
        try:
            hops = 0
            for name, value in getattr(message.properties, "UserProperty", None) or ():
                if name == HOPS and value.isdigit():
                    hops = int(value)
            self._route(message.topic.value, bytes(message.payload), message.qos, hops)
        except Exception:
            # Never let one message take the connection down; the bug is logged with its cause.
            log.exception("%s: failed to handle a message on %s", self.worker_id, message.topic)

    def _route(self, topic: str, payload: bytes, qos: int, hops: int) -> None:
        kind, key, detail = self.topics.parse(topic)
        if kind == "route":
            self._route(detail, payload, qos, hops)
        elif kind == "owner":
            assert key is not None
            self._on_owner(key, payload)
        elif kind == "status":
            self.ownership.on_status(detail, payload)
        elif kind in ("audio", "control"):
            assert key is not None
            self._on_call_message(CallMessage(topic, kind, key, detail, payload, qos, hops))
        else:
            log.debug("%s: ignored a message on %s", self.worker_id, topic)

    def _on_call_message(self, message: CallMessage) -> None:
        now = time.monotonic()
        key = message.key
        route, worker = self.ownership.route(key, now)
        if route is Route.HANDLE:
            self._handle(message, now)
            return
        if route is Route.FORWARD:
            assert worker is not None
            self._forward(worker, message)
            return
        if route is Route.ENDED and not _is_session_start(message):
            channel = message.channel if message.kind == "audio" else None
            text = (
                f"the call ended with input.end; {message.kind} dropped (session.start restarts it)"
            )
            self.calls.warn_once(key, channel, "call_ended", text)
            return
        pending = self.ownership.pending.get(key)
        if pending is None:
            if self._stopping:
                self._republish(message)
                return
            if len(self.calls) + len(self.ownership.pending) >= self.config.calls.max_calls:
                peer = self.ownership.peer_with_room()
                if peer is not None and message.hops < MAX_HOPS:
                    self._forward(peer, message)  # unshared, that worker has it already
                    return
                self.stats.refused_calls += not self.calls.warned(key, "server_full")
                self.calls.warn_once(
                    key,
                    None,
                    "server_full",
                    f"worker {self.worker_id} holds {self.config.calls.max_calls} calls, "
                    "its limit; this call's messages are dropped",
                )
                return
            # `worker`: the offline owner this claim takes over from (None for a new call)
            pending = self.ownership.claim(key, replaces=worker)
            self._publish_claim(key, self.worker_id, replaces=worker)
        if len(pending.messages) >= MAX_PENDING_MESSAGES:
            if not pending.overflowed:
                pending.overflowed = True
                self.calls.warn(
                    key,
                    None,
                    "claim_backlog_full",
                    f"more than {MAX_PENDING_MESSAGES} messages arrived before the "
                    "call's owner was decided; later ones were dropped",
                )
            return
        pending.messages.append(message)

    def _handle(self, message: CallMessage, now: float) -> None:
        if message.key not in self.calls:
            self.calls.open(message.key, now)
        if message.kind == "control":
            self.calls.control(message.key, message.payload, now)
        else:
            self.calls.audio(message.key, message.channel, message.payload, now)

    def _forward(self, worker: str, message: CallMessage) -> None:
        if not self.config.shared:
            return  # the owner receives every message itself
        if message.hops >= MAX_HOPS:
            log.warning(
                "%s: dropped a message on %s forwarded %d times (ownership in flux)",
                self.worker_id,
                message.topic,
                message.hops,
            )
            return
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = [(HOPS, str(message.hops + 1))]
        topic = self.topics.route(worker, message.topic)
        item = Publication(topic, message.qos, message.payload, properties=properties)
        if self.link.publish(item):
            self.stats.forwarded += 1

    def _republish(self, message: CallMessage) -> None:
        """Puts a message this worker will not handle back on its topic, for the group."""
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = [(HOPS, str(message.hops + 1))]
        item = Publication(message.topic, message.qos, message.payload, properties=properties)
        self.link.publish(item, even_offline=True)

    # ---------------------------------------------------------------- claims

    def _publish_claim(
        self, key: CallKey, worker: str, *, replaces: str | None = None, restore: bool = False
    ) -> None:
        restored_by = self.worker_id if restore else None
        payload = claim_payload(worker, replaces=replaces, restored_by=restored_by)
        self.link.publish(Publication(self.topics.owner(key), 1, payload, retain=True))

    def _on_owner(self, key: CallKey, payload: bytes) -> None:
        now = time.monotonic()
        seen = self.ownership.on_claim(key, payload, now)
        if seen.reassigned_to is not None:
            log.warning("%s: call %s was taken over by %s", self.worker_id, key, seen.reassigned_to)
            self.calls.end(key, "reassigned")
        if seen.won:
            self.stats.claims_won += 1
        if seen.restore is not None:
            self.stats.claims_lost += 1
            self._publish_claim(key, seen.restore, restore=True)
        if seen.decided:
            self._resolve(key, now)

    def _resolve(self, key: CallKey, now: float) -> None:
        decided = self.ownership.resolve(key)
        if decided is None:
            return
        owner, messages = decided
        for message in messages:
            if owner == self.worker_id:
                self._handle(message, now)
            else:
                self._forward(owner, message)

    def _call_finished(self, key: CallKey, reason: str) -> None:
        """A call's sessions are closed and their events queued: hand the call back."""
        topic = self.topics.owner(key)
        if reason == "input_end":
            # A retained "ended" marker with an expiry: audio that straggles in after the end is
            # refused by whichever worker gets it, instead of starting a new call.
            self.ownership.ended(key, time.monotonic())
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = self.config.ended_ttl_s
            payload = ended_payload(self.worker_id)
            self.link.publish(Publication(topic, 1, payload, retain=True, properties=properties))
        elif reason not in ("server_shutdown", "reassigned"):
            # Idle: release the call, so that audio resuming later starts it again anywhere.
            # At shutdown the claim stays: the call comes back to this worker after a restart.
            self.ownership.release(key)
            self.link.publish(Publication(topic, 1, b"", retain=True))

    # ---------------------------------------------------------------- status

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        status: dict[str, Any] = {
            "worker": self.worker_id,
            "state": state,
            "group": self.config.group,
            "model": self.recognizer.info.name,
            "started_at": round(self._started, 3),
            "at": round(time.time(), 3),
        }
        if state == "online":
            status.update(calls=len(self.calls), max_calls=self.config.calls.max_calls)
        if reason:
            status["reason"] = reason
        return json.dumps(status).encode()

    def _status_item(self, state: str, reason: str | None = None) -> Publication:
        payload = self._status_payload(state, reason)
        return Publication(self.topics.status(self.worker_id), 1, payload, retain=True)

    # ---------------------------------------------------------------- timers

    async def _timers(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._tick(time.monotonic())
            except Exception:
                log.exception("%s: timer tick failed", self.worker_id)

    def _tick(self, now: float) -> None:
        others = self.ownership.others_online()
        self.calls.end_grace_s = self.config.end_grace_s if others else 0.0
        for key, reason in self.calls.tick(now):
            self._call_finished(key, reason)
        self.ownership.expire(now)
        state = (len(self.calls), self.calls.opened)
        if (
            self.link.connected
            and not self._stopping
            and state != self._status_published
            and now - self._status_at >= self.config.status_interval_s
        ):
            self._status_published, self._status_at = state, now
            self.link.publish(self._status_item("online"))

    # --------------------------------------------------------------- events

    def _emit(self, outgoing: Outgoing) -> None:
        qos = 0 if isinstance(outgoing.event, DROPPABLE_EVENTS) else 1
        topic = self.topics.events(outgoing.key)
        self.link.publish(Publication(topic, qos, functools.partial(_wire, outgoing)))


def _wire(outgoing: Outgoing) -> bytes:
    """An event's JSON, numbered in its stream: called once, when it is first published."""
    stream = outgoing.stream
    wire = outgoing.event.to_wire(stream.session_id, stream.next_seq(), **outgoing.extra)
    return json.dumps(wire, ensure_ascii=False).encode()


def _is_session_start(message: CallMessage) -> bool:
    if message.kind != "control":
        return False
    try:
        return json.loads(message.payload).get("type") == "session.start"
    except (ValueError, AttributeError):
        return False
