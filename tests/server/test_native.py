"""The WebSocket service end to end: real sockets, the real model, real speech."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client.connection import ServiceError, SessionSettings
from client.file_streamer import PaceOptions, stream_samples
from streaming.invariants import check_events
from streaming.scoring import corpus_wer
from streaming.server.service import ServerConfig, StreamingServer
from tests.conftest import MS
from tests.streaming.fakes import s16, silence

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def running(recognizer, **options):
    server = StreamingServer(recognizer, ServerConfig(port=0, **options))
    await server.start()
    try:
        yield server, f"ws://127.0.0.1:{server.port}"
    finally:
        await server.shutdown()


def int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16)[:, None]


async def send_pcm(ws, samples: np.ndarray, frame_ms: int = 100, rate: int = 16000) -> None:
    """Sends float samples as s16 frames of `frame_ms` (the protocol caps frames at 1 s)."""
    pcm = s16(samples)
    step = 2 * rate * frame_ms // 1000
    for i in range(0, len(pcm), step):
        await ws.send(pcm[i : i + step])


async def recv_json(ws, within_s=10_000 * MS):
    async with asyncio.timeout(within_s):
        return json.loads(await ws.recv())


async def until(ws, kind, within_s=20_000 * MS):
    """Reads events until one of type `kind`; returns all read, that one last."""
    seen = []
    while True:
        seen.append(await recv_json(ws, within_s))
        if seen[-1]["type"] == kind:
            return seen


@pytest.mark.slow
async def test_the_corpus_streamed_in_real_time_meets_the_wer_bound(whisper, corpus):
    """All 13 utterances at real-time pace in 20-100 ms frames: WER <= 10 %, invariants hold."""
    frame_sizes = [20, 40, 60, 100]
    results = {}

    async def lane(items):
        for i, utterance in items:
            pace = PaceOptions(
                frame_ms=frame_sizes[i % 4],
                realtime=True,
                trailing_silence_ms=900 if i % 2 else 0,  # half end by VAD, half by input.end
            )
            results[i] = await stream_samples(
                url, int16(utterance.samples()), 16000, SessionSettings(), pace
            )

    async with running(whisper) as (_, url):
        lanes = [list(enumerate(corpus))[k::3] for k in range(3)]
        await asyncio.gather(*(lane(items) for items in lanes))
    pairs = []
    for i, utterance in enumerate(corpus):
        result = results[i]
        assert check_events(result.events, input_ended=True) == [], utterance.path.name
        reasons = {f["reason"] for f in result.finals}
        assert reasons <= {"endpoint", "end"}
        pairs.append((utterance.reference, result.text))
    wer = corpus_wer(pairs)
    assert wer.wer <= 0.10, (wer, pairs)
    assert any("endpoint" in {f["reason"] for f in results[i].finals} for i in range(1, 13, 2))


async def test_every_bad_input_gets_its_error_and_the_session_survives(whisper, corpus):
    """Malformed JSON, unknown types, odd bytes, oversized frames, text for audio: all answered."""
    async with running(whisper) as (_, url), connect(url + "/v1/stream") as ws:
        assert (await recv_json(ws))["type"] == "session.created"
        bad = [
            ("{oops", "invalid_json"),
            ("UklGRiQAAABXQVZFZm10", "invalid_json"),
            (json.dumps({"type": "transcribe.now"}), "unknown_message_type"),
            (json.dumps({"hello": 1}), "invalid_message"),
            (b"\x01\x02\x03", "invalid_audio_frame"),
            (b"\x00\x00" * 24000, "frame_too_large"),
        ]
        for message, code in bad:
            await ws.send(message)
            error = (await until(ws, "error"))[-1]
            assert (error["code"], error["fatal"]) == (code, False), error
        await send_pcm(ws, np.concatenate([silence(0.3), corpus[7].samples(), silence(0.3)]))
        await ws.send(json.dumps({"type": "input.end"}))
        events = await until(ws, "session.closed")
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1000
    finals = [e for e in events if e["type"] == "transcript.final"]
    assert "forward" in finals[0]["text"].lower()


async def test_audio_after_input_end_is_refused_while_finals_are_pending(whisper, corpus):
    """A frame sent right after input.end is answered with audio_after_end."""
    async with running(whisper) as (_, url), connect(url + "/v1/stream") as ws:
        events = [await recv_json(ws)]
        await send_pcm(ws, corpus[8].samples()[:16000])
        await ws.send(json.dumps({"type": "input.end"}))
        await send_pcm(ws, corpus[8].samples()[16000:17600])
        events += await until(ws, "session.closed")
    codes = [e.get("code") for e in events if e["type"] == "error"]
    assert codes == ["audio_after_end"]
    assert check_events(events, input_ended=True) == []


@pytest.mark.parametrize(
    ("start", "code"),
    [
        ({"audio": {"encoding": "mp3"}}, "unsupported_encoding"),
        ({"audio": {"sample_rate": 96000}}, "unsupported_sample_rate"),
        ({"endpointing": {"silence_ms": 5}}, "invalid_config"),
    ],
)
async def test_an_unservable_session_start_is_fatal_with_close_4001(whisper, start, code):
    """A format or setting the server cannot serve: fatal error naming it, close 4001."""
    async with running(whisper) as (server, url), connect(url + "/v1/stream") as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "session.start", **start}))
        error = (await until(ws, "error"))[-1]
        assert error["code"] == code and error["fatal"]
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 4001
        assert server.health()["status"] == "ok"


async def test_query_parameters_configure_the_session(whisper, corpus):
    """?sample_rate=8000&language=en works like a session.start."""
    speech = corpus[7].samples()[::2]  # 8 kHz by decimation is enough for this check
    async with (
        running(whisper) as (_, url),
        connect(url + "/v1/stream?sample_rate=8000&language=en") as ws,
    ):
        created = await recv_json(ws)
        assert created["sample_rate"] == 8000 and created["config"]["language"] == "en"
        await send_pcm(ws, speech, rate=8000)
        await ws.send(json.dumps({"type": "input.end"}))
        events = await until(ws, "session.closed")
    assert "forward" in " ".join(e["text"] for e in events if e["type"] == "transcript.final")


async def test_an_oversized_message_closes_only_that_connection(whisper):
    """A message above max_size is closed with 1009; the server keeps serving others."""
    async with running(whisper, max_message_bytes=64_000) as (_server, url):
        async with connect(url + "/v1/stream") as ws:
            await recv_json(ws)
            await ws.send(b"\x00" * 100_000)
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert ws.close_code == 1009
        async with connect(url + "/v1/stream") as ws:
            assert (await recv_json(ws))["type"] == "session.created"


async def test_a_full_server_refuses_with_server_full_and_1013(whisper):
    """Beyond max_sessions a client gets error server_full and close code 1013."""
    async with running(whisper, max_sessions=2) as (server, url):
        first = await connect(url + "/v1/stream")
        second = await connect(url + "/v1/stream")
        await recv_json(first), await recv_json(second)
        async with connect(url + "/v1/stream") as third:
            error = await recv_json(third)
            assert error["type"] == "error" and error["code"] == "server_full"
            with pytest.raises(ConnectionClosed):
                await recv_json(third)
            assert third.close_code == 1013
        await first.close()
        await asyncio.sleep(100 * MS)
        async with connect(url + "/v1/stream") as fourth:  # a slot is free again
            assert (await recv_json(fourth))["type"] == "session.created"
        await second.close()
        assert server.health()["refused_sessions"] == 1
        with pytest.raises(ServiceError, match="full"):
            async with running(whisper, max_sessions=1) as (_, url2):
                holder = await connect(url2 + "/v1/stream")
                await recv_json(holder)
                try:
                    await stream_samples(
                        url2,
                        int16(silence(0.5)),
                        16000,
                        SessionSettings(),
                        PaceOptions(realtime=False),
                    )
                finally:
                    await holder.close()


@pytest.mark.slow
async def test_concurrent_sessions_get_their_own_transcripts(whisper, corpus):
    """Three sessions streaming different utterances at once each get their own words."""
    picks = [corpus[i] for i in (4, 8, 12)]
    async with running(whisper) as (server, url):
        results = await asyncio.gather(
            *(
                stream_samples(url, int16(u.samples()), 16000, SessionSettings(),
                               PaceOptions(frame_ms=40))
                for u in picks
            )
        )  # fmt: skip
        # all three went through the one model worker (whether two of them share a call
        # depends on timing: both lanes must be busy; tests/streaming/test_worker.py checks
        # batching deterministically, and this assertion failed one CI run in many)
        assert server.worker.stats.requests >= len(picks)
    for utterance, result in zip(picks, results, strict=True):
        assert check_events(result.events, input_ended=True) == []
        assert corpus_wer([(utterance.reference, result.text)]).wer <= 0.25, result.text
    assert "dashwood" in results[1].text.lower() and "dashwood" not in results[0].text.lower()


async def test_shutdown_finalizes_open_sessions(whisper, corpus):
    """On shutdown an open session gets its final, session.closed (server_shutdown), 1001."""
    server = StreamingServer(whisper, ServerConfig(port=0))
    await server.start()
    async with connect(f"ws://127.0.0.1:{server.port}/v1/stream") as ws:
        await recv_json(ws)
        await send_pcm(ws, corpus[8].samples()[: 16000 * 3])
        await until(ws, "speech.started")
        stopper = asyncio.create_task(server.shutdown())
        events = await until(ws, "session.closed")
        await stopper
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1001
    final = next(e for e in events if e["type"] == "transcript.final")
    assert final["reason"] == "end" and "john" in final["text"].lower()
    assert events[-1]["reason"] == "server_shutdown"


async def test_an_idle_session_is_finalized_and_closed(whisper, corpus):
    """No frames for idle_timeout_s: the final comes, then session.closed and close 4005."""
    async with running(whisper, idle_timeout_s=1.0) as (_, url), connect(url + "/v1/stream") as ws:
        await recv_json(ws)
        await send_pcm(ws, corpus[7].samples()[:32000])
        events = await until(ws, "session.closed", within_s=15_000 * MS)
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 4005
    assert events[-1]["reason"] == "idle_timeout"
    assert [e["reason"] for e in events if e["type"] == "transcript.final"] == ["end"]


async def test_a_protected_server_wants_its_token(whisper):
    """With --token, a missing token is refused (4008); ?token= and Bearer both work."""
    async with running(whisper, token="s3cret") as (_, url):
        async with connect(url + "/v1/stream") as ws:
            assert (await recv_json(ws))["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert ws.close_code == 4008
        async with connect(url + "/v1/stream?token=s3cret") as ws:
            assert (await recv_json(ws))["type"] == "session.created"
        headers = {"Authorization": "Bearer s3cret"}
        async with connect(url + "/v1/stream", additional_headers=headers) as ws:
            assert (await recv_json(ws))["type"] == "session.created"


async def test_health_page_and_unknown_paths(whisper):
    """/health answers JSON, / serves the page (when present), other paths give 404."""
    async with running(whisper) as (server, _):
        base = f"http://127.0.0.1:{server.port}"

        def get(path):
            try:
                with urllib.request.urlopen(base + path, timeout=5) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as error:
                return error.code, error.read()

        status, body = await asyncio.to_thread(get, "/health")
        health = json.loads(body)
        assert status == 200 and health["model"] == "whisper-tiny.en" and health["sessions"] == 0
        assert (await asyncio.to_thread(get, "/nope"))[0] == 404
        assert (await asyncio.to_thread(get, "/../pyproject.toml"))[0] == 404


async def test_fast_pacing_is_throttled_by_acks_and_loses_nothing(whisper, corpus):
    """A client sending as fast as allowed still gets every utterance of a long stream."""
    gap = silence(1.0)
    audio = np.concatenate([np.concatenate([u.samples(), gap]) for u in corpus[:6]])
    async with running(whisper) as (_, url):
        result = await stream_samples(
            url, int16(audio), 16000, SessionSettings(partials=False),
            PaceOptions(realtime=False, frame_ms=200, max_ahead_ms=8000),
        )  # fmt: skip
    assert check_events(result.events, input_ended=True) == []
    reference = " ".join(u.reference for u in corpus[:6])
    assert corpus_wer([(reference, result.text)]).wer <= 0.2, result.text


async def test_outbox_coalesces_partials_but_keeps_finals():
    """Superseded partials and acks are dropped from a backed-up outbox; finals never are."""
    from streaming import events as ev
    from streaming.server.outbox import Outbox

    async def run():
        box = Outbox(limit=5)
        box.push(ev.TranscriptPartial(1, 0, "", "a"))
        box.push(ev.AudioAck(1, 1, 1, 0))
        box.push(ev.TranscriptPartial(2, 0, "a", " b"))
        box.push(ev.AudioAck(2, 2, 2, 0))
        box.push(ev.SpeechStopped(3, 0))
        box.push(ev.TranscriptPartial(3, 1, "", "c"))  # another segment: kept
        kinds = []
        while (event := box.take()) is not None:
            kinds.append((event.type, getattr(event, "tentative", None)))
        return kinds, box.seq

    kinds, seq = await run()
    assert kinds == [
        ("transcript.partial", " b"),
        ("audio.ack", None),
        ("speech.stopped", None),
        ("transcript.partial", "c"),
    ]
    assert seq == 4


async def test_outbox_flags_a_client_that_stopped_reading():
    """More essential events than the limit mark the outbox as overflowing."""
    from streaming import events as ev
    from streaming.server.outbox import Outbox

    async def run():
        box = Outbox(limit=3)
        for i in range(4):
            box.push(ev.Warning(i, "w", "m"))
        return box.overflow

    assert await run()
