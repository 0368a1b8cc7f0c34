"""Raw audio frames in, 16 kHz mono float32 out.

The session accepts PCM in the format the client announced (`AudioFormat`), checks every frame
against it, downmixes to mono and resamples to the recognizers' 16 kHz with soxr (a real
band-limited resampler, streaming, so chunk boundaries leave no clicks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from streaming.errors import AudioFormatError, ConfigError

SAMPLE_RATE = 16_000  # Hz: what every recognizer consumes
MIN_INPUT_RATE = 8_000  # Hz
MAX_INPUT_RATE = 48_000  # Hz

# Bytes per sample of each supported encoding. G.711 (mu-law, A-law) serves telephony taps.
BYTES_PER_SAMPLE = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}


@dataclass(frozen=True)
class AudioFormat:
    """How the client's binary frames are encoded."""

    # one of BYTES_PER_SAMPLE
    encoding: str = "pcm_s16le"
    # samples per second per channel, 8000..48000
    sample_rate: int = SAMPLE_RATE
    # 1 (mono) or 2 (stereo, downmixed by averaging)
    channels: int = 1

    def __post_init__(self) -> None:
        if self.encoding not in BYTES_PER_SAMPLE:
            raise ConfigError(
                f"unsupported audio encoding {self.encoding!r}; "
                f"supported: {', '.join(sorted(BYTES_PER_SAMPLE))}",
                code="unsupported_encoding",
            )
        if (
            isinstance(self.sample_rate, bool)
            or not isinstance(self.sample_rate, int)
            or not MIN_INPUT_RATE <= self.sample_rate <= MAX_INPUT_RATE
        ):
            raise ConfigError(
                f"unsupported sample_rate {self.sample_rate!r}; "
                f"expected an integer from {MIN_INPUT_RATE} to {MAX_INPUT_RATE} Hz",
                code="unsupported_sample_rate",
            )
        if self.channels not in (1, 2) or isinstance(self.channels, bool):
            raise ConfigError(
                f"unsupported channels {self.channels!r}; expected 1 or 2",
                code="unsupported_channels",
            )

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample across all channels."""
        return BYTES_PER_SAMPLE[self.encoding] * self.channels

    def duration_ms(self, n_bytes: int) -> float:
        """Duration of `n_bytes` of audio in this format, in milliseconds."""
        return 1000.0 * n_bytes / self.frame_bytes / self.sample_rate


def _mulaw_table() -> np.ndarray:
    """ITU-T G.711 mu-law: 256 codes to linear float in [-1, 1]."""
    codes = ~np.arange(256, dtype=np.uint8)  # mu-law bytes are stored inverted
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    linear = np.where(sign != 0, 0x84 - magnitude, magnitude - 0x84)
    return (linear / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    """ITU-T G.711 A-law: 256 codes to linear float in [-1, 1]."""
    codes = np.arange(256, dtype=np.uint8) ^ 0x55  # A-law toggles the even bits
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = (codes & 0x0F).astype(np.int32)
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent.astype(np.int32) - 1, 0),
    )
    linear = np.where(sign != 0, magnitude, -magnitude)
    return (linear / 32768.0).astype(np.float32)


MULAW_TO_FLOAT = _mulaw_table()
ALAW_TO_FLOAT = _alaw_table()


def decode_pcm(data: bytes, fmt: AudioFormat) -> np.ndarray:
    """Decodes one frame to float32 samples of shape (n, channels), values in [-1, 1].

    Raises:
        AudioFormatError: the byte count is not a whole number of samples, or float samples
            are not finite.
    """
    if len(data) % fmt.frame_bytes:
        raise AudioFormatError(
            f"audio frame of {len(data)} bytes is not a whole number of {fmt.encoding} samples "
            f"({fmt.frame_bytes} bytes per sample over {fmt.channels} channel(s)); frame rejected",
            code="invalid_audio_frame",
        )
    if fmt.encoding == "pcm_s16le":
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    elif fmt.encoding == "pcm_f32le":
        samples = np.frombuffer(data, "<f4").astype(np.float32)
        if not np.isfinite(samples).all():
            raise AudioFormatError(
                "pcm_f32le frame contains NaN or infinite samples; frame rejected",
                code="invalid_audio_frame",
            )
        samples = np.clip(samples, -1.0, 1.0)
    elif fmt.encoding == "pcm_mulaw":
        samples = MULAW_TO_FLOAT[np.frombuffer(data, np.uint8)]
    else:
        samples = ALAW_TO_FLOAT[np.frombuffer(data, np.uint8)]
    return samples.reshape(-1, fmt.channels)


class AudioConverter:
    """Converts a stream of frames in one `AudioFormat` to 16 kHz mono float32.

    Keeps the resampler's filter state between frames. `flush()` drains the resampler's few
    milliseconds of delay at a segment boundary that must not wait for more audio.
    """

    def __init__(self, fmt: AudioFormat, max_frame_ms: float):
        self.format = fmt
        self.max_frame_ms = max_frame_ms
        self._resampler: soxr.ResampleStream | None = None
        if fmt.sample_rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(
                fmt.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
            )

    def convert(self, data: bytes) -> np.ndarray:
        """Checks and converts one frame; returns the 16 kHz mono samples it yields.

        Raises:
            AudioFormatError: empty, oversized or malformed frame (the frame is not used).
        """
        if not data:
            raise AudioFormatError("empty audio frame; frame rejected", code="invalid_audio_frame")
        duration = self.format.duration_ms(len(data))
        if duration > self.max_frame_ms:
            raise AudioFormatError(
                f"audio frame of {duration:.0f} ms is longer than the limit of "
                f"{self.max_frame_ms:.0f} ms; split it into smaller frames (frame rejected)",
                code="frame_too_large",
            )
        mono = decode_pcm(data, self.format).mean(axis=1, dtype=np.float32)
        if self._resampler is None:
            return mono
        return self._resampler.resample_chunk(mono, last=False)

    def flush(self) -> np.ndarray:
        """Returns the samples still inside the resampler and resets it for what follows."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resampler.clear()
        return tail
