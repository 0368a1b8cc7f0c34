"""The Deepgram face, driven by the unmodified official SDK (deepgram-sdk, pinned)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streaming.scoring import corpus_wer
from streaming.server.service import StreamingServer
from tests.conftest import MS
from tests.mqtt.taps import telephony
from tests.server.serving import serving

pytestmark = pytest.mark.asyncio


def deepgram(server: StreamingServer, key: str = "k") -> AsyncDeepgramClient:
    base = f"127.0.0.1:{server.port}"
    environment = DeepgramClientEnvironment(
        base=f"http://{base}", production=f"ws://{base}", agent=f"ws://{base}",
        agent_rest=f"http://{base}",
    )  # fmt: skip
    return AsyncDeepgramClient(api_key=key, environment=environment)


def s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def stream(conn: Any, audio: bytes, chunk: int, then: list[str]) -> None:
    """Sends audio at real-time pace (`chunk` bytes per 100 ms), then the control messages."""
    for start in range(0, len(audio), chunk):
        await conn.send_media(audio[start : start + chunk])
        await asyncio.sleep(0.1)
    for message in then:
        await getattr(conn, f"send_{message}")()
        await asyncio.sleep(0.3)


async def test_interim_and_final_results_of_a_real_utterance(whisper, corpus):
    """linear16 16 kHz, interim results, VAD events, utterance ends: the Deepgram sequence."""
    utterance = corpus[8]
    audio = s16(np.concatenate([np.zeros(8000), utterance.samples(), np.zeros(24000)]))
    async with serving(whisper, token="k") as server, deepgram(server).listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=16000, channels=1,
        interim_results=True, utterance_end_ms=1000, vad_events=True, endpointing=300,
        language="en-US",
    ) as conn:  # fmt: skip
        sender = asyncio.create_task(stream(conn, audio, 3200, ["close_stream"]))
        messages = [m async for m in conn]
        await sender
    kinds = [m.type for m in messages]
    assert kinds[0] == "SpeechStarted" and kinds[-1] == "Metadata"
    interim = [m for m in messages if m.type == "Results" and not m.is_final]
    finals = [m for m in messages if m.type == "Results" and m.is_final]
    assert len(interim) >= 3 and len(finals) == 1
    final = finals[0]
    assert final.speech_final and not final.from_finalize
    assert messages[kinds.index("UtteranceEnd") - 1] is final  # the utterance ended with it
    transcript = final.channel.alternatives[0].transcript
    assert corpus_wer([(utterance.reference, transcript)]).wer <= 0.15
    words = final.channel.alternatives[0].words
    assert [w.punctuated_word for w in words] == transcript.split()
    assert all(final.start <= w.start <= w.end <= final.start + final.duration for w in words)
    # the model's word probabilities, not a constant; the alternative's is their mean
    confidences = [w.confidence for w in words]
    assert all(0 < c <= 1 for c in confidences) and len(set(confidences)) > 1
    mean = sum(confidences) / len(confidences)
    assert final.channel.alternatives[0].confidence == pytest.approx(mean, abs=1e-3)


async def test_finalize_answers_from_finalize_and_close_stream_drains(whisper, corpus):
    """mulaw 8 kHz, no interims: a Finalize gives from_finalize, CloseStream drains the rest."""
    first, second = corpus[7], corpus[12]
    audio_first = telephony(np.concatenate([np.zeros(4000), first.samples()]), "pcm_mulaw")
    audio_second = telephony(np.concatenate([np.zeros(4000), second.samples()]), "pcm_mulaw")
    async with (
        serving(whisper) as server,
        deepgram(server).listen.v1.connect(
            model="nova-3", encoding="mulaw", sample_rate=8000, channels=1
        ) as conn,
    ):

        async def send() -> None:
            await stream(conn, audio_first, 800, ["finalize"])
            await stream(conn, audio_second, 800, ["close_stream"])

        sender = asyncio.create_task(send())
        messages = [m async for m in conn]
        await sender
    finals = [m for m in messages if m.type == "Results" and m.is_final]
    assert not [m for m in messages if m.type == "Results" and not m.is_final]
    assert finals[0].from_finalize and "forward" in finals[0].channel.alternatives[0].transcript
    assert messages[-1].type == "Metadata" and abs(messages[-1].duration - 6.58) < 0.1
    text = " ".join(m.channel.alternatives[0].transcript for m in finals[1:])
    assert corpus_wer([(second.reference, text)]).wer <= 0.25, text


async def test_bad_settings_and_messages_get_deepgram_errors(whisper):
    """An unknown encoding is refused with Error and 1008; an unknown message gets an Error."""
    async with serving(whisper) as server:
        base = f"ws://127.0.0.1:{server.port}/v1/listen"
        async with connect(base + "?encoding=opus") as ws:
            error = json.loads(await ws.recv())
            assert error["type"] == "Error" and "opus" in error["description"]
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
        async with connect(base + "?encoding=linear16&sample_rate=16000") as ws:
            await ws.send(json.dumps({"type": "Dance"}))
            async with asyncio.timeout(5_000 * MS):
                error = json.loads(await ws.recv())
            assert error["type"] == "Error" and "Dance" in error["description"]
            await ws.send(json.dumps({"type": "CloseStream"}))
            async with asyncio.timeout(5_000 * MS):
                assert json.loads(await ws.recv())["type"] == "Metadata"
