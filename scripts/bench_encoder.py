"""Benchmark: streaming encoder step vs re-encoding all audio, with the real 0.6B shapes.

    python scripts/bench_encoder.py [--lengths 10 60 600] [--repeats 5] [--reencode-repeats 3]
        [--dtype float32|bfloat16] [--threads 2] [--feed-limit 120] [--feed-all]

The encoder has the Qwen3-ASR-0.6B shape (18 layers, d_model 896, 8 s windows) with random
weights: the cost does not depend on the weight values, and the features are random too.

Streaming: 1 s steps (100 mel frames). The cost of a step depends on where it falls in the 8 s
window (the open window holds 1..8 s of tokens), not on the session length. So for a session
length L the table gives the step that ends at L, and the mean and maximum over the 8 steps
ending at L (one full window cycle, the per-second cost averaged over a window). Because the state
is immutable, each step is timed `--repeats` times from the same input state and the median is
kept. The timing loop interleaves the session lengths so that load from other processes hits
them alike.

Reaching L: the session is fed through `step` second by second from 0 s. For lengths beyond
`--feed-limit` (default 120 s) and without `--feed-all`, the feeding jumps to the last window
boundary at or before L - 8 s: at a window boundary the real state holds no tensors (no open window
tokens, no partial chunk) and only the counters `frames_seen` and `tokens_emitted`, so the state
there is constructed with those counters and fed on from there. `--feed-all` feeds every second
instead (about 0.25 s of compute per second of audio).

Re-encoding: `forward` on all L seconds at once, the official streaming approach at each step.

Each half runs in its own subprocess so that its peak RSS (resource.getrusage) is its own. The
front-end floor difference (running-max floor vs the per-utterance floor) is computed on
tests/data/*.wav.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoder.config import QWEN3_ASR_0_6B
from encoder.features import LogMelFrontEnd, floor_difference
from encoder.model import AudioEncoder
from encoder.state import EncoderState

DATA_DIR = Path(__file__).resolve().parents[1] / "tests" / "data"
STEP_FRAMES = 100  # 1 s per streaming step
FLAT_TOLERANCE = 0.20  # target: cycle cost at the longest length within 20 % of the shortest
SPEEDUP_TARGET = 20.0  # target: re-encoding at the longest length at least 20x a step


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_encoder(dtype: torch.dtype, threads: int) -> AudioEncoder:
    """The 0.6B-shaped encoder with random weights, in eval mode."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return AudioEncoder(QWEN3_ASR_0_6B).to(dtype).eval()


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """Median wall time of `repeats` calls in ms, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def run_streaming(
    lengths: list[int], repeats: int, dtype: torch.dtype, threads: int, feed_limit: int
) -> dict[str, Any]:
    """Times the 8 steps ending at each session length.

    First the input state of each of those steps is reached (fed, or built at a window boundary
    past `feed_limit`). Then the timing loop interleaves the lengths (repeat, step, length), so a
    burst of load from other processes on the machine hits all lengths alike.
    """
    encoder = build_encoder(dtype, threads)
    model_rss = peak_rss_mib()
    window = encoder.config.window_seconds
    generator = torch.Generator().manual_seed(1)

    def features() -> torch.Tensor:
        return torch.randn(128, STEP_FRAMES, generator=generator)

    state, position = encoder.initial_state(), 0
    chains: dict[int, list[tuple[torch.Tensor, EncoderState]]] = {}  # length -> (input, state)
    constructed: dict[int, bool] = {}
    sizes: dict[int, int] = {}
    with torch.no_grad():
        for length in sorted(lengths):
            cycle_start = length - window
            jump_to = (cycle_start // window) * window
            constructed[length] = jump_to > max(position, feed_limit - window)
            if constructed[length]:
                state = dataclasses.replace(
                    encoder.initial_state(),
                    frames_seen=jump_to * STEP_FRAMES,
                    tokens_emitted=(jump_to // window) * encoder.config.window_tokens,
                )
                position = jump_to
            while position < cycle_start:
                _, state = encoder.step(features(), state)
                position += 1
            chain = []
            for _ in range(window):  # also the warm-up: every open-window size runs once
                step_input = features()
                chain.append((step_input, state))
                _, state = encoder.step(step_input, state)
                position += 1
            chains[length] = chain
            sizes[length] = max(s.nbytes for _, s in chain)

        costs: dict[int, list[list[float]]] = {n: [[] for _ in range(window)] for n in lengths}
        for _ in range(repeats):
            for k in range(window):
                for length in lengths:
                    step_input, before = chains[length][k]
                    cost, _ = timed(lambda f=step_input, s=before: encoder.step(f, s), 1)
                    costs[length][k].append(cost)

    results = {}
    for length in lengths:
        medians = [statistics.median(c) for c in costs[length]]
        results[length] = {
            "step_ms": medians[-1],
            "cycle_mean_ms": statistics.mean(medians),
            "cycle_max_ms": max(medians),
            "state_bytes": sizes[length],
            "constructed": constructed[length],
            "open_seconds": length % window or window,
        }
    return {"model_rss_mib": model_rss, "peak_rss_mib": peak_rss_mib(), "lengths": results}


def run_reencode(
    lengths: list[int], repeats: int, dtype: torch.dtype, threads: int
) -> dict[str, Any]:
    """Times `forward` over all audio of each session length."""
    encoder = build_encoder(dtype, threads)
    model_rss = peak_rss_mib()
    results = {}
    with torch.no_grad():
        encoder(torch.randn(1, 128, 300))  # warm-up
        for length in sorted(lengths):
            features = torch.randn(1, 128, length * STEP_FRAMES)
            cost, _ = timed(lambda f=features: encoder(f), repeats)
            results[length] = {"reencode_ms": cost, "peak_rss_mib": peak_rss_mib()}
    return {"model_rss_mib": model_rss, "peak_rss_mib": peak_rss_mib(), "lengths": results}


def read_corpus() -> list[np.ndarray]:
    """The 16 kHz mono 16-bit WAV files of tests/data as float32."""
    clips = []
    for path in sorted(DATA_DIR.glob("*.wav")):
        with wave.open(str(path)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), "<i2")
            clips.append(raw.astype(np.float32) / 32768)
    return clips


def floor_rows() -> list[str]:
    """Markdown rows: streamed (running-max floor) vs per-utterance floor on the corpus."""
    clips = read_corpus()
    front_end = LogMelFrontEnd()
    rows = []
    for seconds in (0.5, 1.0, 2.0):
        d = floor_difference(clips, int(seconds * 16000), front_end)
        rows.append(
            f"| running max, {seconds:g} s steps | {d.max_abs:.3f} | {d.mean_abs:.4f} | "
            f"{100 * d.changed_fraction:.2f} % |"
        )
    # For comparison: a fixed absolute floor (log10 = -7, the best single value on this corpus).
    diffs = []
    for clip in clips:
        log_power = front_end.log_power(torch.as_tensor(clip))
        fixed = (torch.clamp(log_power, min=-7.0) + 4) / 4
        diffs.append((front_end(clip) - fixed).abs().flatten())
    pooled = torch.cat(diffs)
    changed = 100 * float((pooled > 1e-6).float().mean())
    rows.append(
        f"| fixed floor log10 = -7 (not used) | {float(pooled.max()):.3f} | "
        f"{float(pooled.mean()):.4f} | {changed:.2f} % |"
    )
    return rows


def worker(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """Runs one half of the benchmark in a fresh interpreter and returns its JSON result."""
    repeats = args.repeats if kind == "stream" else args.reencode_repeats
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--repeats",
        str(repeats),
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
        "--feed-limit",
        str(10**9 if args.feed_all else args.feed_limit),
        "--lengths",
        *map(str, args.lengths),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[10, 60, 600],
        help="session lengths in seconds (each at least 8)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timings per streaming step")
    parser.add_argument(
        "--reencode-repeats", type=int, default=3, help="timings per re-encoding of a whole session"
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--feed-limit",
        type=int,
        default=120,
        help="feed every second up to this length, build boundary states past it",
    )
    parser.add_argument(
        "--feed-all", action="store_true", help="feed every second of every session"
    )
    parser.add_argument("--worker", choices=("stream", "reencode"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.lengths) < QWEN3_ASR_0_6B.window_seconds:
        parser.error(f"--lengths must be at least {QWEN3_ASR_0_6B.window_seconds} s")
    dtype = getattr(torch, args.dtype)
    if args.worker == "stream":
        print(
            json.dumps(
                run_streaming(args.lengths, args.repeats, dtype, args.threads, args.feed_limit)
            )
        )
        return
    if args.worker == "reencode":
        print(json.dumps(run_reencode(args.lengths, args.repeats, dtype, args.threads)))
        return

    started = time.perf_counter()
    stream = worker(args, "stream")
    reencode = worker(args, "reencode")
    print(
        f"Encoder benchmark: Qwen3-ASR-0.6B shape, random weights, {args.dtype}, "
        f"{args.threads} threads, 1 s steps; medians of {args.repeats} (steps) and "
        f"{args.reencode_repeats} (re-encoding)\n"
    )
    print(
        "| session | open window at step | step ending here (ms) | mean / max over the 8-step "
        "cycle (ms) | state (KiB) | re-encode all (ms) | re-encode / step | "
        "re-encode / cycle mean |"
    )
    print("|---|---|---|---|---|---|---|---|")
    lengths = sorted(args.lengths)
    for length in lengths:
        s, r = stream["lengths"][str(length)], reencode["lengths"][str(length)]
        reached = " (state built at boundary)" if s["constructed"] else ""
        print(
            f"| {length} s{reached} | {s['open_seconds']} s | {s['step_ms']:.0f} | "
            f"{s['cycle_mean_ms']:.0f} / {s['cycle_max_ms']:.0f} | "
            f"{s['state_bytes'] / 1024:.0f} | "
            f"{r['reencode_ms']:.0f} | {r['reencode_ms'] / s['step_ms']:.0f}x | "
            f"{r['reencode_ms'] / s['cycle_mean_ms']:.0f}x |"
        )
    first, last = stream["lengths"][str(lengths[0])], stream["lengths"][str(lengths[-1])]
    drift = last["cycle_mean_ms"] / first["cycle_mean_ms"] - 1
    speedup = reencode["lengths"][str(lengths[-1])]["reencode_ms"] / last["cycle_max_ms"]
    print(
        f"\nFlat cost: cycle mean at {lengths[-1]} s vs {lengths[0]} s: {100 * drift:+.1f} % "
        f"(target within {100 * FLAT_TOLERANCE:.0f} %): "
        f"{'PASS' if abs(drift) <= FLAT_TOLERANCE else 'FAIL'}"
    )
    print(
        f"Speed-up at {lengths[-1]} s, re-encode vs the slowest step of the cycle: "
        f"{speedup:.0f}x (target >= {SPEEDUP_TARGET:.0f}x): "
        f"{'PASS' if speedup >= SPEEDUP_TARGET else 'FAIL'}"
    )
    print(
        f"Peak RSS: streaming process {stream['peak_rss_mib']:.0f} MiB "
        f"(model alone {stream['model_rss_mib']:.0f} MiB); re-encoding process "
        f"{reencode['peak_rss_mib']:.0f} MiB (model alone {reencode['model_rss_mib']:.0f} MiB)"
    )
    print(
        "\nFront-end floor: streamed features vs the reference's per-utterance floor, "
        "13 corpus clips\n"
    )
    print("| floor | max abs diff | mean abs diff | values changed |")
    print("|---|---|---|---|")
    print("\n".join(floor_rows()))
    print(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
