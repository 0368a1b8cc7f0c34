"""Faults the service must survive: vanished clients, a failing model call, a draining server."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Sequence

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streaming.recognizer import DecodeRequest, Hypothesis, Recognizer
from streaming.server.service import ServerConfig, StreamingServer
from tests.conftest import MS
from tests.server.serving import serving
from tests.server.test_native import recv_json, send_pcm, until

pytestmark = pytest.mark.asyncio


class Poisoned(Recognizer):
    """The real recognizer, except that any batch holding a request with context "poison" raises."""

    def __init__(self, inner: Recognizer):
        self.inner = inner
        self.info = inner.info

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        if any(r.context == "poison" for r in requests):
            raise RuntimeError("a corrupt model state")
        return self.inner.decode(requests)


async def settled(server: StreamingServer, within_s: float = 10.0) -> None:
    """Waits until the server holds no session and no queued decode."""
    for _ in range(int(within_s / 0.05)):  # polled: the server has no event for "all gone"
        if not (server.active_sessions or server.worker.pending or server._per_client):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{server.active_sessions} sessions, {server.worker.pending} decodes left")


async def test_clients_vanishing_mid_segment_and_mid_final_leave_nothing_behind(whisper, corpus):
    """No close frame, no FIN: the sockets are aborted, the server must notice and clean up."""
    async with serving(whisper) as server:
        url = f"ws://127.0.0.1:{server.port}/v1/stream"
        baseline = len(asyncio.all_tasks())
        for moment in ["mid_segment", "mid_final"]:
            ws = await connect(url)
            await recv_json(ws)
            await send_pcm(ws, corpus[8].samples()[: 16000 * 3])
            await until(ws, "speech.started")
            if moment == "mid_final":
                await ws.send(json.dumps({"type": "input.end"}))  # a final is being decoded
            ws.transport.abort()
            await settled(server)
        # the server still serves a healthy session from start to final
        async with connect(url) as ws:
            await recv_json(ws)
            await send_pcm(ws, corpus[8].samples())
            await ws.send(json.dumps({"type": "input.end"}))
            events = await until(ws, "session.closed")
        assert "john" in next(e for e in events if e["type"] == "transcript.final")["text"].lower()
        await settled(server)
        assert len(asyncio.all_tasks()) <= baseline


async def test_a_model_call_that_raises_fails_only_its_own_session(whisper, corpus):
    """The poisoned batch is retried request by request: only its culprit gets model_error."""
    server = StreamingServer(Poisoned(whisper), ServerConfig(port=0, web_root=None))
    await server.start()
    try:
        url = f"ws://127.0.0.1:{server.port}/v1/stream"

        async def stream(context: str) -> tuple[list[dict], int | None]:
            async with connect(url + f"?context={context}") as ws:
                await recv_json(ws)
                await send_pcm(ws, corpus[8].samples())
                await ws.send(json.dumps({"type": "input.end"}))
                events = []
                with pytest.raises(ConnectionClosed):
                    while True:
                        events.append(await recv_json(ws, 30_000 * MS))
                return events, ws.close_code

        (poisoned, poisoned_code), (healthy, healthy_code) = await asyncio.gather(
            stream("poison"), stream("names")
        )
        assert poisoned_code == 1011
        assert [e["code"] for e in poisoned if e["type"] == "error"] == ["model_error"]
        assert healthy_code == 1000 and healthy[-1]["type"] == "session.closed"
        assert (
            "john"
            in " ".join(e["text"] for e in healthy if e["type"] == "transcript.final").lower()
        )
        assert server.health()["decoder"]["failures"] >= 1
        await settled(server)
    finally:
        await server.shutdown()


async def test_a_draining_server_reports_it_refuses_newcomers_and_delivers_finals(whisper, corpus):
    """While shutdown waits for a session's final: /health is 503 "stopping", a new WebSocket
    gets server_shutting_down (1013), and the open session still gets its final, then 1001."""
    server = StreamingServer(whisper, ServerConfig(port=0, web_root=None))
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"

    def health() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(url.replace("ws", "http") + "/health", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    async with connect(url + "/v1/stream") as ws:
        await recv_json(ws)
        await send_pcm(ws, corpus[8].samples()[: 16000 * 3])
        await until(ws, "speech.started")
        stopper = asyncio.create_task(server.shutdown())
        await asyncio.sleep(0)
        status, body = await asyncio.to_thread(health)
        assert (status, body["status"]) == (503, "stopping")
        async with connect(url + "/v1/stream") as late:
            refusal = await recv_json(late)
            with pytest.raises(ConnectionClosed):
                await recv_json(late)
        assert (refusal["code"], late.close_code) == ("server_shutting_down", 1013)
        events = await until(ws, "session.closed")
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1001
        await stopper
    assert [e["reason"] for e in events if e["type"] == "transcript.final"] == ["end"]
