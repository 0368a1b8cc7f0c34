"""Browser-safe access: grants, Origin allow-list, per-client caps, JSON logs (real sockets)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.error
import urllib.request

import httpx
import pytest
from deepgram import AsyncDeepgramClient
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streaming.logs import JsonFormatter
from streaming.server import auth
from streaming.server.auth import ConnectionRate, GrantError, Grants
from tests.server.serving import serving
from tests.server.test_deepgram import deepgram
from tests.server.test_faults import settled


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_grant_opens_sessions_until_it_expires():
    clock = Clock()
    grants = Grants("server-token", clock=clock)
    grant = grants.issue(30)
    assert grants.accept(grant) and grants.accept(grant)
    clock.now += 30
    assert not grants.accept(grant)


def test_forged_altered_and_foreign_grants_are_refused():
    grants = Grants("server-token")
    grant = grants.issue(60)
    body, signature = grant[len("g1.") :].split(".")
    longer = json.dumps({"exp": 2**40, "id": "x"}).encode()
    forged = "g1." + auth._b64(longer) + "." + signature
    assert not grants.accept(forged)
    assert not grants.accept(grant[:-2] + ("AA" if grant[-2:] != "AA" else "BB"))
    assert not Grants("another-token").accept(grant)
    for junk in ["", "g1.", "g1..", "g1.%%%.%%%", "server-token", "g1." + body]:
        assert not grants.accept(junk)


def test_a_single_use_grant_opens_one_session():
    grants = Grants("server-token")
    grant = grants.issue(60, single_use=True)
    assert grants.accept(grant)
    assert not grants.accept(grant)


def test_grant_lifetimes_are_bounded_and_so_is_the_single_use_table(monkeypatch):
    clock = Clock()
    grants = Grants("t", clock=clock)
    for ttl in [0, -1, auth.MAX_TTL_S + 1, 1.5, "30", True, None]:
        with pytest.raises(GrantError):
            grants.issue(ttl)
    monkeypatch.setattr(auth, "MAX_SINGLE_USE", 2)
    spent = [grants.issue(10, single_use=True) for _ in range(2)]
    assert all(grants.accept(g) for g in spent)
    with pytest.raises(GrantError, match="outstanding"):
        grants.issue(10, single_use=True)
    clock.now += 10  # the remembered ids expire: room again, and the spent grants stay dead
    assert grants.issue(10, single_use=True)
    assert not any(grants.accept(g) for g in spent)


def post(port: int, path: str, body: object, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Token {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def first_event_and_close(url: str, **options) -> tuple[dict, int | None]:
    async with connect(url, **options) as ws:
        event = json.loads(await ws.recv())
        if event["type"] == "error":
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        return event, ws.close_code


@pytest.mark.asyncio
async def test_a_browser_connects_with_a_grant_never_with_the_server_token(whisper):
    async with serving(whisper, token="s3cret") as server:
        port = server.port
        stream = f"ws://127.0.0.1:{port}/v1/stream"
        assert (await asyncio.to_thread(post, port, "/v1/auth/grant", {}, None))[0] == 401
        status, body = await asyncio.to_thread(
            post, port, "/v1/auth/grant", {"ttl_seconds": 60, "single_use": True}, "s3cret"
        )
        assert status == 200 and body["expires_in"] == 60
        grant = body["access_token"]
        # a grant opens a session, but cannot mint further grants
        assert (await asyncio.to_thread(post, port, "/v1/auth/grant", {}, grant))[0] == 401
        event, _ = await first_event_and_close(f"{stream}?token={grant}")
        assert event["type"] == "session.created"
        event, code = await first_event_and_close(f"{stream}?token={grant}")
        assert (event["code"], code) == ("unauthorized", 4008)  # single use: spent
        for bad in [{"ttl_seconds": 0}, {"ttl_seconds": 10**6}, {"single_use": "yes"}, [1]]:
            status, body = await asyncio.to_thread(post, port, "/v1/auth/grant", bad, "s3cret")
            assert status == 400 and body["err_msg"], bad


@pytest.mark.asyncio
async def test_deepgrams_sdk_gets_a_grant_and_streams_with_it(whisper):
    """The official SDK's `auth.v1.tokens.grant` then `access_token=`: Deepgram's own flow."""
    async with serving(whisper, token="s3cret") as server, httpx.AsyncClient() as http:
        environment = deepgram(server)._client_wrapper.get_environment()
        backend = AsyncDeepgramClient(api_key="s3cret", environment=environment, httpx_client=http)
        grant = await backend.auth.v1.tokens.grant(ttl_seconds=30)
        assert grant.expires_in == 30
        browser_client = AsyncDeepgramClient(
            access_token=grant.access_token, environment=environment
        )
        async with browser_client.listen.v1.connect(model="nova-3", encoding="linear16",
                                                    sample_rate=16000) as conn:  # fmt: skip
            await conn.send_media(b"\x00\x00" * 1600)
            await conn.send_close_stream()
            kinds = [m.type async for m in conn]
        assert "Metadata" in kinds, kinds


@pytest.mark.asyncio
async def test_a_server_without_a_token_says_so_on_a_grant_request(whisper):
    async with serving(whisper) as server:
        status, body = await asyncio.to_thread(post, server.port, "/v1/auth/grant", {}, None)
        assert status == 404 and body["err_code"] == "no_token"


@pytest.mark.asyncio
async def test_websockets_from_origins_not_allowed_are_refused(whisper):
    """Cross-site WebSocket hijacking: a page elsewhere may not use a visitor's access."""
    async with serving(whisper, allowed_origins=("https://captions.example",)) as server:
        stream = f"ws://127.0.0.1:{server.port}/v1/stream"
        event, code = await first_event_and_close(stream, origin="https://evil.example")
        assert (event["code"], code) == ("origin_not_allowed", 4009)
        assert "evil.example" in event["message"]
        for origin in ["https://captions.example", "https://CAPTIONS.example/", None]:
            event, _ = await first_event_and_close(stream, origin=origin)
            assert event["type"] == "session.created", origin
        realtime = f"ws://127.0.0.1:{server.port}/v1/realtime?intent=transcription"
        async with connect(realtime, origin="https://evil.example") as ws:
            assert json.loads(await ws.recv())["error"]["code"] == "origin_not_allowed"


