"""The OpenAI Realtime face, driven by the unmodified official SDK (GA and beta clients)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import openai
import pytest
import soxr

from streaming.scoring import corpus_wer
from tests.conftest import MS
from tests.mqtt.taps import telephony
from tests.server.serving import serving as serving_server

pytestmark = pytest.mark.asyncio
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


@contextlib.asynccontextmanager
async def serving(recognizer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with serving_server(recognizer) as server:
        client = openai.AsyncOpenAI(
            api_key="local", base_url=f"http://127.0.0.1:{server.port}/v1",
            websocket_base_url=f"ws://127.0.0.1:{server.port}/v1", max_retries=0,
        )  # fmt: skip
        try:
            yield client
        finally:
            await client.close()


def pcm24k(samples: np.ndarray, lead_s: float = 0.5, trail_s: float = 1.2) -> bytes:
    padded = np.concatenate(
        [np.zeros(int(lead_s * 16000)), samples, np.zeros(int(trail_s * 16000))]
    )
    resampled = soxr.resample(padded.astype(np.float32), 16000, 24000)
    return (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()


async def send_audio(conn: Any, audio: bytes, chunk: int, pace_s: float = 0.0) -> None:
    for start in range(0, len(audio), chunk):
        await conn.input_audio_buffer.append(
            audio=base64.b64encode(audio[start : start + chunk]).decode()
        )
        if pace_s:
            await asyncio.sleep(pace_s)


async def collect(conn: Any, until: int = 1) -> list[Any]:
    """Events until `until` transcriptions have completed."""
    events = []
    async with asyncio.timeout(60_000 * MS):
        async for event in conn:
            events.append(event)
            if sum(e.type == COMPLETED for e in events) >= until:
                return events
    return events


def ga_session(fmt: dict[str, Any], turn_detection: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "transcription", "audio": {"input": {
        "format": fmt, "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
        "turn_detection": turn_detection}}}  # fmt: skip


async def test_server_vad_transcribes_a_real_utterance_with_append_only_deltas(whisper, corpus):
    """GA client, 24 kHz PCM at real-time pace: one item, events in order, deltas = transcript."""
    utterance = corpus[8]  # 7 s: "and mister john dashwood had then leisure ..."
    async with (
        serving(whisper) as client,
        client.realtime.connect(extra_query={"intent": "transcription"}) as conn,
    ):
        await conn.session.update(session=ga_session(
            {"type": "audio/pcm", "rate": 24000}, {"type": "server_vad", "silence_duration_ms": 500}
        ))  # fmt: skip
        sender = asyncio.create_task(send_audio(conn, pcm24k(utterance.samples()), 4800, 0.1))
        events = await collect(conn)
        await sender
    kinds = [e.type for e in events]
    assert kinds[:2] == ["session.created", "session.updated"]
    assert events[0].session.type == "transcription"
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.created", COMPLETED]  # fmt: skip
    assert [k for k in kinds if k in order] == order
    completed = events[-1]
    item = next(e for e in events if e.type == "input_audio_buffer.committed").item_id
    assert completed.item_id == item and completed.usage.type == "duration"
    deltas = [e for e in events if e.type == DELTA]
    assert len(deltas) >= 3  # words arrive while the user is still speaking
    assert kinds.index(DELTA) < kinds.index("input_audio_buffer.speech_stopped")
    assert "".join(d.delta for d in deltas) == completed.transcript
    assert corpus_wer([(utterance.reference, completed.transcript)]).wer <= 0.15


async def test_manual_commit_makes_one_item_of_the_whole_buffer(whisper, corpus):
    """turn_detection null: two utterances with a pause, one commit, one joined transcript."""
    first, second = corpus[10], corpus[12]
    audio = pcm24k(np.concatenate([first.samples(), np.zeros(16000), second.samples()]))
    async with (
        serving(whisper) as client,
        client.realtime.connect(extra_query={"intent": "transcription"}) as conn,
    ):
        await conn.session.update(session=ga_session({"type": "audio/pcm", "rate": 24000}, None))
        await send_audio(conn, audio, 24000)
        await conn.input_audio_buffer.commit()
        events = await collect(conn)
    kinds = [e.type for e in events]
    assert "input_audio_buffer.speech_started" not in kinds  # no VAD events in manual mode
    assert kinds.count("input_audio_buffer.committed") == 1 and kinds.count(COMPLETED) == 1
    reference = f"{first.reference} {second.reference}"
    assert corpus_wer([(reference, events[-1].transcript)]).wer <= 0.15, events[-1].transcript


async def test_clear_drops_the_uncommitted_audio(whisper, corpus):
    """Audio cleared before its commit never becomes text; what follows does."""
    async with (
        serving(whisper) as client,
        client.realtime.connect(extra_query={"intent": "transcription"}) as conn,
    ):
        await conn.session.update(session=ga_session({"type": "audio/pcm", "rate": 24000}, None))
        await send_audio(conn, pcm24k(corpus[9].samples(), trail_s=0.3), 24000)
        await conn.input_audio_buffer.clear()
        await send_audio(conn, pcm24k(corpus[7].samples()), 24000)
        await conn.input_audio_buffer.commit()
        events = await collect(conn)
    assert "input_audio_buffer.cleared" in [e.type for e in events]
    text = events[-1].transcript.lower()
    assert "forward" in text and "disposed" not in text, text


async def test_g711_and_the_beta_client_work_too(whisper, corpus):
    """The beta SDK path (transcription_session.update, g711_ulaw at 8 kHz) gets its item."""
    utterance = corpus[7]  # "go forward ten meters"
    padded = np.concatenate([np.zeros(8000), utterance.samples(), np.zeros(19200)])
    audio = telephony(padded, "pcm_mulaw")
    async with (
        serving(whisper) as client,
        client.beta.realtime.connect(
            model="whisper-1", extra_query={"intent": "transcription"}
        ) as conn,
    ):
        await conn.transcription_session.update(session={
            "input_audio_format": "g711_ulaw", "turn_detection": {"type": "server_vad"},
            "input_audio_transcription": {"model": "whisper-1", "language": "en"}})  # fmt: skip
        await send_audio(conn, audio, 800)
        events = await collect(conn)
    assert events[0].type == "transcription_session.created"
    assert "transcription_session.updated" in [e.type for e in events]
    assert corpus_wer([(utterance.reference, events[-1].transcript)]).wer <= 0.25


async def test_bad_events_get_openai_errors_and_the_session_goes_on(whisper, corpus):
    """Bad base64, unknown events, an empty commit, a wrong model: error events, then work."""
    async with (
        serving(whisper) as client,
        client.realtime.connect(extra_query={"intent": "transcription"}) as conn,
    ):
        await conn.send({"type": "input_audio_buffer.append", "audio": "@@not base64@@"})
        await conn.send({"type": "response.create"})
        await conn.send({"type": "input_audio_buffer.commit"})
        await conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"transcription": {"model": "whisper-large-v9"}}}}})  # fmt: skip
        errors = []
        async with asyncio.timeout(10_000 * MS):
            async for event in conn:
                if event.type == "error":
                    errors.append(event.error)
                if len(errors) == 4:
                    break
        await send_audio(conn, pcm24k(corpus[7].samples()), 24000)
        events = await collect(conn)
    assert [e.code for e in errors] == [
        "invalid_value",
        "unsupported_event",
        "input_audio_buffer_commit_empty",
        "model_not_found",
    ]
    assert errors[0].param == "audio" and errors[0].type == "invalid_request_error"
    assert "forward" in events[-1].transcript.lower()
