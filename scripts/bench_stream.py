"""Streaming benchmark: latency, stability, accuracy and capacity of the WebSocket service.

Starts `asr-stream serve` as a separate process and streams the test corpus to it at real-time
pace over real WebSockets, the way a live client would. Measures:

- first-partial latency: end of an utterance's first word -> first partial that contains it;
- finalize latency: `input.finalize` sent -> `transcript.final` received;
- endpoint latency: end of the last word -> `transcript.final` (reason endpoint), which includes
  the configured silence_ms (600 ms) the VAD must hear before it ends a segment;
- partial revision rate: partial updates that change or remove an already displayed word;
- RTF: model busy time / audio duration (from the server's /health counters);
- streaming-final WER next to offline WER of the same model (whole utterance, one decode);
- capacity: concurrent real-time streams before the lag (audio.ack lag_ms) keeps growing.

Word times of the reference come from the same model's cross-attention alignment of the whole
utterance, decoded offline: an estimate (about +-40 ms), the same for every configuration.

    .venv/bin/python scripts/bench_stream.py [--model tiny.en] [--streams 1,2,4,6,8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client.connection import SessionSettings, StreamClient  # noqa: E402
from streaming.invariants import check_events  # noqa: E402
from streaming.models.loading import load_recognizer  # noqa: E402
from streaming.recognizer import DecodeRequest, join_words  # noqa: E402
from streaming.scoring import corpus_wer, normalize, whisper_normalize  # noqa: E402
from tests.conftest import load_corpus  # noqa: E402

LEAD_S = 0.5  # silence before each utterance, as a live microphone would have
TRAIL_S = 1.5  # silence after it, so the VAD endpoints the segment
FRAME_MS = 40
RESPONSIVE_FINAL_S = 1.5  # final after the end of its segment, P95, for a stream to count as live


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`asr-stream serve` in a subprocess."""

    def __init__(self, model: str, max_sessions: int):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        command = [
            str(ROOT / ".venv" / "bin" / "asr-stream"), "--log-level", "WARNING", "serve",
            "--model", model, "--port", str(self.port), "--max-sessions", str(max_sessions),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 120
        while True:
            try:
                self.health()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.2)

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/health"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def to_pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def stream(
    url: str,
    audio: np.ndarray,
    *,
    finalize_at_s: float | None = None,
    end: bool = True,
) -> dict[str, Any]:
    """Streams audio at real-time pace; returns events with arrival times (s since start)."""
    client = await StreamClient.open(url, SessionSettings(language="en"))
    log: list[tuple[float, dict[str, Any]]] = []
    t0 = time.monotonic()
    marks: dict[str, float] = {}

    async def receive() -> None:
        async for event in client.events():
            log.append((time.monotonic() - t0, event))
            if event["type"] == "session.closed":
                return

    receiver = asyncio.create_task(receive())
    pcm = to_pcm(audio)
    frame = 16 * FRAME_MS * 2
    for k, i in enumerate(range(0, len(pcm), frame)):
        delay = t0 + k * FRAME_MS / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await client.send_audio(pcm[i : i + frame])
        sent_s = (i + frame) / 32000
        if finalize_at_s is not None and "finalize" not in marks and sent_s >= finalize_at_s:
            marks["finalize"] = time.monotonic() - t0
            await client.finalize()
    if finalize_at_s is not None and "finalize" not in marks:  # released at the very end
        marks["finalize"] = time.monotonic() - t0
        await client.finalize()
    if end:
        await client.end()
    await receiver
    await client.close()
    events = [e for _, e in log]
    return {"log": log, "marks": marks, "events": events}


def reference_words(recognizer: Any, samples: np.ndarray) -> list[tuple[str, float]]:
    """(normalized word, end time in s) from the offline decode's alignment."""
    words = recognizer.decode([DecodeRequest(audio=samples, final=True)])[0].words
    out = []
    for word in words:
        for token in normalize(word.text):
            out.append((token, word.end_ms / 1000))
    return out


def revision_rate(events: list[dict[str, Any]]) -> tuple[int, int]:
    """(partials that change or remove a displayed word, partials)."""
    revisions = total = 0
    shown: dict[int, list[str]] = {}
    for event in events:
        if event.get("type") != "transcript.partial":
            continue
        words = normalize(event["committed"] + event["tentative"])
        before = shown.get(event["segment_id"], [])
        # a changed last word of the previous display counts: the reader saw it change
        if words[: len(before)] != before:
            revisions += 1
        total += 1
        shown[event["segment_id"]] = words
    return revisions, total


