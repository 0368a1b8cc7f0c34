"""Long-form speech over a real WebSocket at real-time pace: no word may be lost.

The four recordings of tests/data/long (168 s: repeated phrases, dictated digits, several
sentences in one segment, segments cut at the 30 s limit) stream at once, in real time, to the
service on its default model. Their finals must score within 2 points of faster-whisper's
offline pipeline on the same model (pooled), and no file more than 5 points worse than its own
offline WER: a recognizer that silently drops continuations fails this by 15-30 points.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile

from client.connection import SessionSettings
from client.file_streamer import PaceOptions, stream_samples
from streaming.invariants import check_events
from streaming.recognizer import OfflineOptions
from streaming.scoring import corpus_wer
from streaming.server.service import ServerConfig, StreamingServer
from tests.conftest import DATA_DIR

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

LONG = DATA_DIR / "long"


def long_form() -> list[tuple[str, np.ndarray, str]]:
    rows = (LONG / "manifest.tsv").read_text().splitlines()[1:]
    recordings = []
    for row in rows:
        name, _, reference = row.split("\t")
        samples, rate = soundfile.read(str(LONG / name), dtype="int16")
        assert rate == 16_000
        recordings.append((name, samples[:, None], reference))
    return recordings


async def test_long_form_speech_streamed_in_real_time_keeps_its_words(whisper):
    recordings = long_form()
    offline = {
        name: " ".join(
            s.text
            for s in whisper.transcribe_offline(
                samples[:, 0] / 32768, OfflineOptions(language="en")
            )
        )
        for name, samples, _ in recordings
    }
    server = StreamingServer(whisper, ServerConfig(port=0, web_root=None))
    await server.start()
    try:
        url = f"ws://127.0.0.1:{server.port}"
        pace = PaceOptions(frame_ms=40, realtime=True, trailing_silence_ms=1000)
        settings = SessionSettings(language="en")
        results = await asyncio.gather(
            *(stream_samples(url, s, 16_000, settings, pace) for _, s, _ in recordings)
        )
    finally:
        await server.shutdown()
    streamed, reference_pairs, offline_pairs = {}, [], []
    for (name, _, reference), result in zip(recordings, results, strict=True):
        assert check_events(result.events, input_ended=True) == [], name
        streamed[name] = (corpus_wer([(reference, result.text)]).wer,
                          corpus_wer([(reference, offline[name])]).wer)  # fmt: skip
        reference_pairs.append((reference, result.text))
        offline_pairs.append((reference, offline[name]))
    pooled, pooled_offline = corpus_wer(reference_pairs).wer, corpus_wer(offline_pairs).wer
    assert pooled <= pooled_offline + 0.02, (pooled, pooled_offline, streamed)
    for name, (wer, offline_wer) in streamed.items():
        assert wer <= offline_wer + 0.05, (name, wer, offline_wer)
