"""Audio packets of MQTT call taps: a fixed 16-byte header, then audio; and their sequencing.

MQTT has no flow control and, with several workers or a broker restart in between, no ordering
guarantee across a call's messages. Every audio message therefore carries a header that lets the
bridge put packets back in order, spot missing ones and keep the stream aligned with the call.

Header layout (network byte order, 16 bytes), followed by the audio bytes::

    offset  size  field        meaning
    0       1     version      1
    1       1     codec        0 pcm_s16le, 1 pcm_mulaw (G.711 mu-law), 2 pcm_alaw (G.711 A-law),
                               3 pcm_f32le
    2       2     sample_rate  Hz, 8000..48000 (telephony: 8000)
    4       4     seq          uint32: 0 for the channel's first packet, +1 for each next packet
    8       8     position     uint64: index of the packet's first sample in the channel, counted
                               at sample_rate from the start of the call

`Sequencer` turns the packets of one channel, as they arrive, into the packets in order plus
notes on what was wrong (`Gap`, `Late`, `Duplicate`, `Reordered`). It holds at most `window`
packets that wait for a missing one, and gives up on a missing packet once `window` later ones
wait or the oldest waiting packet has waited `hold_s` seconds.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass

from streaming.audio import BYTES_PER_SAMPLE, AudioFormat
from streaming.errors import AudioFormatError, ConfigError

HEADER = struct.Struct(">BBHIQ")
HEADER_BYTES = HEADER.size  # 16
VERSION = 1
CODECS = ("pcm_s16le", "pcm_mulaw", "pcm_alaw", "pcm_f32le")  # index = codec byte
MAX_SEQ = 2**32 - 1
# one sample of digital silence in each encoding (G.711 codes for zero are not 0x00)
SILENCE = {
    "pcm_s16le": b"\x00\x00",
    "pcm_f32le": b"\x00" * 4,
    "pcm_mulaw": b"\xff",
    "pcm_alaw": b"\xd5",
}


@dataclass(frozen=True)
class AudioPacket:
    """One audio message: its header fields and its audio bytes."""

    seq: int
    # first sample's index in the channel, at format.sample_rate
    position: int
    format: AudioFormat
    audio: bytes

    @property
    def samples(self) -> int:
        """Number of samples in the packet."""
        return len(self.audio) // BYTES_PER_SAMPLE[self.format.encoding]

    @property
    def duration_ms(self) -> float:
        """Duration of the packet's audio."""
        return self.format.duration_ms(len(self.audio))

    def pack(self) -> bytes:
        """The message payload: header, then audio."""
        codec = CODECS.index(self.format.encoding)
        header = HEADER.pack(VERSION, codec, self.format.sample_rate, self.seq, self.position)
        return header + self.audio

    @classmethod
    def unpack(cls, payload: bytes) -> AudioPacket:
        """Parses and checks one audio message.

        Raises:
            AudioFormatError: with code `invalid_audio_header` (too short, unknown version),
                `unsupported_encoding`, `unsupported_sample_rate` or `invalid_audio_frame`
                (no audio, or not a whole number of samples).
        """
        if len(payload) < HEADER_BYTES:
            raise AudioFormatError(
                f"audio message of {len(payload)} bytes is shorter than the "
                f"{HEADER_BYTES}-byte header; dropped",
                code="invalid_audio_header",
            )
        version, codec, rate, seq, position = HEADER.unpack_from(payload)
        if version != VERSION:
            raise AudioFormatError(
                f"audio header version {version} is not supported (expected {VERSION}); dropped",
                code="invalid_audio_header",
            )
        if codec >= len(CODECS):
            raise AudioFormatError(
                f"unknown codec {codec} in the audio header; expected 0 (pcm_s16le), "
                "1 (pcm_mulaw), 2 (pcm_alaw) or 3 (pcm_f32le); dropped",
                code="unsupported_encoding",
            )
        try:
            fmt = AudioFormat(encoding=CODECS[codec], sample_rate=rate)
        except ConfigError as exc:
            raise AudioFormatError(exc.message + "; dropped", code=exc.code) from None
        audio = payload[HEADER_BYTES:]
        if not audio or len(audio) % fmt.frame_bytes:
            raise AudioFormatError(
                f"audio message (seq {seq}) carries {len(audio)} bytes, not a whole, non-zero "
                f"number of {fmt.encoding} samples; dropped",
                code="invalid_audio_frame",
            )
        return cls(seq, position, fmt, audio)