async def single_stream(url: str, corpus: list[Any], refs: list[Any]) -> dict[str, Any]:
    first_partial, endpoint, texts, revisions, partials = [], [], [], 0, 0
    problems = []
    for utterance, ref in zip(corpus, refs, strict=True):
        speech = utterance.samples()
        audio = np.concatenate(
            [np.zeros(int(LEAD_S * 16000)), speech, np.zeros(int(TRAIL_S * 16000))]
        )
        run = await stream(url, audio)
        problems += check_events(run["events"], input_ended=True)
        first_word, first_end = ref[0]
        for at, event in run["log"]:
            if event["type"] == "transcript.partial" and first_word in normalize(
                event["committed"] + event["tentative"]
            ):
                first_partial.append(at - (LEAD_S + first_end))
                break
        last_end = LEAD_S + ref[-1][1]
        for at, event in run["log"]:
            if event["type"] == "transcript.final" and event["reason"] == "endpoint":
                endpoint.append(at - last_end)
                break
        texts.append(" ".join(e["text"] for _, e in run["log"] if e["type"] == "transcript.final"))
        r, n = revision_rate(run["events"])
        revisions, partials = revisions + r, partials + n
    return {
        "first_partial": first_partial,
        "endpoint": endpoint,
        "texts": texts,
        "revisions": revisions,
        "partials": partials,
        "violations": problems,
    }


async def finalize_pass(url: str, corpus: list[Any], refs: list[Any]) -> dict[str, Any]:
    latencies, texts = [], []
    for utterance, ref in zip(corpus, refs, strict=True):
        speech = utterance.samples()
        audio = np.concatenate([np.zeros(int(LEAD_S * 16000)), speech])
        # finalize right after the last word has been sent, as a push-to-talk client would
        run = await stream(url, audio, finalize_at_s=LEAD_S + ref[-1][1] + 0.1)
        sent = run["marks"]["finalize"]
        for at, event in run["log"]:
            if event["type"] == "transcript.final" and at >= sent:
                latencies.append(at - sent)
                break
        texts.append(" ".join(e["text"] for _, e in run["log"] if e["type"] == "transcript.final"))
    return {"finalize": latencies, "texts": texts}


async def capacity_pass(url: str, corpus: list[Any], n: int, seconds: float) -> dict[str, Any]:
    """n concurrent real-time streams of the corpus joined with 1 s gaps; lag over time."""
    gap = np.zeros(16000)
    joined = np.concatenate([np.concatenate([u.samples(), gap]) for u in corpus])
    joined = joined[: int(seconds * 16000)]
    runs = await asyncio.gather(*(stream(url, np.roll(joined, k * 16000 * 3)) for k in range(n)))
    lags, slopes, endpoint_delays = [], [], []
    for run in runs:
        acks = [(at, e) for at, e in run["log"] if e["type"] == "audio.ack"]
        series = [(e["received_ms"] / 1000, e["lag_ms"] / 1000) for _, e in acks]
        if len(series) > 4:
            x, y = np.array(series).T
            slopes.append(float(np.polyfit(x, y, 1)[0]))
            lags += list(y)
        for at, event in run["log"]:
            if event["type"] == "transcript.final":
                endpoint_delays.append(at - event["end_ms"] / 1000)
    return {
        "streams": n,
        "lag_p95_s": percentile(lags, 95),
        "lag_slope": max(slopes) if slopes else float("nan"),
        "final_after_segment_end_p95_s": percentile(endpoint_delays, 95),
        "errors": sum(e["type"] == "error" for run in runs for e in run["events"]),
    }


