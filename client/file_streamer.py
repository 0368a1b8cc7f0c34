"""Streams an audio file through the service as a live source would.

The file is sent in its own sample rate and channel count (the server resamples and downmixes),
as 16-bit PCM frames of `frame_ms`. Pacing:
- real time: frame k leaves at start + k * frame_ms, like a microphone;
- fast: as fast as the server keeps up. The client stays at most `max_ahead_ms` of audio ahead of
  what the server reports processed (`audio.ack`), so a long file never overruns the server's
  per-session buffer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from client.connection import SessionSettings, StreamClient, wait_closed


@dataclass(frozen=True)
class PaceOptions:
    """How audio is sent."""

    # audio per binary frame, ms
    frame_ms: int = 100
    # True: real time; False: as fast as the server keeps up
    realtime: bool = True
    # fast mode: the most audio sent beyond the server's processed position, ms
    max_ahead_ms: int = 45_000  # above the longest segment (30 s), which only ends when sent
    # silence appended after the file, ms (lets VAD endpoint the last words before input.end)
    trailing_silence_ms: int = 0


@dataclass
class StreamResult:
    """Everything the server said, with the client's receive times."""

    events: list[dict[str, Any]] = field(default_factory=list)
    # time.monotonic() at which each event arrived, and at which audio sending started
    received_at: list[float] = field(default_factory=list)
    started_at: float = 0.0
    end_sent_at: float = 0.0

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "transcript.final"]

    @property
    def text(self) -> str:
        return " ".join(f["text"] for f in self.finals if f["text"])


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Reads WAV/FLAC/OGG as int16 samples of shape (n, channels) and the sample rate.

    Raises:
        ValueError: the file cannot be read as audio.
    """
    try:
        samples, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot read {path} as audio: {exc}") from exc
    if samples.shape[1] > 2:  # the protocol carries mono or stereo
        mixed = samples.astype(np.int32).mean(axis=1, keepdims=True)
        samples = mixed.astype(np.int16)
    return samples, int(rate)


async def stream_samples(
    url: str,
    samples: np.ndarray,
    rate: int,
    settings: SessionSettings,
    pace: PaceOptions,
    *,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    token: str | None = None,
    insecure: bool = False,
) -> StreamResult:
    """Streams int16 samples of shape (n, channels) and returns everything the server said."""
    channels = samples.shape[1]
    settings = replace(settings, encoding="pcm_s16le", sample_rate=rate, channels=channels)
    if pace.trailing_silence_ms:
        pad = np.zeros((rate * pace.trailing_silence_ms // 1000, channels), np.int16)
        samples = np.concatenate([samples, pad])
    client = await StreamClient.open(url, settings, token=token, insecure=insecure)
    result = StreamResult()
    processed_ms = 0
    progress = asyncio.Event()

    async def receive() -> None:
        nonlocal processed_ms
        async for event in client.events():
            result.events.append(event)
            result.received_at.append(time.monotonic())
            if event["type"] == "audio.ack":
                processed_ms = event["processed_ms"]
                progress.set()
            if on_event is not None:
                on_event(event)
            if event["type"] == "session.closed":
                return

    receiver = asyncio.create_task(receive())
    frame = max(1, rate * pace.frame_ms // 1000)
    result.started_at = time.monotonic()
    try:
        for k, first in enumerate(range(0, len(samples), frame)):
            if receiver.done():
                break  # the server ended the session (an error event says why)
            if pace.realtime:
                delay = result.started_at + k * pace.frame_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                sent_ms = first * 1000 // rate
                while sent_ms - processed_ms > pace.max_ahead_ms and not receiver.done():
                    progress.clear()
                    await progress.wait()
            await client.send_audio(samples[first : first + frame].tobytes())
        if not receiver.done():
            result.end_sent_at = time.monotonic()
            await client.end()
        await receiver
    finally:
        receiver.cancel()
        await wait_closed(client, grace_s=5.0)
    return result


async def stream_file(
    url: str,
    path: Path,
    settings: SessionSettings | None = None,
    pace: PaceOptions | None = None,
    **kwargs: Any,
) -> StreamResult:
    """Streams an audio file; see `stream_samples`."""
    samples, rate = read_audio(path)
    return await stream_samples(
        url, samples, rate, settings or SessionSettings(), pace or PaceOptions(), **kwargs
    )