@pytest.mark.asyncio
async def test_one_client_may_hold_only_its_share_of_sessions(whisper):
    async with serving(whisper, max_sessions=4, max_sessions_per_client=1) as server:
        stream = f"ws://127.0.0.1:{server.port}/v1/stream"
        async with connect(stream) as first:
            assert json.loads(await first.recv())["type"] == "session.created"
            event, code = await first_event_and_close(stream)
            assert (event["code"], code) == ("client_limit", 1013)
        await settled(server)  # the first one's slot is given back when it has closed
        event, _ = await first_event_and_close(stream)
        assert event["type"] == "session.created"
        assert server._per_client == {}  # no address left behind


@pytest.mark.asyncio
async def test_json_logs_name_the_session(whisper):
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    service_log = logging.getLogger("streaming.server.service")
    service_log.addHandler(handler)
    level = service_log.level
    service_log.setLevel(logging.INFO)
    try:
        async with serving(whisper) as server:
            event, _ = await first_event_and_close(f"ws://127.0.0.1:{server.port}/v1/stream")
            await settled(server)
    finally:
        service_log.removeHandler(handler)
        service_log.setLevel(level)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    ours = [r for r in records if r.get("session") == event["session_id"]]
    assert [r["message"].split()[-1] for r in ours][-1] == "closed", records
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)


def test_a_client_opening_sessions_too_fast_is_slowed_to_its_rate():
    clock = Clock()
    rate = ConnectionRate(per_minute=6, burst=2, clock=clock)
    assert [rate.allow("a") for _ in range(3)] == [True, True, False]
    assert rate.allow("b")  # another address has its own bucket
    assert rate.retry_after_s("a") == 11  # one token every 10 s
    clock.now += 10
    assert rate.allow("a") and not rate.allow("a")


