"""The OpenAI audio API face, driven by the unmodified official SDK (openai, pinned)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import openai
import pytest
import srt
import webvtt
from websockets.asyncio.client import connect

from streaming.offline import transcribe_file
from streaming.recognizer import OfflineOptions
from streaming.server.service import StreamingServer
from tests.conftest import DATA_DIR
from tests.server.serving import serving

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def client_of(server: StreamingServer, key: str = "local") -> AsyncIterator[openai.OpenAI]:
    """The official SDK's client for the server, closed afterwards."""
    client = sdk(server, key)
    try:
        yield client
    finally:
        client.close()


def sdk(server: StreamingServer, key: str = "local") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"http://127.0.0.1:{server.port}/v1", max_retries=0)


def offline_text(recognizer, path: Path) -> str:
    """What `asr-stream transcribe --offline` gives for the file (the native offline result)."""
    from streaming.offline import read_audio

    pieces = transcribe_file(recognizer, read_audio(path), OfflineOptions(language=None))
    return " ".join(p.text for p in pieces if p.text)


async def test_every_response_format_carries_the_offline_transcript(whisper, corpus):
    """json, text, srt, vtt and verbose_json on real clips: the native face's offline text."""
    picks = [corpus[i] for i in (2, 5, 8, 12)]
    async with serving(whisper) as server, client_of(server) as client:

        def run() -> list[dict[str, object]]:
            results = []
            for utterance in picks:
                with utterance.path.open("rb") as f:
                    plain = client.audio.transcriptions.create(file=f, model="whisper-1")
                got = {"json": plain.text}
                for fmt in ("text", "srt", "vtt"):
                    with utterance.path.open("rb") as f:
                        got[fmt] = client.audio.transcriptions.create(
                            file=f, model="gpt-4o-transcribe", response_format=fmt
                        )
                with utterance.path.open("rb") as f:
                    got["verbose"] = client.audio.transcriptions.create(
                        file=f, model=server.model_name, response_format="verbose_json",
                        timestamp_granularities=["word", "segment"], language="en",
                    )  # fmt: skip
                results.append(got)
            return results

        results = await asyncio.to_thread(run)
    for utterance, got in zip(picks, results, strict=True):
        expected = offline_text(whisper, utterance.path)
        assert got["json"] == expected and expected
        assert got["text"] == expected + "\n"
        cues = list(srt.parse(got["srt"]))
        assert " ".join(c.content.replace("\n", " ") for c in cues) == expected
        captions = webvtt.from_buffer(io.StringIO(got["vtt"]))
        assert " ".join(c.text.replace("\n", " ") for c in captions) == expected
        verbose = got["verbose"]
        assert verbose.text == expected and verbose.language == "english"
        assert abs(verbose.duration - utterance.seconds) < 0.1
        starts = [w.start for w in verbose.words]
        assert starts == sorted(starts) and verbose.words
        assert all(0 <= w.start <= w.end <= verbose.duration for w in verbose.words)
        assert " ".join(w.word for w in verbose.words) == expected
        assert " ".join(segment.text for segment in verbose.segments) == expected


async def test_granularities_follow_the_real_apis_rules(whisper, corpus):
    """Segments by default, words only when asked, and neither outside verbose_json."""
    path = corpus[7].path
    async with serving(whisper) as server, client_of(server) as client:

        def run():
            with path.open("rb") as f:
                default = client.audio.transcriptions.create(
                    file=f, model="whisper-1", response_format="verbose_json"
                )
            with path.open("rb") as f:
                words = client.audio.transcriptions.create(
                    file=f, model="whisper-1", response_format="verbose_json",
                    timestamp_granularities=["word"],
                )  # fmt: skip
            with path.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
                client.audio.transcriptions.create(
                    file=f, model="whisper-1", timestamp_granularities=["word"]
                )
            return default, words, bad.value

        default, words, bad = await asyncio.to_thread(run)
    assert default.segments and default.words is None
    assert words.words and words.segments is None
    assert bad.status_code == 400 and "verbose_json" in bad.message
    assert bad.body["param"] == "timestamp_granularities"


async def test_streamed_deltas_add_up_to_the_done_text(whisper):
    """stream=True on a 22 s recording: deltas arrive per segment and concatenate to the text."""
    path = DATA_DIR / "long" / "account.wav"
    async with serving(whisper) as server, client_of(server) as client:

        def run():
            with path.open("rb") as f:
                return list(client.audio.transcriptions.create(file=f, model="whisper-1",
                                                               stream=True))  # fmt: skip

        events = await asyncio.to_thread(run)
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(deltas) >= 3 and len(done) == 1
    assert "".join(deltas) == done[0].text == offline_text(whisper, path)


