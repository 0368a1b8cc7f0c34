"""Real telephony speech through the MQTT bridge at real-time pace, with the real model."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from streaming.invariants import check_events
from streaming.scoring import corpus_wer
from streaming.worker import ModelWorker
from tests.conftest import MS, load_corpus
from tests.mqtt.conftest import bridge_config, running
from tests.mqtt.taps import Listener, Tap, packets, telephony

pytestmark = [pytest.mark.asyncio, pytest.mark.network, pytest.mark.slow]

CORPUS = {u.path.stem: u for u in load_corpus()}
# Acceptance bound for each channel (13-16 words) of 8 kHz G.711 speech with tiny.en; the 16 kHz
# WebSocket corpus bound is 10 %. Measured here: 0-8 % at a steady pace, 15 % for the agent of
# the broker-restart test, whose audio arrives in a burst after the outage.
WER_BOUND = 0.2
# channel -> (encoding, utterances); each channel is one speaker of a call
CALL_A = {
    "agent": ("pcm_mulaw", ["goforward", "cards_005"]),
    "customer": ("pcm_alaw", ["forever_2", "sense_and_sensibility_01_austen_64kb-0880"]),
}
CALL_B = {
    "agent": ("pcm_s16le", ["sense_and_sensibility_01_austen_64kb-0930", "cards_002"]),
    "customer": ("pcm_mulaw", ["cards_003", "forever_4"]),
}


def channel_audio(names: list[str], encoding: str) -> tuple[list[bytes], str]:
    """Utterances with 0.5 s of silence before each and 1 s after the last, as 20 ms packets."""
    parts = []
    for name in names:
        parts += [np.zeros(8_000, np.float32), CORPUS[name].samples()]
    parts.append(np.zeros(16_000, np.float32))
    reference = " ".join(CORPUS[name].reference for name in names)
    return packets(telephony(np.concatenate(parts), encoding), encoding), reference


def build_call(layout: dict[str, tuple[str, list[str]]]) -> tuple[dict[str, list[bytes]], dict]:
    streams, references = {}, {}
    for channel, (encoding, names) in layout.items():
        streams[channel], references[channel] = channel_audio(names, encoding)
    return streams, references


def channel_events(listener: Listener, call_id: str, channel: str) -> list[dict]:
    return [
        e
        for e in listener.events(call_id)
        if e.get("channel") == channel and not e["session_id"].startswith("bridge:")
    ]


def closed_channels(listener: Listener, call_id: str) -> int:
    return sum(e["type"] == "session.closed" for e in listener.events(call_id))


def check_call(
    listener: Listener, call_id: str, references: dict[str, str], *, qos0_may_be_lost=False
) -> list[tuple]:
    """Asserts the invariants of each channel's session; returns (reference, text) pairs.

    `qos0_may_be_lost`: partials and acks are QoS 0; when the broker restarts, it may lose some
    in flight, so seq may skip (every other event is QoS 1 and must be there, in order).
    """
    pairs = []
    for channel, reference in references.items():
        events = channel_events(listener, call_id, channel)
        problems = check_events(events, input_ended=True, allow_seq_gaps=qos0_may_be_lost)
        assert problems == [], (call_id, channel, problems)
        assert len({e["session_id"] for e in events}) == 1, (call_id, channel)
        errors = [e for e in events if e["type"] == "error"]
        assert errors == [], errors
        finals = [e["text"] for e in events if e["type"] == "transcript.final"]
        pairs.append((reference, " ".join(finals)))
    return pairs


async def stream_call(tap: Tap, call_id: str, streams: dict[str, list[bytes]], **options) -> None:
    await tap.stream(call_id, streams, **options)
    await tap.control(call_id, {"type": "input.end"})


def assert_wer(pairs: list[tuple]) -> None:
    for reference, text in pairs:
        wer = corpus_wer([(reference, text)])
        assert wer.wer <= WER_BOUND, (reference, text)


async def test_a_two_channel_call_in_real_time_is_transcribed_per_channel(broker, whisper):
    """Agent (mu-law) and customer (A-law) at 8 kHz, real time: each channel's own words."""
    streams, references = build_call(CALL_A)
    async with (
        running(whisper, bridge_config(broker)),
        Listener(broker.port, "asr/#", "listener") as listener,
        Tap(broker.port) as tap,
    ):
        await tap.control("a", {"type": "session.start", "language": "en"})
        await stream_call(tap, "a", streams)
        await listener.wait_for(lambda: closed_channels(listener, "a") == 2, 30_000 * MS)
    assert_wer(check_call(listener, "a", references))
    finals = [m for m in listener.messages if b'"transcript.final"' in m.payload]
    partials = [m for m in listener.messages if b'"transcript.partial"' in m.payload]
    assert {m.qos for m in finals} == {1} and {m.qos for m in partials} == {0}