def test_the_rate_table_stays_bounded_and_forgets_refilled_clients_first():
    clock = Clock()
    rate = ConnectionRate(per_minute=60, burst=1, clock=clock, max_clients=3)
    for client in "abc":
        assert rate.allow(client)
    clock.now += 0.5
    assert rate.allow("d")  # the table is full: the oldest ("a") is dropped
    assert len(rate._buckets) == 3 and "a" not in rate._buckets
    clock.now += 2  # b, c and d have refilled: dropped before anything else
    assert rate.allow("e") and set(rate._buckets) == {"e"}


@pytest.mark.asyncio
async def test_a_connection_burst_beyond_the_rate_is_refused_with_1013(whisper):
    async with serving(whisper, connects_per_minute=2) as server:
        stream = f"ws://127.0.0.1:{server.port}/v1/stream"
        for _ in range(2):
            event, _ = await first_event_and_close(stream)
            assert event["type"] == "session.created"
        event, code = await first_event_and_close(stream)
        assert (event["code"], code) == ("rate_limited", 1013)
        assert "try again in" in event["message"]


@pytest.mark.asyncio
async def test_an_upload_refused_by_a_full_server_does_not_spend_a_single_use_grant():
    from tests.streaming.fakes import ScriptedRecognizer
    from tests.streaming.test_session import SCRIPT

    async with serving(ScriptedRecognizer(SCRIPT), token="t0ken", max_sessions=1) as server:
        assert server.grants is not None
        grant = server.grants.issue(60, single_use=True)
        url = f"http://127.0.0.1:{server.port}/v1/audio/transcriptions"
        files = {"file": ("a.wav", b"RIFF....", "audio/wav")}
        headers = {"Authorization": f"Bearer {grant}"}
        async with httpx.AsyncClient() as client:
            async with connect(f"ws://127.0.0.1:{server.port}/v1/stream?token=t0ken") as ws:
                await ws.recv()  # the one session is taken
                full = await client.post(url, headers=headers, files=files,
                                         data={"model": "whisper-1"})  # fmt: skip
            await settled(server)
            later = await client.post(url, headers=headers, files=files,
                                      data={"model": "whisper-1"})  # fmt: skip
            spent = await client.post(url, headers=headers, files=files,
                                      data={"model": "whisper-1"})  # fmt: skip
    assert full.status_code == 429 and full.json()["error"]["code"] == "server_full"
    assert later.status_code == 400  # past the key: the fake file is what it refuses
    assert "could not decode the audio" in later.json()["error"]["message"]
    assert spent.status_code == 401  # used once, it is gone


@pytest.mark.asyncio
async def test_uploads_count_against_the_clients_rate_and_its_sessions():
    """The HTTP face keeps the WebSocket faces' per-client rules: a WebSocket session and an
    upload from one address share its session cap, and uploads spend its connection rate."""
    from tests.streaming.fakes import ScriptedRecognizer
    from tests.streaming.test_session import SCRIPT

    form = {"model": "whisper-1"}
    files = {"file": ("a.wav", b"RIFF....", "audio/wav")}
    async with serving(ScriptedRecognizer(SCRIPT), max_sessions_per_client=1,
                       connects_per_minute=3) as server:  # fmt: skip
        url = f"http://127.0.0.1:{server.port}/v1/audio/transcriptions"
        async with httpx.AsyncClient() as client:
            async with connect(f"ws://127.0.0.1:{server.port}/v1/stream") as ws:
                await ws.recv()  # this address holds its one session (and spent 1 of 3)
                held = await client.post(url, files=files, data=form)
            await settled(server)
            answers = [await client.post(url, files=files, data=form) for _ in range(3)]
    assert held.status_code == 429 and held.json()["error"]["code"] == "client_limit"
    # a burst of 3: the WebSocket spent one, the upload refused by the cap none, two uploads
    # get past the limiter (to be refused for their fake file), the third is one too many
    assert [a.status_code for a in answers] == [400, 400, 429]
    assert answers[2].json()["error"]["code"] == "rate_limited"
    assert int(answers[2].headers["retry-after"]) >= 1
