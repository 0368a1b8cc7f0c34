"""Which worker of a group transcribes each call, as one worker sees it: claims, peers, takeover.

This module does no I/O. The bridge (`streaming.mqtt.bridge`) feeds `Ownership` the retained
claims (`asr/{tenant}/{call_id}/owner`) and worker statuses (`asr/_workers/{worker_id}/status`)
it receives, asks it where each message of a call goes (`Ownership.route`), keeps the messages
of a call in its `Pending` entry while the call's claim is in flight, and publishes the claims
made by `claim_payload` and `ended_payload`.

Affinity: workers share-subscribe (`$share/{group}/...`) to audio and control. Mosquitto hands
each message of a shared subscription to the next worker in turn, so affinity comes from claims:
the first worker that sees a message of an unknown call publishes a retained claim on the call's
owner topic; every worker sees every claim in the broker's order, and the first claim wins
everywhere. The owner handles the call; other workers forward what they receive of it to the
owner's route topic. A worker that lost a race forwards what it buffered to the winner, and puts
the winner's claim back as the retained value (marked `restored_by`, which changes nothing in
anyone's view). A call whose owner has been offline for `takeover_after_s` is claimed again with
`replaces`, which every worker accepts. Unshared (`BridgeConfig.shared` off), every worker
receives every message and ignores the calls of other workers instead of forwarding them.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from streaming.mqtt.calls import CallKey

log = logging.getLogger(__name__)

ACTIVE, ENDED = "active", "ended"  # a claim's state


@dataclass(frozen=True)
class CallMessage:
    """A call's audio or control message as received (or forwarded)."""

    topic: str
    kind: str  # audio or control
    key: CallKey
    channel: str  # audio only; "" for control
    payload: bytes
    qos: int
    hops: int  # how often it was forwarded


@dataclass(frozen=True)
class Owner:
    """The claim on a call that this worker accepted (the first, in the broker's order)."""

    worker: str
    state: str  # ACTIVE or ENDED
    since: float  # time.monotonic() when it was seen


@dataclass
class Pending:
    """Messages of a call this worker claimed, waiting for the claim to be decided."""

    replaces: str | None  # the offline owner this claim takes the call over from
    messages: list[CallMessage] = field(default_factory=list)
    overflowed: bool = False  # messages were dropped (and that was reported)


@dataclass(frozen=True)
class Peer:
    """Another worker, by its last retained status."""

    online: bool
    group: str
    since: float  # time.monotonic() when it went online or offline
    room: int  # calls it can still take, by its last status


class Route(enum.Enum):
    """Where a message of a call goes (`Ownership.route`)."""

    HANDLE = "handle"  # this worker owns the call
    FORWARD = "forward"  # another worker owns it: forward the message to that worker
    ENDED = "ended"  # the call ended with input.end (only a session.start restarts it)
    CLAIM = "claim"  # no owner, or an offline one: buffer the message and claim the call


@dataclass(frozen=True)
class ClaimSeen:
    """What a claim received on a call's owner topic changed for this worker."""

    decided: bool  # the call's owner may be decided now: its buffered messages can go
    # a call this worker owned was taken over: the worker that took it
    reassigned_to: str | None = None
    won: bool = False  # this worker's claim won
    # this worker's claim lost the race but overwrote the retained value: the winner, whose
    # claim goes back (with `claim_payload(winner, restored_by=this worker)`)
    restore: str | None = None