def silence(fmt: AudioFormat, samples: int) -> bytes:
    """`samples` samples of digital silence in `fmt` (mono)."""
    return SILENCE[fmt.encoding] * samples


@dataclass(frozen=True)
class Gap:
    """Packets `first`..`last` never arrived; the sequencer stopped waiting for them."""

    first: int
    last: int

    @property
    def packets(self) -> int:
        """Number of packets missing."""
        return self.last - self.first + 1


@dataclass(frozen=True)
class Late:
    """Packet `seq` arrived after it had been given up as part of a gap; it is dropped."""

    seq: int


@dataclass(frozen=True)
class Duplicate:
    """Packet `seq` was already received (QoS 1 redelivery); it is dropped."""

    seq: int


@dataclass(frozen=True)
class Reordered:
    """Packet `seq` arrived after a later packet; it was put back in its place."""

    seq: int


Note = Gap | Late | Duplicate | Reordered


class Sequencer:
    """Puts one channel's packets in order within a small bounded window.

    The first packet released is packet 0 when it arrives in time; a stream that starts later
    (a call that moves to this worker mid-way) starts at the lowest seq that arrived within the
    window. The sequencer knows nothing about time except the `now` it is given.
    """

    def __init__(self, window: int = 16, hold_s: float = 1.0, remember_gaps: int = 64):
        """Creates an empty sequencer.

        Args:
            window: most packets held while waiting for a missing one.
            hold_s: longest a packet is held while waiting for a missing one, seconds.
            remember_gaps: how many past gaps are remembered to tell late packets from duplicates.
        """
        if window < 1:
            raise ValueError(f"window must be at least 1 packet, got {window!r}")
        self.window = window
        self.hold_s = hold_s
        self._held: dict[int, tuple[AudioPacket, float]] = {}
        self._next: int | None = None  # seq of the next packet to release
        self._highest = -1
        self._gaps: collections.deque[Gap] = collections.deque(maxlen=remember_gaps)

    @property
    def held(self) -> int:
        """Packets waiting for an earlier one."""
        return len(self._held)

    def push(self, packet: AudioPacket, now: float) -> list[AudioPacket | Note]:
        """Takes one arriving packet; returns what can be released now, in order.

        Notes come right before the packet they concern: a `Gap` before the first packet after
        it; `Late` and `Duplicate` stand alone (their packet is dropped).
        """
        seq = packet.seq
        if (self._next is not None and seq < self._next) or seq in self._held:
            if any(gap.first <= seq <= gap.last for gap in self._gaps):
                return [Late(seq)]
            return [Duplicate(seq)]
        out: list[AudioPacket | Note] = []
        if seq < self._highest:
            out.append(Reordered(seq))
        self._highest = max(self._highest, seq)
        self._held[seq] = (packet, now)
        out.extend(self._release(now, force=False))
        return out

    def expire(self, now: float) -> list[AudioPacket | Note]:
        """Releases packets that have waited `hold_s` for a missing one (call this periodically)."""
        return self._release(now, force=False)

    def flush(self) -> list[AudioPacket | Note]:
        """The input ended: releases everything held, reporting the gaps between."""
        return self._release(0.0, force=True)

    def _give_up(self, now: float, force: bool) -> bool:
        oldest = min(arrived for _, arrived in self._held.values())
        return force or len(self._held) > self.window or now - oldest >= self.hold_s

    def _release(self, now: float, force: bool) -> list[AudioPacket | Note]:
        out: list[AudioPacket | Note] = []
        if self._next is None:
            if not self._held:
                return out
            first = min(self._held)
            if first != 0 and not self._give_up(now, force):
                return out
            self._next = first
        while self._held:
            if self._next in self._held:
                out.append(self._held.pop(self._next)[0])
                self._next += 1
                continue
            if not self._give_up(now, force):
                break
            first = min(self._held)
            gap = Gap(self._next, first - 1)
            self._gaps.append(gap)
            out.append(gap)
            self._next = first
        return out
