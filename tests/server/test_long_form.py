"""Long-form speech over a real WebSocket at real-time pace: no word may be lost.

The four recordings of tests/data/long (168 s: repeated phrases, dictated digits, several
sentences in one segment, segments cut at the 30 s limit) stream two at a time, in real time, to
the service on its default model. No file may lose 10 or more words beyond what faster-whisper's
offline pipeline on the same model loses (a recognizer that silently drops continuations loses
10-40), nor more than 3 words beyond it at all (a phrase skipped on a repeat costs 3-4), and the
pooled WER must stay within 2 points of offline.
"""

from __future__ import annotations

import asyncio

import ctranslate2
import numpy as np
import pytest
import soundfile

from client.connection import SessionSettings
from client.file_streamer import PaceOptions, stream_samples
from streaming.invariants import check_events
from streaming.recognizer import OfflineOptions
from streaming.scoring import corpus_wer, normalize
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
    ctranslate2.set_random_seed(0)  # the pipeline's temperature fallback samples: the same draw
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
        # two streams at a time, the machine's measured capacity for continuous speech
        # (BENCHMARKS.md, issue 10): the longest file with the shortest, then the other two.
        # All four at once (twice the capacity) scored 11.75 % against 9.65 % offline.
        by_length = sorted(range(len(recordings)), key=lambda i: len(recordings[i][1]))
        pairs = [(by_length[-1], by_length[0]), (by_length[-2], by_length[1])]
        results = [None] * len(recordings)
        for pair in pairs:
            done = await asyncio.gather(
                *(stream_samples(url, recordings[i][1], 16_000, settings, pace) for i in pair)
            )
            for i, result in zip(pair, done, strict=True):
                results[i] = result
    finally:
        await server.shutdown()
    texts = {name: result.text for (name, _, _), result in zip(recordings, results, strict=True)}
    streamed, reference_pairs, offline_pairs = {}, [], []
    for (name, _, reference), result in zip(recordings, results, strict=True):
        assert result is not None
        assert check_events(result.events, input_ended=True) == [], name
        streamed[name] = (deletions(reference, result.text), deletions(reference, offline[name]))
        reference_pairs.append((reference, result.text))
        offline_pairs.append((reference, offline[name]))
    # A dropped continuation deletes 10-40 words of a file (35 of 119 before issue 10): never.
    for name, (lost, lost_offline) in streamed.items():
        assert lost < lost_offline + 10, (name, lost, lost_offline, texts[name])
    # Everything else, pooled: the old code was 15 points worse. Measured 10.4 % against 9.6 %
    # (BENCHMARKS.md, "Model lanes"). Per file the bound is on lost words (below), not on WER:
    # austen_joined is 5.6 points behind its offline WER on one greedy choice that is no lost
    # word ("ill-disposed" heard twice as "old-sposed", also when streamed alone).
    pooled, pooled_offline = corpus_wer(reference_pairs).wer, corpus_wer(offline_pairs).wer
    assert pooled <= pooled_offline + 0.02, (pooled, pooled_offline, streamed, texts)
    # No word lost at all: at most 3 deletions beyond offline per file ("can not" scored against
    # "cannot" costs one). Before the recheck of skipped speech, gettysburg's closing "of the
    # people, by the people, for the people" lost "by the people" here (10 against 6).
    excess = {name: lost - lost_offline for name, (lost, lost_offline) in streamed.items()}
    assert max(excess.values()) <= 3, (excess, texts)


def deletions(reference: str, hypothesis: str) -> int:
    """Reference words a minimal word alignment deletes (substitutions preferred on ties)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    # cost[i][j]: (edits, deletions) aligning ref[:i] with hyp[:j]; fewest edits, then fewest
    # deletions, so a substitution is never counted as a deletion plus an insertion
    cost = [[(j, 0) for j in range(len(hyp) + 1)]]
    for i in range(1, len(ref) + 1):
        row = [(i, i)]
        for j in range(1, len(hyp) + 1):
            same = ref[i - 1] == hyp[j - 1]
            diagonal = cost[i - 1][j - 1]
            options = [
                (diagonal[0] + (0 if same else 1), diagonal[1]),
                (cost[i - 1][j][0] + 1, cost[i - 1][j][1] + 1),  # ref word deleted
                (row[j - 1][0] + 1, row[j - 1][1]),  # hyp word inserted
            ]
            row.append(min(options))
        cost.append(row)
    return cost[-1][-1][1]
