"""Who may open a session: the server token, short-lived grants, browser origins, per-client caps.

A browser page must not hold the long-lived server token (anyone who opens the page could read
it). A backend that holds it asks `POST /v1/auth/grant` for a grant instead, in Deepgram's shape
(`{"ttl_seconds": 30}` in, `{"access_token": ..., "expires_in": 30}` out, so Deepgram's SDKs work
unchanged) and hands that to the page, which connects with `?token=` or `Authorization: Bearer`.

A grant is `g1.<payload>.<signature>`: the payload (base64url JSON) holds its expiry and a random
id, the signature is HMAC-SHA256 under a key derived from the server token. Every worker started
with the same token therefore accepts the grants of every other (several workers behind a load
balancer), and changing the token revokes all grants. A grant is checked when a session opens; a
session opened before the expiry runs to its end, as Deepgram's and OpenAI's ephemeral keys do.

`single_use` grants open one session. Their ids are remembered until they expire, in a table
bounded at `MAX_SINGLE_USE` unexpired ids: when it is full, new single-use grants are refused
(429) rather than old ids forgotten, which would let a used grant in again. The table is per
worker: behind a load balancer a single-use grant opens at most one session per worker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

GRANT_PREFIX = "g1."
DEFAULT_TTL_S = 30  # Deepgram's default
MAX_TTL_S = 3600
MAX_SINGLE_USE = 100_000  # unexpired single-use ids remembered per worker


class GrantError(ValueError):
    """A grant request that cannot be served (the message says why)."""


class SingleUseTableFull(GrantError):
    """Too many single-use grants are outstanding: try again later (HTTP 429)."""


@dataclass
class Grants:
    """Issues and checks short-lived grants signed under the server token."""

    server_token: str
    clock: Callable[[], float] = time.time
    _used: dict[str, float] = field(default_factory=dict)  # single-use id -> expiry

    def __post_init__(self) -> None:
        # a key of its own, so that a signature never reveals anything about the token itself
        self._key = hmac.new(self.server_token.encode(), b"asr-stream grant key", "sha256").digest()

    def issue(self, ttl_s: int = DEFAULT_TTL_S, single_use: bool = False) -> str:
        """A grant valid for `ttl_s` seconds; raises GrantError for a bad ttl or a full table."""
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
            raise GrantError(f"ttl_seconds must be a whole number from 1 to {MAX_TTL_S}")
        if single_use and self._unexpired_single_use() >= MAX_SINGLE_USE:
            raise SingleUseTableFull("too many single-use grants outstanding; try again later")
        payload = {"exp": int(self.clock()) + ttl_s, "id": secrets.token_urlsafe(12)}
        if single_use:
            payload["once"] = True
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{GRANT_PREFIX}{body}.{self._sign(body)}"

    def accept(self, offered: str) -> bool:
        """Whether `offered` is a valid, unexpired grant; a single-use one is spent by this."""
        if not offered.startswith(GRANT_PREFIX):
            return False
        body, _, signature = offered[len(GRANT_PREFIX) :].partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return False
        payload = _payload(body)
        if payload is None:
            return False
        expiry = payload.get("exp")
        if not isinstance(expiry, int) or expiry <= self.clock():
            return False
        if payload.get("once"):
            grant_id = str(payload.get("id"))
            if grant_id in self._used:
                return False
            self._used[grant_id] = expiry
        return True

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def _unexpired_single_use(self) -> int:
        now = self.clock()
        for grant_id in [g for g, expiry in self._used.items() if expiry <= now]:
            del self._used[grant_id]
        return len(self._used)


def token_matches(offered: str, token: str) -> bool:
    # compare_digest takes as long whatever the token: no timing hint to a guesser
    return hmac.compare_digest(offered.encode(), token.encode())


def origin_allowed(headers: Mapping[str, str], allowed: tuple[str, ...]) -> bool:
    """Whether a WebSocket upgrade's `Origin` may connect (cross-site WebSocket hijacking).

    Browsers always send `Origin` and let any page open a WebSocket to any host, cookies and
    all; the server is the only one who can refuse. Clients that are not browsers send none and
    are not concerned. An empty allow-list allows every origin (the default, as before).
    """
    origin = headers.get("origin")
    if not allowed or origin is None:
        return True
    return origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed} or "*" in allowed


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(body: str) -> dict[str, object] | None:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return decoded if isinstance(decoded, dict) else None


@dataclass
class ConnectionRate:
    """New sessions per client address: a token bucket of `per_minute`, bursts of `burst`.

    Bounded: at most `max_clients` addresses are tracked. When that many are, the buckets that
    have refilled are dropped first (forgetting a full bucket changes nothing), then the ones
    seen longest ago (such a client gets a fresh burst: the cost of the bound).
    """

    per_minute: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    max_clients: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # tokens, seen at

    def allow(self, client: str) -> bool:
        """Takes one token for `client`; False when it has none left (refuse the session)."""
        now = self.clock()
        tokens = self._refilled(*self._buckets.pop(client, (float(self.burst), now)), now)
        if client not in self._buckets and len(self._buckets) >= self.max_clients:
            self._prune(now)
        allowed = tokens >= 1
        self._buckets[client] = (tokens - 1 if allowed else tokens, now)  # newest last
        return allowed

    def retry_after_s(self, client: str) -> int:
        tokens, _ = self._buckets.get(client, (float(self.burst), 0.0))
        return max(1, int((1 - tokens) * 60 / self.per_minute) + 1)

    def _refilled(self, tokens: float, seen: float, now: float) -> float:
        return min(float(self.burst), tokens + (now - seen) * self.per_minute / 60)

    def _prune(self, now: float) -> None:
        for client, (tokens, seen) in list(self._buckets.items()):
            if self._refilled(tokens, seen, now) >= self.burst:
                del self._buckets[client]
        while len(self._buckets) >= self.max_clients:
            del self._buckets[next(iter(self._buckets))]  # dicts keep insertion order