async def test_two_concurrent_calls_are_transcribed_side_by_side(broker, whisper):
    """Two two-channel calls at once on one worker: four sessions, each with its own words."""
    call_a, refs_a = build_call(CALL_A)
    call_b, refs_b = build_call(CALL_B)
    async with (
        running(whisper, bridge_config(broker)),
        Listener(broker.port, "asr/#", "listener") as listener,
        Tap(broker.port) as tap_a,
        Tap(broker.port) as tap_b,
    ):
        await asyncio.gather(stream_call(tap_a, "a", call_a), stream_call(tap_b, "b", call_b))
        await listener.wait_for(
            lambda: closed_channels(listener, "a") + closed_channels(listener, "b") == 4,
            30_000 * MS,
        )
    assert_wer(check_call(listener, "a", refs_a) + check_call(listener, "b", refs_b))


async def test_two_workers_share_calls_and_each_call_is_transcribed_once(broker, whisper):
    """Two workers in one group, two calls: each call on exactly one worker, no final lost."""
    call_a, refs_a = build_call(CALL_A)
    call_b, refs_b = build_call(CALL_B)
    worker = ModelWorker(whisper)  # one model thread for both workers of this test process
    worker.start()
    try:
        async with (
            running(whisper, bridge_config(broker, "w1"), worker=worker) as w1,
            running(whisper, bridge_config(broker, "w2"), worker=worker) as w2,
            Listener(broker.port, "asr/#", "listener") as listener,
            Tap(broker.port) as tap_a,
            Tap(broker.port) as tap_b,
        ):
            # Each call starts with a control message; the group's shared control subscription
            # hands consecutive ones to alternate workers, so each worker claims one call.
            for call in ("a", "b"):
                await tap_a.control(call, {"type": "session.start", "language": "en"})
                await listener.wait_for(
                    lambda c=call: any(m.topic == f"asr/acme/{c}/owner" for m in listener.messages),
                    5_000 * MS,
                )
            await asyncio.gather(stream_call(tap_a, "a", call_a), stream_call(tap_b, "b", call_b))
            await listener.wait_for(
                lambda: closed_channels(listener, "a") + closed_channels(listener, "b") == 4,
                30_000 * MS,
            )
            forwarded = w1.stats.forwarded + w2.stats.forwarded
    finally:
        await worker.stop()
    workers = {}
    for call in ("a", "b"):
        created = [e for e in listener.events(call) if e["type"] == "session.created"]
        assert len(created) == 2 and len({e["worker"] for e in created}) == 1, created
        workers[call] = created[0]["worker"]
        claims = [
            json.loads(m.payload) for m in listener.messages if m.topic.endswith(f"{call}/owner")
        ]
        assert {c["worker"] for c in claims} == {workers[call]}
    assert sorted(workers.values()) == ["w1", "w2"]
    assert forwarded > 0  # half of each call's audio reached the other worker first
    assert_wer(check_call(listener, "a", refs_a) + check_call(listener, "b", refs_b))


@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
async def test_a_broker_restart_mid_call_loses_no_final(broker, whisper, shared):
    """The broker restarts mid-speech: the bridge reconnects and every segment gets its final.

    Unshared, nothing is lost at all. Shared, mosquitto 2.0.11 (Debian's) drops what is published
    between its restart and the worker's new SUBSCRIBE (it does not restore $share subscriptions
    of offline sessions; fixed in 2.0.12): the bridge reports that audio as a gap.
    """
    streams, references = build_call(CALL_A)

    async def restart_in_the_middle(frame: int) -> None:
        if frame == 75:  # 1.5 s in: both channels are mid-speech
            await asyncio.to_thread(broker.restart)

    async with (
        running(whisper, bridge_config(broker), shared=shared) as bridge,
        Listener(broker.port, "asr/#", "listener") as listener,
        Tap(broker.port) as tap,
    ):
        await tap.control("r", {"type": "session.start", "language": "en"})
        await tap.stream("r", streams, on_frame=restart_in_the_middle)
        await tap.control("r", {"type": "input.end"})
        await listener.wait_for(lambda: closed_channels(listener, "r") == 2, 30_000 * MS)
        connects = (bridge.stats.inbound_connects, bridge.stats.outbound_connects)
    assert tap.reconnects >= 1
    assert connects[0] >= 2 and connects[1] >= 2
    # invariants: every segment has its final; lost QoS-0 partials/acks may leave seq gaps
    pairs = check_call(listener, "r", references, qos0_may_be_lost=True)
    for channel in references:
        kinds = [e["type"] for e in channel_events(listener, "r", channel)]
        assert "session.created" in kinds and kinds[-1] == "session.closed"
    gaps = [
        w
        for channel in references
        for w in channel_events(listener, "r", channel)
        if w["type"] == "warning" and w["code"] == "audio_gap"
    ]
    if not shared:
        assert gaps == [], [g["message"] for g in gaps]  # nothing the tap sent was lost
        assert_wer(pairs)
    else:
        assert sum(g["missing_ms"] for g in gaps) < 2_000  # what the broker dropped is reported
        for reference, text in pairs:  # the words outside the dropped moment are all there
            assert corpus_wer([(reference, text)]).wer <= 0.4, (reference, text)
