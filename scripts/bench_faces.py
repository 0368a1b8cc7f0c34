"""The compatible faces against the native one: latency each adds, and HTTP throughput.

Starts `asr-stream serve` as its own process and streams the 13 clips of tests/data, one at a
time at real-time pace in 40 ms frames with 0.5 s of silence before and 1.5 s after, through:

- native `/v1/stream` (first partial that shows text; the final);
- OpenAI Realtime `/v1/realtime?intent=transcription` (GA events, server VAD, 24 kHz; the first
  transcription delta; `.completed`);
- Deepgram `/v1/listen` (`interim_results=true`; the first `Results` with text; the final).

Each face is driven by a plain WebSocket client here (not the SDKs) so that only the server is
timed. Latencies are from the send time of the frame holding the end of the speech (first
text: of the first frame) to the receive time of the event. Then the HTTP API's throughput: all
13 clips posted at once to `/v1/audio/transcriptions`, audio seconds per wall-clock second.

    .venv/bin/python scripts/bench_faces.py
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import soxr
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_stream import Server, percentile  # noqa: E402

from tests.conftest import load_corpus  # noqa: E402

FRAME_MS = 40
LEAD_S, TRAIL_S = 0.5, 1.5


def pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def paced(frames: list[Any], send: Any) -> list[float]:
    """Sends frames at real-time pace; returns each frame's send time (monotonic)."""
    start, sent = time.monotonic(), []
    for k, frame in enumerate(frames):
        delay = start + (k + 1) * FRAME_MS / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(frame)
        sent.append(time.monotonic())
    return sent


def frames_of(audio: bytes, rate: int) -> list[bytes]:
    step = 2 * rate * FRAME_MS // 1000
    return [audio[i : i + step] for i in range(0, len(audio), step)]


def face_frames(face: str, padded: np.ndarray) -> list[Any]:
    """What each face sends for the audio: binary PCM, or Realtime append events."""
    if face != "realtime":
        return frames_of(pcm(padded), 16000)
    resampled = soxr.resample(padded.astype(np.float32), 16000, 24000)
    return [
        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(f).decode()})
        for f in frames_of(pcm(resampled), 24000)
    ]


REALTIME_SESSION = {
    "type": "session.update",
    "session": {
        "type": "transcription",
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 600},
        }},
    },
}  # fmt: skip
PATHS = {
    "native": "/v1/stream",
    "realtime": "/v1/realtime?intent=transcription",
    "deepgram": "/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true",
}
OPENING = {
    "native": {"type": "session.start", "language": "en"},
    "realtime": REALTIME_SESSION,
}
CLOSING = {"native": {"type": "input.end"}, "deepgram": {"type": "CloseStream"}}


def classify(face: str, event: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(shows text, shows committed text, is the final) for one event of one face.

    Realtime deltas carry committed words only (the face has no tentative channel), so its
    first text is comparable with the native face's first committed text, not its first text.
    """
    kind = event["type"]
    if face == "native":
        committed = event.get("committed", "").strip()
        text = committed + event.get("tentative", "").strip()
        partial = kind == "transcript.partial"
        return partial and bool(text), partial and bool(committed), kind == "transcript.final"
    if face == "realtime":
        prefix = "conversation.item.input_audio_transcription."
        delta = kind == prefix + "delta"
        return delta, delta, kind == prefix + "completed"
    if kind != "Results":
        return False, False, False
    text = event["channel"]["alternatives"][0]["transcript"]
    interim = not event["is_final"] and bool(text)
    return interim, False, bool(event["is_final"])


async def run_face(face: str, url: str, samples: np.ndarray) -> tuple[float, float, float] | None:
    """(first text, first committed text, final) latencies in seconds for one clip and face.

    Text that first appears in the final counts as appearing then.
    """
    speech_end = LEAD_S + len(samples) / 16000
    silence = [np.zeros(int(s * 16000)) for s in (LEAD_S, TRAIL_S)]
    frames = face_frames(face, np.concatenate([silence[0], samples, silence[1]]))
    first_text = first_committed = final = None
    async with connect(url + PATHS[face]) as ws:
        if face in OPENING:
            await ws.send(json.dumps(OPENING[face]))
        sender = asyncio.create_task(paced(frames, ws.send))
        async for raw in ws:
            shown, committed, done = classify(face, json.loads(raw))
            now = time.monotonic()
            if shown and first_text is None:
                first_text = now
            if committed and first_committed is None:
                first_committed = now
            if done:
                final = now
                break
        sent = await sender
        if face in CLOSING:
            await ws.send(json.dumps(CLOSING[face]))
    if final is None:
        return None
    first_text = final if first_text is None else first_text
    first_committed = final if first_committed is None else first_committed
    end_frame = min(int(speech_end * 1000 / FRAME_MS), len(sent) - 1)
    return first_text - sent[0], first_committed - sent[0], final - sent[end_frame]


async def http_throughput(port: int, corpus: list[Any]) -> float:
    """Audio seconds per second with every clip posted at once."""

    def post(path: Path) -> None:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n',
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: audio/wav\r\n\r\n',
        ]
        body = "".join(parts).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/audio/transcriptions", data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200

    started = time.monotonic()
    await asyncio.gather(*(asyncio.to_thread(post, u.path) for u in corpus))
    return sum(u.seconds for u in corpus) / (time.monotonic() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--faces", default="native,realtime,deepgram", help="native first")
    args = parser.parse_args()
    corpus = load_corpus()
    server = Server(args.model, max_sessions=len(corpus) + 1, extra=[])
    results: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for face in args.faces.split(","):
            results[face] = []
            for utterance in corpus:
                measured = await run_face(face, server.url, utterance.samples())
                if measured is not None:
                    results[face].append(measured)
            print(f"  {face}: {len(results[face])} of {len(corpus)} clips", file=sys.stderr)
        throughput = await http_throughput(server.port, corpus)
    finally:
        server.stop()

    def ms(rows: list[tuple[float, float, float]], column: int, q: float) -> float:
        return percentile([r[column] for r in rows], q) * 1000

    print("\n| face | first text P50 / P95 (ms) | first committed text P50 / P95 (ms) "
          "| final after speech end P50 / P95 (ms) | added at P50 (ms) | clips |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    native = results["native"]
    for face, rows in results.items():
        added = ""
        if face == "realtime":  # deltas are committed text: compare like with like
            added = f"committed {ms(rows, 1, 50) - ms(native, 1, 50):+.0f}, "
        elif face == "deepgram":
            added = f"first text {ms(rows, 0, 50) - ms(native, 0, 50):+.0f}, "
        if added:
            added += f"final {ms(rows, 2, 50) - ms(native, 2, 50):+.0f}"
        first = f"{ms(rows, 0, 50):.0f} / {ms(rows, 0, 95):.0f}" if face != "realtime" else "-"
        committed = f"{ms(rows, 1, 50):.0f} / {ms(rows, 1, 95):.0f}" if face != "deepgram" else "-"
        print(f"| {face} | {first} | {committed} | {ms(rows, 2, 50):.0f} / {ms(rows, 2, 95):.0f} "
              f"| {added} | {len(rows)} |")  # fmt: skip
    print(f"\nHTTP transcription, 13 clips posted at once: {throughput:.1f} s of audio per second")


if __name__ == "__main__":
    asyncio.run(main())