class Ownership:
    """The owners of calls and the other workers, as this worker has seen them.

    Single-threaded: call it from the event loop. Times are `time.monotonic()` seconds.
    """

    def __init__(self, worker_id: str, group: str, takeover_after_s: float, ended_ttl_s: float):
        """Starts knowing no owner and no peer.

        Args:
            worker_id: this worker.
            group: this worker's group; only its members take calls over and get calls forwarded.
            takeover_after_s: a call whose owner has been offline this long is taken over.
            ended_ttl_s: how long an ended call is remembered as ended.
        """
        self.worker_id = worker_id
        self.group = group
        self.takeover_after_s = takeover_after_s
        self.ended_ttl_s = ended_ttl_s
        self.owners: dict[CallKey, Owner] = {}
        self.pending: dict[CallKey, Pending] = {}  # calls this worker's claim is in flight for
        self.peers: dict[str, Peer] = {}

    # ------------------------------------------------------------------ calls

    def route(self, key: CallKey, now: float) -> tuple[Route, str | None]:
        """Where a message of `key` goes now.

        Returns:
            (route, worker): for FORWARD the owner; for CLAIM the offline owner that this
            worker's claim replaces, if any; otherwise None.
        """
        owner = self.owners.get(key)
        if owner is None or key in self.pending:
            return Route.CLAIM, None
        if owner.state == ENDED:
            return Route.ENDED, None
        if owner.worker == self.worker_id:
            return Route.HANDLE, None
        if not self.stale(owner.worker, now):
            return Route.FORWARD, owner.worker
        return Route.CLAIM, owner.worker  # its owner is gone: take the call over

    def claim(self, key: CallKey, replaces: str | None) -> Pending:
        """Notes that this worker is claiming `key`; its messages wait in the returned entry."""
        pending = self.pending[key] = Pending(replaces)
        return pending

    def on_claim(self, key: CallKey, payload: bytes, now: float) -> ClaimSeen:
        """Takes a retained claim from `key`'s owner topic (empty: the claim was released)."""
        if not payload:
            self.owners.pop(key, None)
            return ClaimSeen(decided=False)
        try:
            claim = json.loads(payload)
            worker, state = str(claim["worker"]), claim["state"]
        except (ValueError, KeyError, TypeError):
            log.warning(
                "%s: ignored a malformed claim on %s: %r", self.worker_id, key, payload[:80]
            )
            return ClaimSeen(decided=False)
        current = self.owners.get(key)
        if state == ENDED:
            if current is None or current.worker == worker:
                self.owners[key] = Owner(worker, ENDED, now)
            return ClaimSeen(decided=False)
        if "restored_by" in claim:
            # a loser putting the winner's claim back as the retained value: no change
            return ClaimSeen(decided=False)
        if (
            current is None
            or current.state == ENDED
            or current.worker == worker
            or claim.get("replaces") == current.worker
        ):
            taken = current is not None and current.worker == self.worker_id != worker
            self.owners[key] = Owner(worker, ACTIVE, now)
            won = worker == self.worker_id and key in self.pending
            return ClaimSeen(decided=True, reassigned_to=worker if taken else None, won=won)
        if worker == self.worker_id:
            # This claim lost a race but overwrote the retained value: the winner's goes back,
            # so that a worker subscribing later sees the same owner.
            return ClaimSeen(decided=True, restore=current.worker)
        return ClaimSeen(decided=True)

    def resolve(self, key: CallKey) -> tuple[str, list[CallMessage]] | None:
        """Ends the wait of a claimed call once its owner is decided.

        Returns:
            (owner, the messages buffered meanwhile), or None while it is undecided.
        """
        pending = self.pending.get(key)
        owner = self.owners.get(key)
        if pending is None or owner is None or owner.state != ACTIVE:
            return None
        if owner.worker == pending.replaces:
            return None  # the takeover claim is still on its way
        del self.pending[key]
        return owner.worker, pending.messages

    def drop_pending(self) -> list[CallMessage]:
        """Forgets every claim in flight; returns their buffered messages (shutdown)."""
        messages = [m for pending in self.pending.values() for m in pending.messages]
        self.pending.clear()
        return messages

    def ended(self, key: CallKey, now: float) -> None:
        """This worker ended `key` with input.end (it publishes the ended marker)."""
        self.owners[key] = Owner(self.worker_id, ENDED, now)

    def release(self, key: CallKey) -> None:
        """This worker gave `key` up (it publishes the empty claim)."""
        self.owners.pop(key, None)

    def expire(self, now: float) -> None:
        """Forgets the calls that ended more than `ended_ttl_s` ago."""
        for key, owner in list(self.owners.items()):
            if owner.state == ENDED and now - owner.since > self.ended_ttl_s:
                del self.owners[key]

    # ------------------------------------------------------------------ peers

    def on_status(self, worker: str, payload: bytes) -> None:
        """Takes another worker's retained status (empty: cleared)."""
        if worker == self.worker_id:
            return
        if not payload:
            self.peers.pop(worker, None)
            return
        try:
            status = json.loads(payload)
            online, group = status["state"] == "online", str(status.get("group", ""))
            room = int(status.get("max_calls", 0)) - int(status.get("calls", 0))
        except (ValueError, KeyError, TypeError):
            log.warning("%s: ignored a malformed status of %s", self.worker_id, worker)
            return
        previous = self.peers.get(worker)
        since = previous.since if previous and previous.online == online else time.monotonic()
        self.peers[worker] = Peer(online, group, since, room)

    def peer_with_room(self) -> str | None:
        """The online worker of this group with the most free calls (by its last status)."""
        peers = [(p.room, w) for w, p in self.peers.items() if p.online and p.room > 0
                 and p.group == self.group]  # fmt: skip
        return max(peers)[1] if peers else None

    def others_online(self) -> bool:
        """Whether another worker of this group is online."""
        return any(p.online and p.group == self.group for p in self.peers.values())

    def stale(self, worker: str, now: float) -> bool:
        """Whether `worker` has been offline for `takeover_after_s` (its calls are free)."""
        peer = self.peers.get(worker)
        return peer is not None and not peer.online and now - peer.since >= self.takeover_after_s


def claim_payload(
    worker: str, *, replaces: str | None = None, restored_by: str | None = None
) -> bytes:
    """An active claim of a call for `worker`.

    Args:
        worker: the claimed owner.
        replaces: the offline owner this claim takes the call over from.
        restored_by: set when a worker that lost the race puts the winner's claim back.
    """
    claim: dict[str, Any] = {
        "worker": worker,
        "state": ACTIVE,
        "replaces": replaces,
        "at": round(time.time(), 3),
    }
    if restored_by is not None:
        claim["restored_by"] = restored_by
    return json.dumps(claim).encode()


def ended_payload(worker: str) -> bytes:
    """The marker of a call that `worker` ended with input.end."""
    return json.dumps({"worker": worker, "state": ENDED}).encode()