async def test_errors_raise_the_sdks_own_exception_classes(whisper, corpus, tmp_path):
    """Wrong key 401, unknown model 404, too large 413, full 429 (Retry-After), bad file 400."""
    path = corpus[0].path
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF this is not audio")
    async with (
        serving(whisper, token="s3cret", max_sessions=1, max_upload_bytes=200_000) as s,
        contextlib.AsyncExitStack() as stack,
    ):
        good, wrong = sdk(s, "s3cret"), sdk(s, "guess")
        stack.callback(good.close)
        stack.callback(wrong.close)
        big = tmp_path / "big.wav"
        with wave.open(str(big), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes(np.zeros(16000 * 10, np.int16).tobytes())

        def attempt(client: openai.OpenAI, file: Path, model: str = "whisper-1"):
            with file.open("rb") as f:
                client.audio.transcriptions.create(file=f, model=model)

        def run() -> dict[str, openai.APIStatusError]:
            raised = {}
            for name, call in {
                "auth": lambda: attempt(wrong, path),
                "model": lambda: attempt(good, path, "whisper-large"),
                "size": lambda: attempt(good, big),
                "file": lambda: attempt(good, junk),
            }.items():
                try:
                    call()
                except openai.APIStatusError as error:
                    raised[name] = error
            return raised

        raised = await asyncio.to_thread(run)
        url = f"ws://127.0.0.1:{s.port}/v1/stream?token=s3cret"
        async with connect(url) as holder:  # the only session slot is taken
            await holder.recv()

            def when_full() -> openai.RateLimitError:
                with pytest.raises(openai.RateLimitError) as refused:
                    attempt(good, path)
                return refused.value

            full = await asyncio.to_thread(when_full)
    assert isinstance(raised["auth"], openai.AuthenticationError)
    assert isinstance(raised["model"], openai.NotFoundError)
    assert raised["model"].code == "model_not_found"
    assert raised["size"].status_code == 413
    assert isinstance(raised["file"], openai.BadRequestError) and raised["file"].param == "file"
    assert full.response.headers["retry-after"] == "1"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # translations.create warns
async def test_translation_needs_a_model_that_translates(whisper, corpus):
    """tiny.en cannot translate: a clear 400 naming the model, not a wrong transcript."""
    async with serving(whisper) as server, client_of(server) as client:

        def run():
            with corpus[0].path.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
                client.audio.translations.create(file=f, model="whisper-1")
            return bad.value

        error = await asyncio.to_thread(run)
    assert "cannot translate" in error.message and error.param == "model"


async def test_models_lists_the_served_model_and_metrics_count_the_work(whisper, corpus):
    """/v1/models names the model; /metrics counts sessions, audio, finals and decodes."""
    async with serving(whisper) as server, client_of(server) as client:
        models = await asyncio.to_thread(lambda: client.models.list().data)
        assert [m.id for m in models] == [server.model_name]
        async with connect(f"ws://127.0.0.1:{server.port}/v1/stream") as ws:
            await ws.recv()
            pcm = (np.concatenate([corpus[7].samples(), np.zeros(16000)]) * 32767).astype("<i2")
            for i in range(0, len(pcm), 1600):
                await ws.send(pcm[i : i + 1600].tobytes())
            await ws.send(json.dumps({"type": "input.end"}))
            async for message in ws:
                if json.loads(message)["type"] == "session.closed":
                    break
        metrics = server.metrics.render().decode()
    assert 'asr_sessions_total{face="native"} 1.0' in metrics
    assert 'asr_finals_total{face="native",reason=' in metrics
    assert 'asr_audio_seconds_total{face="native"}' in metrics
    assert "asr_decode_seconds_count" in metrics and "asr_batch_size_count" in metrics


async def test_http_transcription_and_live_sessions_share_one_engine(whisper, corpus):
    """Settings fail as they fail in a session: an unsupported language is a 400 naming it."""
    async with serving(whisper) as server, client_of(server) as client:

        def run():
            with corpus[0].path.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
                client.audio.transcriptions.create(file=f, model="whisper-1", language="fr")
            return bad.value

        error = await asyncio.to_thread(run)
    assert error.param == "language" and error.code == "unsupported_language"
