"""The MQTT connection layer of a worker: its two broker connections and what it publishes.

This module knows nothing about calls, claims or events: `MqttLink` connects to the broker
(`BrokerConfig`: address, TLS, credentials), keeps the connections up with a jittered
exponential backoff (`Backoff`), hands every incoming message to a callback as it is read, and
publishes `Publication`s from a bounded queue (`Outbox`) whose drop policy is written on the class.
The bridge (`streaming.mqtt.bridge`) decides what is subscribed, sent and received.

Connections: two MQTT v5 clients. The inbound one has a persistent session (clean_start False,
session expiry), so messages published while this worker is away are queued by the broker and
delivered when it is back; the outbound one carries the last will, and publishes from the queue,
which keeps every QoS-1 message until the broker acknowledged it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)

MAX_UNPROVEN = 256  # QoS-0 messages kept for a resend until a later QoS-1 one is acknowledged


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    # CA bundle (PEM) that signs the broker's certificate; None: the system's
    cafile: Path | None = None
    # TLS without certificate and host name checks (test brokers only)
    insecure: bool = False
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    # connect, subscribe and publish acknowledgement timeout, seconds
    timeout_s: float = 10.0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> BrokerConfig:
        """Parses `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]` (TLS, default port 8883).

        Raises:
            ValueError: not an mqtt:// or mqtts:// URL with a host.
        """
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(
                f"broker must look like mqtt://HOST:PORT or mqtts://HOST:PORT, got {url!r}"
            )
        tls = parts.scheme == "mqtts" or bool(options.pop("tls", False))
        port = parts.port or (8883 if tls else 1883)
        if parts.username and "username" not in options:
            options["username"] = parts.username
        return cls(host=parts.hostname, port=port, tls=tls, **options)


@dataclass
class LinkStats:
    """Connection counters for tests and benchmarks."""

    inbound_connects: int = 0
    outbound_connects: int = 0


@dataclass
class Publication:
    """One message waiting to be published.

    `payload` may be a function that makes the bytes: it is called once, when the message is
    first taken for publishing (events are numbered then, in publishing order), so a retried
    publish repeats the same bytes.
    """

    topic: str
    qos: int
    payload: bytes | Callable[[], bytes]
    retain: bool = False
    properties: Properties | None = None

    def render(self) -> bytes:
        """The payload's bytes (made on the first call)."""
        if callable(self.payload):
            self.payload = self.payload()
        return self.payload


