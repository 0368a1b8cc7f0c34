"""Audio frames: decoding, validation, downmix and resampling."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.audio import AudioConverter, AudioFormat, decode_pcm
from streaming.errors import AudioFormatError, ConfigError


def _sine(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def test_s16_and_f32_decode_to_the_same_samples():
    """The same waveform sent as s16 or f32 decodes to the same floats (within s16 precision)."""
    x = _sine(440, 16000, 0.1)
    s16 = decode_pcm((x * 32767).astype("<i2").tobytes(), AudioFormat("pcm_s16le"))
    f32 = decode_pcm(x.astype("<f4").tobytes(), AudioFormat("pcm_f32le"))
    assert s16.shape == f32.shape == (1600, 1)
    assert np.max(np.abs(s16 - f32)) < 1e-4


def test_g711_codes_decode_to_the_standard_levels():
    """mu-law 0x00/0xFF and A-law 0xD5/0x2A decode to the G.711 table values."""
    mu = decode_pcm(bytes([0x00, 0x80, 0xFF]), AudioFormat("pcm_mulaw", 8000))[:, 0] * 32768
    al = decode_pcm(bytes([0xD5, 0x55, 0x2A]), AudioFormat("pcm_alaw", 8000))[:, 0] * 32768
    assert mu.tolist() == [-32124, 32124, 0]
    assert al.tolist() == [8, -8, -32256]


def test_odd_byte_count_for_s16_is_rejected_with_a_clear_error():
    """An s16 frame with an odd number of bytes raises invalid_audio_frame naming the count."""
    with pytest.raises(AudioFormatError, match="321 bytes") as info:
        decode_pcm(b"\x00" * 321, AudioFormat("pcm_s16le"))
    assert info.value.code == "invalid_audio_frame"


def test_stereo_frame_must_hold_whole_sample_pairs():
    """A stereo s16 frame of 6 bytes (1.5 sample pairs) is rejected."""
    with pytest.raises(AudioFormatError):
        decode_pcm(b"\x00" * 6, AudioFormat("pcm_s16le", channels=2))


def test_non_finite_float_samples_are_rejected():
    """NaN in an f32 frame is an error, not silently clipped."""
    bad = np.array([0.1, np.nan], "<f4").tobytes()
    with pytest.raises(AudioFormatError, match="NaN"):
        decode_pcm(bad, AudioFormat("pcm_f32le"))


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("encoding", "opus", "unsupported_encoding"),
        ("sample_rate", 4000, "unsupported_sample_rate"),
        ("sample_rate", 96000, "unsupported_sample_rate"),
        ("sample_rate", "16000", "unsupported_sample_rate"),
        ("channels", 3, "unsupported_channels"),
    ],
)
def test_unsupported_formats_raise_config_errors(field, value, code):
    """Encodings, rates and channel counts outside the protocol's range are refused by name."""
    with pytest.raises(ConfigError) as info:
        AudioFormat(**{field: value})
    assert info.value.code == code
    assert str(value) in info.value.message


def test_frames_longer_than_the_limit_are_rejected():
    """A 1.5 s frame against a 1 s limit raises frame_too_large."""
    converter = AudioConverter(AudioFormat(), max_frame_ms=1000)
    with pytest.raises(AudioFormatError) as info:
        converter.convert(b"\x00\x00" * 24000)
    assert info.value.code == "frame_too_large"


def test_empty_frame_is_rejected():
    """An empty binary frame is an error rather than a silent no-op."""
    with pytest.raises(AudioFormatError):
        AudioConverter(AudioFormat(), 1000).convert(b"")


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_pitch_and_duration(rate):
    """A 440 Hz tone at any input rate comes out at 16 kHz as 440 Hz and the same length."""
    converter = AudioConverter(AudioFormat(sample_rate=rate), max_frame_ms=1000)
    x = _sine(440, rate, 2.0)
    out = []
    frame = rate // 50  # 20 ms frames
    for i in range(0, len(x), frame):
        out.append(converter.convert((x[i : i + frame] * 32767).astype("<i2").tobytes()))
    out.append(converter.flush())
    y = np.concatenate(out)
    assert abs(len(y) - 32000) <= 2
    assert abs(_peak_hz(y[4000:28000], 16000) - 440) < 2
    assert abs(np.sqrt(np.mean(y[4000:28000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def test_resampler_does_not_alias_energy_above_the_new_nyquist():
    """A 12 kHz tone at 48 kHz (above 8 kHz) is filtered out instead of folding down."""
    converter = AudioConverter(AudioFormat(sample_rate=48000), max_frame_ms=1000)
    x = _sine(12000, 48000, 1.0)
    y = np.concatenate([converter.convert((x * 32767).astype("<i2").tobytes()), converter.flush()])
    assert np.sqrt(np.mean(y[2000:-2000] ** 2)) < 0.01


def test_stereo_is_downmixed_by_averaging():
    """Left +0.5 and right -0.5 average to silence; equal channels keep their level."""
    fmt = AudioFormat(channels=2)
    opposite = np.array([[0.5, -0.5]] * 10, "<f4")
    same = np.array([[0.25, 0.25]] * 10, "<f4")
    converter = AudioConverter(AudioFormat("pcm_f32le", channels=2), 1000)
    assert np.allclose(converter.convert(opposite.tobytes()), 0.0)
    assert np.allclose(converter.convert(same.tobytes()), 0.25)
    assert fmt.frame_bytes == 4