def fmt(values: list[float]) -> str:
    return f"{percentile(values, 50) * 1000:.0f} / {percentile(values, 95) * 1000:.0f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--streams", default="1,2,3,4,6,8", help="concurrency levels to try")
    parser.add_argument("--capacity-seconds", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench_stream.json")
    args = parser.parse_args()

    corpus = load_corpus()
    recognizer = load_recognizer(args.model)
    refs = [reference_words(recognizer, u.samples()) for u in corpus]
    offline = [
        join_words(recognizer.decode([DecodeRequest(audio=u.samples(), final=True)])[0].words)
        for u in corpus
    ]
    del recognizer

    levels = [int(n) for n in args.streams.split(",")]
    server = Server(args.model, max_sessions=max(levels) + 1)
    try:
        before = server.health()["decoder"]["busy_s"]
        single = await single_stream(server.url, corpus, refs)
        busy = server.health()["decoder"]["busy_s"] - before
        audio_s = sum(LEAD_S + u.seconds + TRAIL_S for u in corpus)
        finalize = await finalize_pass(server.url, corpus, refs)
        capacity = []
        for n in levels:
            capacity.append(await capacity_pass(server.url, corpus, n, args.capacity_seconds))
            print(f"  capacity {n}: {capacity[-1]}", file=sys.stderr)
    finally:
        server.stop()

    references = [u.reference for u in corpus]
    stream_wer = corpus_wer(zip(references, single["texts"], strict=True))
    offline_wer = corpus_wer(zip(references, offline, strict=True))
    stream_wer_w = corpus_wer(zip(references, single["texts"], strict=True), whisper_normalize)
    offline_wer_w = corpus_wer(zip(references, offline, strict=True), whisper_normalize)
    held = [c["streams"] for c in capacity if c["lag_slope"] < 0.05 and c["errors"] == 0]
    # keeping up is not enough for live captions: finals must also come soon after speech ends
    responsive = [
        c["streams"] for c in capacity
        if c["streams"] in held and c["final_after_segment_end_p95_s"] <= RESPONSIVE_FINAL_S
    ]  # fmt: skip
    results = {
        "model": args.model,
        "first_partial_s": single["first_partial"],
        "finalize_s": finalize["finalize"],
        "endpoint_s": single["endpoint"],
        "revision_rate": single["revisions"] / max(1, single["partials"]),
        "rtf": busy / audio_s,
        "stream_wer": stream_wer.wer,
        "offline_wer": offline_wer.wer,
        "stream_wer_whisper_norm": stream_wer_w.wer,
        "offline_wer_whisper_norm": offline_wer_w.wer,
        "capacity": capacity,
        "max_realtime_streams": max(held) if held else 0,
        "max_responsive_streams": max(responsive) if responsive else 0,
        "violations": single["violations"],
        "texts": single["texts"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\n### Streaming, {args.model}, {os.cpu_count()} cores (P50 / P95, ms)\n")
    print("| metric | value | target |")
    print("|---|---|---|")
    print(f"| first-partial latency | {fmt(single['first_partial'])} | P50 <= 1500 |")
    print(f"| finalize latency | {fmt(finalize['finalize'])} | P50 <= 500 |")
    print(f"| endpoint latency (incl. 600 ms silence) | {fmt(single['endpoint'])} | |")
    print(f"| partial revision rate | {results['revision_rate']:.1%} "
          f"({single['revisions']}/{single['partials']}) | |")  # fmt: skip
    print(f"| RTF (one stream, model busy / audio) | {results['rtf']:.3f} | |")
    counts = f"{stream_wer.errors} / {offline_wer.errors} of {stream_wer.words}"
    print(
        f"| WER streaming finals / offline | {stream_wer.wer:.1%} / {offline_wer.wer:.1%} "
        f"({counts}) | within 2 pts |"
    )
    print(f"| WER, Whisper normalizer | {stream_wer_w.wer:.1%} / {offline_wer_w.wer:.1%} | |")
    print(f"| protocol violations | {len(single['violations'])} | 0 |")
    print(
        "\n| concurrent streams | lag P95 (s) | lag slope (s/s) "
        "| final after segment end P95 (s) | errors |"
    )
    print("|---|---|---|---|---|")
    for c in capacity:
        print(f"| {c['streams']} | {c['lag_p95_s']:.2f} | {c['lag_slope']:+.3f} | "
              f"{c['final_after_segment_end_p95_s']:.2f} | {c['errors']} |")  # fmt: skip
    held_streams = results["max_realtime_streams"]
    print(f"\nreal-time streams held (lag slope < 0.05 s/s, no errors): {held_streams}")
    print(
        f"of which finals arrive within {RESPONSIVE_FINAL_S:.1f} s of segment end (P95): "
        f"{results['max_responsive_streams']}"
    )


if __name__ == "__main__":
    asyncio.run(main())
