"""Model lanes: what one decode costs on one thread or two, and what lanes side by side serve.

    .venv/bin/python scripts/bench_lanes.py [--files gettysburg,ecclesiastes] [--requests 40]

Captures the decode requests a real session makes on long-form speech (replayed sans-I/O at
1 s steps, as `scripts/bench_replay.py` does), then serves the same requests through the
default Whisper recognizer built three ways, each call from its own Python thread as the model
worker makes them:

- one replica with two threads (the layout before lanes), one call at a time;
- two single-thread replicas (`WhisperOptions.lanes = 2`), one call at a time;
- two single-thread replicas with two calls at once (what the worker does with two lanes);

each with batches of 1, 2 and 4 requests per call. Reported: ms per request (wall time over
requests served) and, for one call at a time, the mean time of the stages of a decode
(features, encoder, generation with the forced prefix, alignment).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streaming.models.loading import load_recognizer  # noqa: E402
from streaming.models.whisper import WhisperRecognizer  # noqa: E402
from streaming.recognizer import DecodeRequest  # noqa: E402
from streaming.session import Session  # noqa: E402

LONG = ROOT / "tests" / "data" / "long"


def captured_requests(recognizer: WhisperRecognizer, names: list[str]) -> list[DecodeRequest]:
    """The decode requests sessions make on these recordings at 1 s steps, answered in turn."""
    requests = []
    for name in names:
        samples, _ = soundfile.read(str(LONG / f"{name}.wav"), dtype="int16")
        samples = np.concatenate([samples, np.zeros(16_000, np.int16)])
        session = Session(name, recognizer.info)
        session.receive_text(json.dumps({"type": "session.start", "language": "en"}))
        for start in range(0, len(samples), 640):
            session.receive_audio(samples[start : start + 640].tobytes())
            while (request := session.next_request()) is not None:
                requests.append(request)
                session.complete(recognizer.decode([request])[0])
    return requests


class StageTimer:
    """Wraps the recognizer's model calls and feature extractor to add up their time."""

    def __init__(self, recognizer: WhisperRecognizer):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        model = recognizer.model
        timer = self

        class Timed:
            def __getattr__(self, name: str) -> Any:
                return getattr(model, name)

        timed = Timed()
        for name in ("encode", "generate", "align"):
            setattr(timed, name, self._wrap(name, getattr(model, name)))
        recognizer.model = timed
        recognizer._features = timer._wrap("features", recognizer._features)

    def _wrap(self, name: str, call: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed


def serve(recognizer: WhisperRecognizer, requests: list[DecodeRequest], parallel: int,
          batch: int) -> float:  # fmt: skip
    """ms per request, serving `requests` in calls of `batch` from `parallel` threads."""
    calls = [requests[i : i + batch] for i in range(0, len(requests), batch)]
    recognizer.decode(calls[0])  # warm
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(recognizer.decode, calls))
    return (time.perf_counter() - started) * 1000 / len(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="gettysburg,ecclesiastes")
    parser.add_argument("--requests", type=int, default=0, help="use only the first N (0: all)")
    args = parser.parse_args()
    capture = load_recognizer("tiny.en")
    assert isinstance(capture, WhisperRecognizer)
    requests = captured_requests(capture, args.files.split(","))
    if args.requests:
        requests = requests[: args.requests]
    del capture
    print(f"{len(requests)} decode requests of {args.files} (1 s steps)\n")
    print("| layout | calls at once | ms per request, batch 1 / 2 / 4 |")
    print("|---|---|---|")
    stages = {}
    for label, lanes, parallel in (
        ("1 replica x 2 threads", 1, 1),
        ("2 replicas x 1 thread", 2, 1),
        ("2 replicas x 1 thread", 2, 2),
    ):
        recognizer = load_recognizer("tiny.en", threads=2, lanes=lanes)
        assert isinstance(recognizer, WhisperRecognizer)
        costs = [serve(recognizer, requests, parallel, batch) for batch in (1, 2, 4)]
        print(f"| {label} | {parallel} | " + " / ".join(f"{c:.0f}" for c in costs) + " |")
        if parallel == 1:
            timer = StageTimer(recognizer)
            for request in requests:
                recognizer.decode([request])
            stages[label] = {k: v * 1000 / len(requests) for k, v in timer.seconds.items()}
    print("\n| layout, one call at a time, batch 1 | features | encoder | generate | align (ms) |")
    print("|---|---|---|---|---|")
    for label, ms in stages.items():
        print(f"| {label} | {ms['features']:.0f} | {ms['encode']:.0f} | {ms['generate']:.0f} "
              f"| {ms['align']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
