"""Soak benchmark: hours of audio through one session, then idle crowds and connection floods.

    .venv/bin/python scripts/bench_soak.py [--minutes 60] [--idle 200] [--flood 300]

`asr-stream serve` runs as its own process. Then:

1. **Long session.** The test speech (tests/data: short, long-form and synthetic sets, 1 s of
   silence between files) is looped to `--minutes` of audio and sent through ONE session as fast
   as the server keeps up (the client's ack flow control), VAD segmenting as usual. Every
   `--sample-s` the script records the server's RSS (/proc), the time a `GET /health` takes (the
   event loop's responsiveness) and the mean decode time of the requests in that window
   (/health's decoder counters). Reported: each figure at the start and end, and its slope per
   hour of audio from a least-squares line (flat means no leak, no slow-down). Also the WER of
   the whole session against the looped references: words lost over a long session show here.
2. **Idle crowd.** `--idle` connections that send nothing open next to `--active` real-time
   streams of the long-form set: the active streams' final delay and the server's RSS with and
   without the crowd; the idle ones must be closed by the idle timeout (4005).
3. **Flood.** `--flood` connection attempts at once on a server whose `max_sessions` is nearly
   taken: how fast they are refused (`server_full`) and whether an active stream is disturbed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_stream import Server, percentile  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from client.connection import SessionSettings  # noqa: E402
from client.file_streamer import PaceOptions, stream_samples  # noqa: E402
from streaming.scoring import corpus_wer  # noqa: E402

DATA = ROOT / "tests" / "data"
MANIFESTS = [DATA / "manifest.tsv", DATA / "long" / "manifest.tsv",
             DATA / "synthetic" / "manifest.tsv"]  # fmt: skip
RATE = 16_000


def corpus() -> tuple[np.ndarray, str]:
    """All test speech, 1 s of silence after each file, and the references joined."""
    pieces, references = [], []
    for manifest in MANIFESTS:
        for row in manifest.read_text().splitlines()[1:]:
            fields = row.split("\t")  # file first, reference last, in every manifest
            audio, rate = soundfile.read(str(manifest.parent / fields[0]), dtype="float32")
            assert rate == RATE
            pieces += [audio if audio.ndim == 1 else audio[:, 0], np.zeros(RATE, np.float32)]
            references.append(fields[-1])
    return np.concatenate(pieces), " ".join(references)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def slope_per_hour(hours: list[float], values: list[float]) -> float:
    if len(hours) < 3:
        return float("nan")
    return float(np.polyfit(hours, values, 1)[0])


async def long_session(server: Server, minutes: float, sample_s: float) -> dict[str, Any]:
    speech, reference = corpus()
    loops = max(1, round(minutes * 60 * RATE / len(speech)))
    samples = (np.clip(np.tile(speech, loops), -1, 1) * 32767).astype(np.int16)[:, None]
    samples_audio_h = len(samples) / RATE / 3600
    rows: list[dict[str, float]] = []
    done = asyncio.Event()
    processed_ms = 0.0

    def on_event(event: dict[str, Any]) -> None:
        nonlocal processed_ms
        if event["type"] == "audio.ack":
            processed_ms = float(event.get("processed_ms", processed_ms))

    async def sampler() -> None:
        previous = server.health()["decoder"]
        while not done.is_set():
            await asyncio.sleep(sample_s)
            began = time.perf_counter()
            health = await asyncio.to_thread(server.health)
            probe_ms = 1000 * (time.perf_counter() - began)
            decoder = health["decoder"]
            requests = decoder["requests"] - previous["requests"]
            busy = decoder["busy_s"] - previous["busy_s"]
            previous = decoder
            rows.append({
                "audio_h": processed_ms / 3_600_000, "rss_mb": rss_mb(server.process.pid),
                "probe_ms": probe_ms, "decode_ms": 1000 * busy / requests if requests else np.nan,
            })  # fmt: skip

    task = asyncio.create_task(sampler())
    began = time.monotonic()
    pace = PaceOptions(frame_ms=100, realtime=False, trailing_silence_ms=1500)
    result = await stream_samples(
        server.url, samples, RATE, SessionSettings(language="en"), pace, on_event=on_event
    )
    wall_s = time.monotonic() - began
    done.set()
    await task
    text = " ".join(f["text"] for f in result.finals)
    wer = corpus_wer([(" ".join([reference] * loops), text)])
    # the same audio comes once per loop: per loop, a leak or slow-down shows as a trend that
    # the changing content within a loop cannot fake
    loop_ms = 1000 * len(speech) / RATE
    per_loop = []
    for k in range(loops):
        finals = [f for f in result.finals if k <= f["start_ms"] // loop_ms < k + 1]
        inside = [r for r in rows if k <= r["audio_h"] * 3_600_000 / loop_ms < k + 1]
        decode = [r["decode_ms"] for r in inside if not np.isnan(r["decode_ms"])]
        per_loop.append({
            "wer": corpus_wer([(reference, " ".join(f["text"] for f in finals))]).wer,
            "rss_mb": max((r["rss_mb"] for r in inside), default=np.nan),
            "decode_ms": float(np.mean(decode)) if decode else np.nan,
            "probe_ms_p95": percentile([r["probe_ms"] for r in inside], 95),
        })  # fmt: skip
    errors = [e for e in result.events if e["type"] == "error"]
    usable = [r for r in rows if not np.isnan(r["decode_ms"])]
    hours = [r["audio_h"] for r in usable]
    summary = {"audio_h": samples_audio_h, "wall_s": wall_s, "loops": loops,
               "wer": wer.wer, "errors": errors,
               "per_loop": per_loop, "reference": reference,
               "finals": [{k: f[k] for k in ("start_ms", "end_ms", "text")}
                          for f in result.finals],
               "samples": rows}  # fmt: skip
    for key in ("rss_mb", "probe_ms", "decode_ms"):
        values = [r[key] for r in usable]
        summary[key] = {
            "first": values[0] if values else np.nan, "last": values[-1] if values else np.nan,
            "slope_per_h": slope_per_hour(hours, values),
        }  # fmt: skip
    return summary


async def hold_idle(url: str, count: int) -> tuple[list[Any], list[float]]:
    """Opens `count` connections that only read; returns them and their connect times (s)."""
    connections, times = [], []
    for _ in range(count):
        began = time.perf_counter()
        ws = await connect(url)
        await ws.recv()  # session.created
        times.append(time.perf_counter() - began)
        connections.append(ws)
    return connections, times


async def close_code(ws: Any, within_s: float) -> int | None:
    try:
        async with asyncio.timeout(within_s):
            async for _ in ws:
                pass
    except (ConnectionClosed, TimeoutError):
        pass
    return ws.close_code


async def active_streams(url: str, count: int) -> list[float]:
    """Final delays (s after the audio of the segment was sent) of `count` real-time streams."""
    rows = (DATA / "long" / "manifest.tsv").read_text().splitlines()[1:]
    name = rows[0].split("\t")[0]
    audio, _ = soundfile.read(str(DATA / "long" / name), dtype="int16")
    samples = audio[:, None] if audio.ndim == 1 else audio[:, :1]
    pace = PaceOptions(frame_ms=40, realtime=True, trailing_silence_ms=1500)
    results = await asyncio.gather(*(
        stream_samples(url, samples, RATE, SessionSettings(language="en"), pace)
        for _ in range(count)
    ))  # fmt: skip
    delays = []
    for result in results:
        for event, at in zip(result.events, result.received_at, strict=True):
            if event["type"] == "transcript.final":
                delays.append(at - result.started_at - event["end_ms"] / 1000)
    return delays


async def idle_crowd(model: str, idle: int, active: int, idle_timeout_s: float) -> dict[str, Any]:
    server = Server(model, idle + active + 1, ["--idle-timeout", str(idle_timeout_s)])
    try:
        url = server.url + "/v1/stream"
        alone = await active_streams(url, active)
        base_rss = rss_mb(server.process.pid)  # after decoding: the model's buffers are grown
        connections, connect_s = await hold_idle(url, idle)
        crowd_rss = rss_mb(server.process.pid)
        crowded = await active_streams(url, active)
        codes = await asyncio.gather(*(close_code(ws, idle_timeout_s + 30) for ws in connections))
        return {
            "idle": idle, "active": active, "rss_mb": [base_rss, crowd_rss],
            "connect_p50_ms": 1000 * percentile(connect_s, 50),
            "final_delay_alone": [percentile(alone, 50), percentile(alone, 95)],
            "final_delay_crowded": [percentile(crowded, 50), percentile(crowded, 95)],
            "closed_4005": sum(c == 4005 for c in codes),
            "sessions_after": server.health()["sessions"],
        }  # fmt: skip
    finally:
        server.stop()


async def flood(model: str, count: int) -> dict[str, Any]:
    server = Server(model, 2, [])
    try:
        url = server.url + "/v1/stream"
        active = asyncio.create_task(active_streams(url, 1))
        await asyncio.sleep(2)
        sitter = await connect(url)  # the server is now full: 2 of 2
        await sitter.recv()

        async def attempt() -> tuple[float, str]:
            began = time.perf_counter()
            try:
                async with connect(url, open_timeout=30) as ws:
                    message = json.loads(await ws.recv())
                    return time.perf_counter() - began, message.get("code", message["type"])
            except Exception as exc:  # refused at the TCP level counts too
                return time.perf_counter() - began, type(exc).__name__

        answers = await asyncio.gather(*(attempt() for _ in range(count)))
        delays = await active
        await sitter.close()
        refusal_s = [s for s, _ in answers]
        kinds: dict[str, int] = {}
        for _, kind in answers:
            kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "attempts": count, "answers": kinds,
            "refusal_ms": [1000 * percentile(refusal_s, 50), 1000 * percentile(refusal_s, 95)],
            "active_final_delay": [percentile(delays, 50), percentile(delays, 95)],
        }  # fmt: skip
    finally:
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--minutes", type=float, default=60.0, help="audio of the long session")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--active", type=int, default=2)
    parser.add_argument("--idle-timeout", type=float, default=20.0)
    parser.add_argument("--flood", type=int, default=300)
    parser.add_argument("--skip", default="", help="of long,idle,flood")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench_soak.json")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    results: dict[str, Any] = {"command": " ".join(sys.argv[1:])}
    if "long" not in skip:
        server = Server(args.model, 2, [])
        try:
            results["long_session"] = await long_session(server, args.minutes, args.sample_s)
        finally:
            server.stop()
        shown = {k: v for k, v in results["long_session"].items()
                 if k not in ("samples", "finals", "reference")}  # fmt: skip
        print(json.dumps({**shown, "finals": len(results["long_session"]["finals"])},
                         default=str), flush=True)  # fmt: skip
    if "idle" not in skip:
        results["idle"] = await idle_crowd(args.model, args.idle, args.active, args.idle_timeout)
        print(json.dumps(results["idle"]), flush=True)
    if "flood" not in skip:
        results["flood"] = await flood(args.model, args.flood)
        print(json.dumps(results["flood"]), flush=True)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
