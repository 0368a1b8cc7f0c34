"""MQTT bridge benchmark: how many real-time two-channel calls one worker holds, and how long a
call's last final takes after the call ends.

Starts mosquitto and `asr-stream mqtt` (one worker, its own process) on this machine, then runs
N concurrent calls at real-time pace for each N: two channels per call (agent mu-law, customer
A-law, 8 kHz, 20 ms messages), each ~15 s of real speech from tests/data, then `input.end` right
after the last word. The tap and the event listener run in this process.

A worker *holds* N calls when every channel gets all its finals and session.closed, no error
and no `lagging` warning arrive, and the lag does not grow: for every channel, the slope of the
audio.ack lag (audio received but not yet decoded) against the audio position stays below
MAX_LAG_SLOPE (an overloaded worker falls behind by a fixed fraction of every second of audio).
Capacity is the largest N for which every N' <= N held. End-of-call latency: `input.end`
published -> the call's last transcript.final received (both channels), measured here in the
tap's process.

    .venv/bin/python scripts/bench_mqtt.py [--calls 1,2,3,4,6] [--model tiny.en]

`--manifest DIR/manifest.tsv` gives each channel one recording of that folder instead (call k:
recordings 2k and 2k + 1, round-robin), such as the long-form set or its phone-line and noisy
copies from `scripts/make_degraded_speech.py`: the WER of long calls through the real telephony
path (8 kHz G.711 over MQTT, decoded and resampled by the service).

Soak (`--soak CALLS`): many short calls through one worker, `--soak-concurrency` at a time
(real-time pace, `--seconds` of speech per channel), in waves. After each wave it records the
worker's RSS (/proc) and the wave's end-of-call latencies; reported are the least-squares slopes
of both per 100 calls (flat means no per-call leak and no slow-down), the channels that did not
close, errors, protocol violations and the pooled WER, and the calls the worker still holds at
the end (its retained status; must be 0).

    .venv/bin/python scripts/bench_mqtt.py --soak 200 --soak-concurrency 2 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streaming.invariants import check_events  # noqa: E402
from streaming.scoring import corpus_wer  # noqa: E402
from tests.conftest import Utterance, load_corpus  # noqa: E402
from tests.mqtt.taps import Broker, Listener, Tap, packets, telephony  # noqa: E402

FRAME_MS = 20
LEAD_S, PAUSE_S, TRAIL_S = 0.5, 1.0, 0.3  # silence before, between and after utterances
CHANNELS = {"agent": "pcm_mulaw", "customer": "pcm_alaw"}
MAX_LAG_SLOPE = 0.1  # lag growth per second of audio: 100 ms/s means 10 % behind real time


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass(frozen=True)
class Recording:
    """One recording of a manifest (file, reference columns), any format soundfile reads."""

    path: Path
    reference: str

    def samples(self) -> np.ndarray:
        audio, rate = soundfile.read(str(self.path), dtype="float32", always_2d=True)
        assert rate == 16_000, f"{self.path}: {rate} Hz, 16 kHz expected"
        return audio.mean(axis=1)


def read_manifest(table: Path) -> list[Recording]:
    from bench_replay import manifest  # the replay's reader (imported only when asked for)

    return [Recording(path, reference) for path, reference, _ in manifest(table)]


def channel_audio(utterances: list[Any], encoding: str) -> tuple[list[bytes], str, float]:
    """Utterances with pauses between them, ending 0.3 s after the last word."""
    parts = [np.zeros(int(LEAD_S * 16000), np.float32)]
    for i, utterance in enumerate(utterances):
        if i:
            parts.append(np.zeros(int(PAUSE_S * 16000), np.float32))
        parts.append(utterance.samples())
    parts.append(np.zeros(int(TRAIL_S * 16000), np.float32))
    audio = np.concatenate(parts)
    reference = " ".join(u.reference for u in utterances)
    return packets(telephony(audio, encoding), encoding, FRAME_MS), reference, len(audio) / 16000


def plan_calls(
    n: int, target_s: float, manifest: Path | None = None
) -> list[dict[str, tuple[list[bytes], str, float]]]:
    """N calls; each channel a different rotation of the corpus, about target_s long, or one
    recording of the manifest."""
    corpus = load_corpus()
    recordings = read_manifest(manifest) if manifest else []
    calls = []
    for k in range(n):
        call = {}
        for c, (channel, encoding) in enumerate(CHANNELS.items()):
            if recordings:
                call[channel] = channel_audio([recordings[(2 * k + c) % len(recordings)]], encoding)
                continue
            start = (2 * k + c) * 3
            picked: list[Utterance] = []
            total = LEAD_S
            while total < target_s:
                utterance = corpus[(start + len(picked)) % len(corpus)]
                picked.append(utterance)
                total += utterance.seconds + PAUSE_S
            call[channel] = channel_audio(picked, encoding)
        calls.append(call)
    return calls


async def run_calls(
    port: int, run_id: int, n: int, target_s: float, manifest: Path | None = None
) -> dict[str, Any]:
    calls = plan_calls(n, target_s, manifest)
    ended: dict[str, float] = {}
    async with Listener(port, "asr/bench/#", f"bench-listener-{run_id}") as listener:

        async def one(k: int, call: dict) -> None:
            await asyncio.sleep(k * 0.37)  # calls start at different moments, as in life
            async with Tap(port, tenant="bench") as tap:
                streams = {channel: items for channel, (items, _, _) in call.items()}
                call_id = f"r{run_id}c{k}"  # a new call id per run: ended calls stay ended
                await tap.stream(call_id, streams, frame_ms=FRAME_MS)
                await tap.control(call_id, {"type": "input.end"})
                ended[call_id] = time.monotonic()

        await asyncio.gather(*(one(k, call) for k, call in enumerate(calls)))

        def closed() -> bool:
            done = [e for e in listener.events() if e["type"] == "session.closed"]
            return len(done) >= 2 * n

        with contextlib.suppress(TimeoutError):  # analyse() reports what is missing
            await listener.wait_for(closed, 60)
        messages = list(listener.messages)
    return {"calls": calls, "ended": ended, "messages": messages}


def analyse(n: int, run: dict[str, Any]) -> dict[str, Any]:
    arrivals: dict[tuple[str, int], float] = {}
    by_session: dict[str, list[dict]] = {}
    for message in run["messages"]:
        if not message.topic.endswith("/events"):
            continue
        event = message.json()
        key = (event["session_id"], event["seq"])
        if key in arrivals:
            continue
        arrivals[key] = message.at
        event["_call"] = message.topic.split("/")[-2]
        by_session.setdefault(event["session_id"], []).append(event)
    problems, errors, pairs, slopes, lagging = [], 0, [], [], 0
    lags: list[float] = []
    latencies = []
    sessions_closed = 0
    for session_id, events in by_session.items():
        events.sort(key=lambda e: e["seq"])
        if session_id.startswith("bridge:"):
            continue
        clean = [{k: v for k, v in e.items() if k != "_call"} for e in events]
        problems += check_events(clean, input_ended=True)
        errors += sum(e["type"] == "error" for e in events)
        sessions_closed += events[-1]["type"] == "session.closed"
        call, channel = events[0]["_call"], events[0]["channel"]
        k = int(call.split("c")[-1])
        reference = run["calls"][k][channel][1]
        text = " ".join(e["text"] for e in events if e["type"] == "transcript.final")
        pairs.append((reference, text))
        lagging += sum(e.get("code") == "lagging" for e in events)
        acks = [(e["received_ms"], e["lag_ms"]) for e in events if e["type"] == "audio.ack"]
        lags += [lag for _, lag in acks]
        if len(acks) >= 10:
            received, lag = np.array(acks, dtype=float).T
            slopes.append(float(np.polyfit(received, lag, 1)[0]))
    for call, end in run["ended"].items():
        finals = [
            arrivals[(e["session_id"], e["seq"])]
            for events in by_session.values()
            for e in events
            if e["_call"] == call and e["type"] == "transcript.final"
        ]
        if finals and max(finals) > end:
            latencies.append((max(finals) - end) * 1000)
    holds = (
        not errors
        and not problems
        and not lagging
        and sessions_closed == 2 * n
        and max(slopes, default=1.0) < MAX_LAG_SLOPE
    )
    return {
        "n": n,
        "holds": holds,
        "lag_p50": percentile(lags, 50),
        "lag_p95": percentile(lags, 95),
        "lag_max": max(lags) if lags else float("nan"),
        "slope": max(slopes, default=float("nan")),
        "latencies": latencies,
        "wer": corpus_wer(pairs).wer,
        "pairs": pairs,
        "errors": errors,
        "violations": len(problems),
        "closed": sessions_closed,
    }


def start_worker(broker: Broker, model: str, max_calls: int, log: Path) -> subprocess.Popen:
    command = [
        str(ROOT / ".venv" / "bin" / "asr-stream"), "--log-level", "WARNING", "mqtt",
        "--broker", broker.url, "--worker-id", "bench", "--model", model,
        "--max-calls", str(max_calls),
    ]  # fmt: skip
    with open(log, "ab") as err:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def wait_online(port: int) -> None:
    async with Listener(port, "asr/_workers/bench/status", "bench-status") as listener:
        await listener.wait_for(lambda: any(b"online" in m.payload for m in listener.messages), 120)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def held_calls(port: int) -> int:
    """The calls the worker says it holds, from its retained status (updated every 2 s)."""
    await asyncio.sleep(3)
    async with Listener(port, "asr/_workers/bench/status", "bench-soak-status") as listener:
        await listener.wait_for(lambda: bool(listener.messages), 20)
        return int(listener.messages[-1].json().get("calls", -1))


def soak(port: int, worker: subprocess.Popen, calls: int, concurrency: int, seconds: float) -> int:
    waves = []
    started = time.monotonic()
    for run_id in range(calls // concurrency):
        run = asyncio.run(run_calls(port, run_id, concurrency, seconds))
        result = analyse(concurrency, run)
        result["rss"] = rss_mb(worker.pid)
        result["done"] = (run_id + 1) * concurrency
        waves.append(result)
        if run_id % 10 == 0:
            print(
                f"{result['done']} calls: RSS {result['rss']:.0f} MB, latency P50 "
                f"{percentile(result['latencies'], 50):.0f} ms",
                file=sys.stderr,
                flush=True,
            )
    held = asyncio.run(held_calls(port))
    done = np.array([w["done"] for w in waves], dtype=float)
    rss = np.array([w["rss"] for w in waves])
    latency = np.array([percentile(w["latencies"], 50) for w in waves])
    lat_ok = ~np.isnan(latency)
    all_latencies = [x for w in waves for x in w["latencies"]]
    total = len(waves) * concurrency
    closed = sum(w["closed"] for w in waves)
    print(f"\n`.venv/bin/python scripts/bench_mqtt.py {' '.join(sys.argv[1:])}`\n")
    print(
        f"{total} calls ({2 * total} channels, {seconds:.0f} s of speech each), {concurrency} "
        f"at a time, {time.monotonic() - started:.0f} s wall\n"
    )
    print("| figure | first wave | last wave | slope per 100 calls |\n|---|---|---|---|")
    print(
        f"| worker RSS (MB) | {rss[0]:.0f} | {rss[-1]:.0f} "
        f"| {np.polyfit(done, rss, 1)[0] * 100:+.1f} MB |"
    )
    print(
        f"| input.end -> last final, wave P50 (ms) | {latency[lat_ok][0]:.0f} "
        f"| {latency[lat_ok][-1]:.0f} "
        f"| {np.polyfit(done[lat_ok], latency[lat_ok], 1)[0] * 100:+.0f} ms |"
    )
    print(
        f"\nEnd-of-call latency over all calls: P50 {percentile(all_latencies, 50):.0f} ms, "
        f"P95 {percentile(all_latencies, 95):.0f} ms. Channels closed: {closed} of "
        f"{2 * total}; errors {sum(w['errors'] for w in waves)}; violations "
        f"{sum(w['violations'] for w in waves)}; pooled WER "
        f"{corpus_wer([p for w in waves for p in w['pairs']]).wer:.1%}; calls still held "
        f"at the end: {held}."
    )
    return 0 if closed == 2 * total and held == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="1,2,3,4,6", help="concurrent call counts to try")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--seconds", type=float, default=15.0, help="speech per channel")
    parser.add_argument(
        "--manifest", type=Path, help="one recording of this manifest.tsv per channel"
    )
    parser.add_argument("--soak", type=int, default=0, help="calls of the soak (0: no soak)")
    parser.add_argument("--soak-concurrency", type=int, default=2)
    args = parser.parse_args()
    counts = [int(c) for c in args.calls.split(",")]
    if args.soak:
        counts = [args.soak_concurrency]
    directory = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    broker = Broker(directory)
    broker.start()
    worker = start_worker(broker, args.model, max(counts), directory / "worker.log")
    results = []
    try:
        asyncio.run(wait_online(broker.port))
        if args.soak:
            return soak(broker.port, worker, args.soak, args.soak_concurrency, args.seconds)
        for run_id, n in enumerate(counts):
            run = asyncio.run(run_calls(broker.port, run_id, n, args.seconds, args.manifest))
            result = analyse(n, run)
            results.append(result)
            print(f"{n} calls: {result}", file=sys.stderr, flush=True)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        broker.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\n`.venv/bin/python scripts/bench_mqtt.py {' '.join(sys.argv[1:])}`\n")
    print("| calls (channels) | holds real time | lag slope (max over channels) "
          "| ack lag P50 / P95 / max (ms) | input.end -> last final P50 / P95 (ms) | WER "
          "| errors / violations |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in results:
        lat = r["latencies"]
        print(
            f"| {r['n']} ({2 * r['n']}) | {'yes' if r['holds'] else 'no'} | {r['slope']:.2f} "
            f"| {r['lag_p50']:.0f} / {r['lag_p95']:.0f} / {r['lag_max']:.0f} "
            f"| {percentile(lat, 50):.0f} / {percentile(lat, 95):.0f} "
            f"| {r['wer']:.1%} | {r['errors']} / {r['violations']} |"
        )
    capacity = 0
    for n in sorted(set(counts)):
        if not all(r["holds"] for r in results if r["n"] <= n):
            break
        capacity = n
    pooled = [x for r in results if r["n"] <= capacity for x in r["latencies"]]
    print(f"\nHeld: {capacity} concurrent two-channel calls. "
          f"End-of-call latency up to that load ({len(pooled)} calls): "
          f"P50 {percentile(pooled, 50):.0f} ms, P95 {percentile(pooled, 95):.0f} ms.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