class Outbox:
    """Messages waiting for the outbound connection.

    Policy: at most `limit` messages wait. QoS-0 messages (partials, acks, QoS-0 forwards) are
    dropped and counted when the queue is at the limit or the broker is unreachable: a newer
    one supersedes them. QoS-1 messages (finals, speech and session events, warnings, errors,
    claims) are always kept until the broker acknowledged them, and published again after a
    reconnect; they cannot grow without bound because they only come from audio already received,
    and no audio arrives while the broker is unreachable.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.dropped = 0
        self._items: collections.deque[Publication] = collections.deque()
        self._unconfirmed = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Publication, *, connected: bool) -> bool:
        """Queues `item` unless the policy drops it; returns whether it was queued."""
        if item.qos == 0 and (not connected or len(self._items) >= self.limit):
            self.dropped += 1
            return False
        self._items.append(item)
        self._changed()
        return True

    def put_front(self, item: Publication) -> None:
        """Queues `item` before all others, whatever the policy."""
        self._items.appendleft(item)
        self._changed()

    def take(self) -> Publication | None:
        """The next message to publish (unconfirmed until `confirmed` or `requeue`), if any."""
        if not self._items:
            self._ready.clear()
            return None
        self._unconfirmed += 1
        return self._items.popleft()

    def confirmed(self) -> None:
        """One taken message is settled (acknowledged, or given up)."""
        self._unconfirmed -= 1
        self._changed()

    def requeue(self, items: list[Publication]) -> None:
        """Puts back messages whose publication failed, in their order, before all others."""
        self._unconfirmed -= len(items)
        self._items.extendleft(reversed(items))
        self._changed()

    async def wait(self) -> None:
        """Waits until a message is queued."""
        await self._ready.wait()

    async def drained(self) -> None:
        """Waits until everything queued was published and acknowledged."""
        await self._idle.wait()

    def _changed(self) -> None:
        if self._items:
            self._ready.set()
        else:
            self._ready.clear()
        if self._items or self._unconfirmed:
            self._idle.clear()
        else:
            self._idle.set()


class Backoff:
    """Reconnect delays: doubling from `first_s` up to `max_s`, each jittered to 50-100 %."""

    def __init__(self, first_s: float, max_s: float):
        self.first_s, self.max_s = first_s, max_s
        self._attempt = 0
        self._random = random.Random()

    def next(self) -> float:
        """The delay before the next attempt, seconds."""
        delay = min(self.max_s, self.first_s * 2**self._attempt)
        self._attempt += 1
        return delay * self._random.uniform(0.5, 1.0)

    def reset(self) -> None:
        """Starts again from `first_s` (after a successful connect)."""
        self._attempt = 0


class MqttLink:
    """A worker's inbound and outbound connections, and the queue of messages to publish."""

    def __init__(
        self,
        broker: BrokerConfig,
        worker_id: str,
        *,
        subscriptions: Sequence[tuple[str, SubscribeOptions]],
        deliver: Callable[[aiomqtt.Message], None],
        greeting: Callable[[], Publication],
        will: Callable[[], Publication],
        stats: LinkStats,
        session_expiry_s: int,
        max_outgoing: int,
        max_inflight: int,
        reconnect_min_s: float,
        reconnect_max_s: float,
    ):
        """Creates the link; `run_inbound()` and `run_outbound()` connect and serve.

        Args:
            broker: where and how to connect.
            worker_id: names the clients (`asr-{worker_id}-in`, `-out`) and the log lines.
            subscriptions: what the inbound connection subscribes to, on every connect.
            deliver: takes every incoming message as it is read.
            greeting: makes the message published first on every outbound connection.
            will: makes the outbound connection's last will, on every connect.
            stats: where connects are counted.
            session_expiry_s: how long the broker keeps the inbound session while away.
            max_outgoing: the outbox's limit (see `Outbox`).
            max_inflight: QoS-1 publishes awaiting their acknowledgement at once.
            reconnect_min_s: first reconnect delay, seconds (see `Backoff`).
            reconnect_max_s: longest reconnect delay, seconds.

        Raises:
            OSError: the TLS context cannot be made (an unreadable or invalid cafile).
        """
        self.broker = broker
        self.worker_id = worker_id
        self.stats = stats
        self._subscriptions = list(subscriptions)
        self._deliver = deliver
        self._greeting = greeting
        self._will = will
        self._session_expiry_s = session_expiry_s
        self._max_inflight = max_inflight
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._outbox = Outbox(max_outgoing)
        self._tls = tls_context(broker)
        self._outbound_up = False
        self._inbound_ready = asyncio.Event()
        self._outbound_ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        """Whether the outbound connection is up."""
        return self._outbound_up

    @property
    def dropped(self) -> int:
        """QoS-0 messages dropped by the outbox's policy."""
        return self._outbox.dropped

    @property
    def queued(self) -> int:
        """Messages waiting to be published."""
        return len(self._outbox)

    def publish(self, message: Publication, *, even_offline: bool = False) -> bool:
        """Queues a message for the outbound connection, under the `Outbox` policy.

        Args:
            message: what to publish.
            even_offline: queue a QoS-0 message although the broker is unreachable (it is still
                dropped when the queue is full).

        Returns:
            Whether it was queued.
        """
        return self._outbox.put(message, connected=self._outbound_up or even_offline)

    async def drained(self) -> None:
        """Waits until everything queued was published and acknowledged."""
        await self._outbox.drained()

    async def ready(self) -> None:
        """Waits until both connections are up and the subscriptions are in place."""
        await self._inbound_ready.wait()
        await self._outbound_ready.wait()

    async def run_inbound(self) -> None:
        """Keeps the inbound connection up (until cancelled)."""
        await self._keep_up("in", self._inbound)

    async def run_outbound(self) -> None:
        """Keeps the outbound connection up and publishes the outbox (until cancelled)."""
        await self._keep_up("out", self._outbound)

    def _client(self, role: str) -> aiomqtt.Client:
        broker = self.broker
        common: dict[str, Any] = {
            "hostname": broker.host,
            "port": broker.port,
            "username": broker.username,
            "password": broker.password,
            "protocol": aiomqtt.ProtocolVersion.V5,
            "keepalive": broker.keepalive_s,
            "timeout": broker.timeout_s,
            "tls_context": self._tls,
            "identifier": f"asr-{self.worker_id}-{role}",
        }
        if role == "in":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._session_expiry_s
            return aiomqtt.Client(
                **common,
                clean_start=False,
                properties=properties,
                queue_type=_inbox_type(self._deliver),
            )
        last = self._will()
        will = aiomqtt.Will(
            last.topic, last.render(), qos=last.qos, retain=last.retain, properties=last.properties
        )
        client = aiomqtt.Client(**common, clean_start=True, will=will)
        client.pending_calls_threshold = self._max_inflight + 1  # its warning level
        return client

    async def _keep_up(self, role: str, serve: Callable[[aiomqtt.Client], Awaitable[None]]) -> None:
        """Keeps one connection up: connect, serve until it breaks, back off, reconnect."""
        backoff = Backoff(self._reconnect_min_s, self._reconnect_max_s)
        broker = self.broker
        while True:
            try:
                async with self._client(role) as client:
                    log.info(
                        "%s: %s connection to %s:%d up",
                        self.worker_id,
                        role,
                        broker.host,
                        broker.port,
                    )
                    backoff.reset()
                    await serve(client)
            except* aiomqtt.MqttError as errors:
                log.warning(
                    "%s: %s connection to %s:%d down (%s)",
                    self.worker_id,
                    role,
                    broker.host,
                    broker.port,
                    errors.exceptions[0],
                )
            await asyncio.sleep(backoff.next())

    async def _inbound(self, client: aiomqtt.Client) -> None:
        self.stats.inbound_connects += 1
        await client.subscribe(self._subscriptions)
        self._inbound_ready.set()
        async for _ in client.messages:  # never yields (see _inbox_type); ends on disconnect
            pass

    async def _outbound(self, client: aiomqtt.Client) -> None:
        self.stats.outbound_connects += 1
        self._outbound_up = True
        self._outbox.put_front(self._greeting())
        self._outbound_ready.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._publisher(client), name=f"mqtt[{self.worker_id}]:publisher")
                tg.create_task(_until_disconnected(client), name=f"mqtt[{self.worker_id}]:watch")
        finally:
            self._outbound_up = False

    async def _publisher(self, client: aiomqtt.Client) -> None:
        """Publishes queued messages in order, up to `max_inflight` awaiting acknowledgement.

        A QoS-0 message has no acknowledgement of its own, but once a QoS-1 message written
        after it on this connection is acknowledged, the broker had it (TCP keeps the order).
        Until then it is "unproven", and published again after a reconnect: a numbered partial
        lost with the connection would leave a hole in its session's seq.
        """
        inflight: collections.deque[tuple[Publication, asyncio.Task[None]]] = collections.deque()
        unproven: list[Publication] = []
        try:
            while True:
                while len(inflight) < self._max_inflight:
                    item = self._outbox.take()
                    if item is None:
                        break
                    publish = client.publish(
                        item.topic,
                        item.render(),
                        qos=item.qos,
                        retain=item.retain,
                        properties=item.properties,
                    )
                    inflight.append((item, asyncio.create_task(publish, name="mqtt:publish")))
                if not inflight:
                    await self._outbox.wait()
                    continue
                await inflight[0][1]  # a failure means the connection broke: see finally
                item, _ = inflight.popleft()
                if item.qos == 0:
                    unproven.append(item)
                    if len(unproven) > MAX_UNPROVEN:
                        unproven.pop(0)
                        self._outbox.confirmed()
                    continue
                for _ in range(len(unproven) + 1):
                    self._outbox.confirmed()
                unproven.clear()
        finally:
            failed = unproven
            for item, task in inflight:
                if item.qos and task.done() and not task.cancelled() and not task.exception():
                    self._outbox.confirmed()
                else:
                    task.cancel()
                    failed.append(item)
            self._outbox.requeue(failed)


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancels a task and waits until it is over.

    Cancels again until it is: Python 3.11's asyncio.wait_for (inside aiomqtt's connect and
    acknowledgement waits) can swallow a cancellation that coincides with its result.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)


def tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    """The TLS context of `broker`'s settings; None without TLS."""
    if not broker.tls:
        return None
    context = ssl.create_default_context(cafile=str(broker.cafile) if broker.cafile else None)
    if broker.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _inbox_type(deliver: Callable[[aiomqtt.Message], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """An incoming-message "queue" for aiomqtt that hands each message to `deliver` at once.

    Handling messages as they are read, instead of from aiomqtt's queue, means that a message
    the client has acknowledged has also been handled when the client disconnects: at shutdown
    nothing is left behind in a queue that nobody reads any more.
    """

    class Inbox(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            deliver(item)

    return Inbox


async def _until_disconnected(client: aiomqtt.Client) -> None:
    async for _ in client.messages:  # the outbound client subscribes to nothing
        pass
