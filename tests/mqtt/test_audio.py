"""The audio message format of MQTT taps and the per-channel sequencer, without a broker."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.audio import AudioFormat, decode_pcm
from streaming.errors import AudioFormatError
from streaming.mqtt.audio import (
    HEADER_BYTES,
    AudioPacket,
    Duplicate,
    Gap,
    Late,
    Reordered,
    Sequencer,
    silence,
)
from tests.mqtt.taps import encode_alaw, encode_mulaw

MULAW_8K = AudioFormat("pcm_mulaw", 8000)


def packet(seq: int, samples: int = 160) -> AudioPacket:
    return AudioPacket(seq, seq * samples, MULAW_8K, b"\xff" * samples)


def seqs(items: list) -> list:
    """Released packets as their seq, notes as themselves."""
    return [item.seq if isinstance(item, AudioPacket) else item for item in items]


# Header.


def test_a_packet_survives_pack_and_unpack():
    """pack then unpack gives back seq, position, codec, rate and audio."""
    original = AudioPacket(7, 123_456_789_012, AudioFormat("pcm_alaw", 8000), b"\xd5" * 80)
    payload = original.pack()
    assert len(payload) == HEADER_BYTES + 80
    assert AudioPacket.unpack(payload) == original


def test_the_header_layout_is_the_documented_one():
    """Version, codec, rate, seq and position sit at the documented offsets, big-endian."""
    payload = AudioPacket(0x01020304, 0x0506, AudioFormat("pcm_s16le", 16000), b"\0\0").pack()
    assert payload[:16] == bytes([1, 0, 0x3E, 0x80, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 5, 6])


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x01\x01\x1f", "invalid_audio_header"),
        (bytes([2, 1, 0x1F, 0x40]) + bytes(12) + b"\xff", "invalid_audio_header"),
        (bytes([1, 9, 0x1F, 0x40]) + bytes(12) + b"\xff", "unsupported_encoding"),
        (bytes([1, 1, 0x0F, 0xA0]) + bytes(12) + b"\xff", "unsupported_sample_rate"),
        (bytes([1, 0, 0x1F, 0x40]) + bytes(12) + b"\x00\x00\x00", "invalid_audio_frame"),
        (bytes([1, 0, 0x1F, 0x40]) + bytes(12), "invalid_audio_frame"),
    ],
)
def test_a_malformed_message_is_rejected_with_a_code(payload, code):
    """Short, wrong version, unknown codec, bad rate, partial sample, no audio: each named."""
    with pytest.raises(AudioFormatError) as caught:
        AudioPacket.unpack(payload)
    assert caught.value.code == code


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"])
def test_silence_decodes_to_zero_in_every_encoding(encoding):
    """The bytes used to fill gaps are digital silence in the channel's own encoding."""
    fmt = AudioFormat(encoding, 8000)
    assert np.abs(decode_pcm(silence(fmt, 40), fmt)).max() < 1e-3


@pytest.mark.parametrize(
    ("encode", "encoding"), [(encode_mulaw, "pcm_mulaw"), (encode_alaw, "pcm_alaw")]
)
def test_the_test_g711_encoders_round_trip_through_the_service_decoder(encode, encoding):
    """The tests' G.711 encoders and the service's decoder agree within G.711's step size."""
    pcm = (np.sin(np.linspace(0, 40, 4000)) * 20000).astype(np.int16)
    decoded = decode_pcm(encode(pcm), AudioFormat(encoding, 8000))[:, 0] * 32768
    error = np.abs(decoded - pcm)
    assert error.max() <= np.maximum(np.abs(pcm) / 16, 64).max()
    assert np.mean(error) < 200


# Sequencer.


def test_packets_in_order_are_released_at_once():
    """In-order packets come straight through, without notes."""
    sequencer = Sequencer(window=4)
    assert [seqs(sequencer.push(packet(i), 0.0)) for i in range(3)] == [[0], [1], [2]]


def test_a_packet_arriving_early_waits_for_the_one_before_it():
    """2 before 1: 2 is held, then 1 releases 1 and 2, reported as reordered."""
    sequencer = Sequencer(window=4)
    assert seqs(sequencer.push(packet(0), 0.0)) == [0]
    assert seqs(sequencer.push(packet(2), 0.0)) == []
    assert seqs(sequencer.push(packet(1), 0.0)) == [Reordered(1), 1, 2]


def test_a_missing_packet_is_given_up_when_the_window_is_full():
    """With 1 lost, once more than `window` packets wait, a gap is reported and they flow."""
    sequencer = Sequencer(window=3)
    sequencer.push(packet(0), 0.0)
    assert [seqs(sequencer.push(packet(i), 0.0)) for i in (2, 3, 4)] == [[], [], []]
    assert seqs(sequencer.push(packet(5), 0.0)) == [Gap(1, 1), 2, 3, 4, 5]


def test_a_missing_packet_is_given_up_after_the_hold_time():
    """A held packet waits at most hold_s; expire() then releases it after a gap note."""
    sequencer = Sequencer(window=8, hold_s=0.5)
    sequencer.push(packet(0), 0.0)
    sequencer.push(packet(3), 10.0)
    assert seqs(sequencer.expire(10.4)) == []
    assert seqs(sequencer.expire(10.5)) == [Gap(1, 2), 3]


def test_a_packet_after_its_gap_is_late_and_a_repeat_is_a_duplicate():
    """Once given up, 1 is Late; 0 again is a Duplicate; neither is released."""
    sequencer = Sequencer(window=1)
    sequencer.push(packet(0), 0.0)
    sequencer.push(packet(2), 0.0)
    assert Gap(1, 1) in sequencer.push(packet(3), 0.0)
    assert sequencer.push(packet(1), 0.0) == [Late(1)]
    assert sequencer.push(packet(0), 0.0) == [Duplicate(0)]
    assert sequencer.push(packet(3), 0.0) == [Duplicate(3)]


def test_a_stream_that_starts_mid_call_starts_at_its_lowest_seq():
    """Without seq 0, the first packets wait for the window, then start at the lowest seq."""
    sequencer = Sequencer(window=2)
    assert seqs(sequencer.push(packet(41), 0.0)) == []
    assert seqs(sequencer.push(packet(40), 0.0)) == [Reordered(40)]
    assert seqs(sequencer.push(packet(42), 0.0)) == [40, 41, 42]


def test_flush_releases_everything_held_with_its_gaps():
    """At the end of input, held packets come out in order with the gaps between them."""
    sequencer = Sequencer(window=8)
    sequencer.push(packet(0), 0.0)
    sequencer.push(packet(4), 0.0)
    sequencer.push(packet(2), 0.0)
    assert seqs(sequencer.flush()) == [Gap(1, 1), 2, Gap(3, 3), 4]
    assert sequencer.held == 0
