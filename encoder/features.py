"""Log-mel front end of Qwen3-ASR, whole-utterance and streaming.

The features are Whisper-style log-mel spectra (not Kaldi fbank): a periodic Hann window of
400 samples, hop 160, centred STFT with reflect padding, power spectrum, 128 Slaney-scale,
Slaney-normalised mel filters over 0-8 kHz, `log10(max(mel, 1e-10))`, a floor `8` decades below
the maximum, then `(x + 4) / 4`. An utterance of N samples gives `N // 160` frames (the centred
STFT's last frame is dropped).

Whole utterance: `LogMelFrontEnd.__call__` (or `log_mel`) matches
`transformers.Qwen3ASRFeatureExtractor` on the valid frames of a single clip; pass
`min_samples=REFERENCE_MIN_SAMPLES` to also reproduce its zero-padding of clips shorter than 0.5 s.

Streaming: `step(samples, state) -> (frames, state)` and `flush(state) -> frames`. A frame is
emitted as soon as all 400 samples it covers have arrived (frame t needs samples up to index
160 t + 199), i.e. 12.5 ms after the frame's centre. The last one or two frames of an utterance
cover the reflect padding past its end; `flush` computes them once the end is known. Before the
floor, the streamed frames equal the whole-utterance frames (up to float rounding).

Floor policy. The reference floors each utterance at (its maximum - 8) over *all* its frames,
which a stream cannot know until it ends: a loud frame at minute 5 would change the features of
minute 1. The streaming form floors at (running maximum - 8), where the running maximum covers
every frame emitted so far including the current call. Reasons:

- it adapts to the input level exactly like the reference, whereas a fixed absolute floor is
  right for one recording level only (quiet audio would be floored where the reference is not);
- once the loudest frame has been seen (in speech usually within the first word) it is the
  reference's floor exactly; before that the streamed floor is lower, so a streamed value is
  either equal to the reference or lower (a quiet value the reference would have raised);
- its state is one float, and emitted frames never change, so the encoder can treat them as
  final.

The difference to the per-utterance floor is measured on the corpus by `floor_difference` and
reported in BENCHMARKS.md (section "Encoder (issue 3)").

Shape legend: S samples; M mel bins (128); K frequency bins (201); T frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 16_000  # Hz
N_FFT = 400  # 25 ms analysis window at 16 kHz
HOP_LENGTH = 160  # 10 ms at 16 kHz
NUM_MEL_BINS = 128  # mel filters
MEL_MAX_HZ = 8_000.0  # top of the mel filter bank (Nyquist)
MIN_MEL_POWER = 1e-10  # clamp before log10, so digital silence maps to -10
FLOOR_DECADES = 8.0  # values more than 8 decades (80 dB) below the maximum are raised to it
REFERENCE_MIN_SAMPLES = 8_000  # 0.5 s: the reference zero-pads shorter clips to this length
_HALF_WINDOW = N_FFT // 2  # 200 samples of reflect padding on each side of a centred STFT


def slaney_mel_filters(
    num_mel_bins: int = NUM_MEL_BINS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    max_hz: float = MEL_MAX_HZ,
) -> torch.Tensor:
    """Triangular mel filters on the Slaney scale with Slaney area normalisation.

    Args:
        num_mel_bins: number of filters.
        n_fft: FFT size; the filters cover its `n_fft // 2 + 1` frequency bins.
        sample_rate: sampling rate in Hz.
        max_hz: upper edge of the top filter in Hz (the lower edge of the bottom one is 0 Hz).

    Returns:
        float32 tensor (M, K).
    """
    # The Slaney scale is linear below 1 kHz (3 mel per 200 Hz) and logarithmic above.
    mel_per_log_hz = 27.0 / math.log(6.4)

    def to_mel(hz: np.ndarray) -> np.ndarray:
        return np.where(
            hz < 1000.0,
            3.0 * hz / 200.0,
            15.0 + np.log(np.maximum(hz, 1e-3) / 1000.0) * mel_per_log_hz,
        )

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(
            mel < 15.0, 200.0 * mel / 3.0, 1000.0 * np.exp((mel - 15.0) / mel_per_log_hz)
        )

    edges_mel = np.linspace(to_mel(np.array(0.0)), to_mel(np.array(max_hz)), num_mel_bins + 2)
    edges_hz = to_hz(edges_mel)  # (M + 2,) lower edge, centre, upper edge of each filter
    bin_hz = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)  # (K,)
    lower, centre, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rising = (bin_hz[:, None] - lower) / (centre - lower)  # (K, M)
    falling = (upper - bin_hz[:, None]) / (upper - centre)  # (K, M)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= 2.0 / (upper - lower)  # equal area per filter
    return torch.from_numpy(weights.T.copy()).to(torch.float32)


@dataclass(frozen=True)
class LogMelState:
    """Streaming front-end state; its size does not grow with the stream (at most 759 samples).

    Attributes:
        pending: float32 (S,). Before the first frame: the raw samples so far (S <= 200).
            After it: the left-reflect-padded signal from the first sample of the next frame.
        samples_seen: total samples received.
        frames_emitted: total frames returned so far.
        running_max: maximum log10 mel power over every frame emitted so far (-inf at first).
    """

    pending: torch.Tensor
    samples_seen: int
    frames_emitted: int
    running_max: float

    @classmethod
    def initial(cls) -> LogMelState:
        """The state of a stream that has received nothing."""
        return cls(torch.zeros(0), 0, 0, -math.inf)

    @property
    def started(self) -> bool:
        """Whether the left reflect padding has been applied (more than 200 samples seen)."""
        return self.samples_seen > _HALF_WINDOW


class LogMelFrontEnd:
    """128-bin log-mel features, for whole utterances and for streams.

    The instance holds only the constant filter bank and window; streaming state is explicit.

    Args:
        device: where the filters live and the features are computed (default CPU).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.filters = slaney_mel_filters().to(self.device)  # (M, K)
        self.window = torch.hann_window(N_FFT, periodic=True, device=self.device)  # (N_FFT,)

    def __call__(self, samples: np.ndarray | torch.Tensor, *, min_samples: int = 0) -> torch.Tensor:
        """Log-mel features of one whole utterance, floored at (its maximum - 8).

        Args:
            samples: mono float audio at 16 kHz in [-1, 1], shape (S,).
            min_samples: zero-pad shorter audio to this many samples first
                (`REFERENCE_MIN_SAMPLES` reproduces the reference extractor).

        Returns:
            float32 (M, S // 160). Audio of 200 samples or fewer gives no frames.

        Raises:
            ValueError: if `samples` is not one-dimensional.
        """
        audio = self._as_audio(samples)
        if audio.numel() < min_samples:
            audio = torch.nn.functional.pad(audio, (0, min_samples - audio.numel()))
        log_power = self.log_power(audio)
        if log_power.shape[1] == 0:
            return log_power
        return _normalise(log_power, float(log_power.max()))

    def log_power(self, audio: torch.Tensor) -> torch.Tensor:
        """log10 mel power of a whole utterance before the floor: (S,) -> (M, S // 160)."""
        if audio.numel() <= _HALF_WINDOW:
            # Reflect padding needs more samples than it pads; the reference pads to 0.5 s first.
            return torch.zeros(NUM_MEL_BINS, 0, device=self.device)
        spectrum = torch.stft(
            audio,
            N_FFT,
            HOP_LENGTH,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # (K, S // 160 + 1)
        return self._log_mel(spectrum[:, :-1])

    def initial_state(self) -> LogMelState:
        """The state of a new stream."""
        return LogMelState.initial()

    def step(
        self, samples: np.ndarray | torch.Tensor, state: LogMelState
    ) -> tuple[torch.Tensor, LogMelState]:
        """Consumes more audio of a stream and returns every frame that is now complete.

        Args:
            samples: the next mono float samples at 16 kHz, shape (S,); may be empty.
            state: the state returned by the previous call (or `initial_state()`).

        Returns:
            (frames, state): float32 (M, T) frames floored at (running maximum - 8), and the
            new state.

        Raises:
            ValueError: if `samples` is not one-dimensional.
        """
        audio = self._as_audio(samples)
        seen = state.samples_seen + audio.numel()
        pending = torch.cat([state.pending.to(self.device), audio])
        if not state.started:
            if seen <= _HALF_WINDOW:
                return self._empty(), LogMelState(pending, seen, 0, state.running_max)
            # Left reflect padding of a centred STFT: samples 200, 199, ..., 1 before sample 0.
            pending = torch.cat([pending[1 : _HALF_WINDOW + 1].flip(0), pending])
        count = (pending.numel() - N_FFT) // HOP_LENGTH + 1 if pending.numel() >= N_FFT else 0
        frames, running_max = self._emit(pending, count, state.running_max)
        rest = pending[count * HOP_LENGTH :].clone()  # not a view: keep the state small
        return frames, LogMelState(rest, seen, state.frames_emitted + count, running_max)

    def flush(self, state: LogMelState) -> torch.Tensor:
        """Ends a stream: returns its last frames, which overlap the reflect padding at its end.

        After `flush`, the frames of all calls together number `samples_seen // 160`.

        Args:
            state: the state after the last `step`.

        Returns:
            float32 (M, T) with T in 0..2.
        """
        if not state.started:
            return self._empty()
        total = state.samples_seen // HOP_LENGTH
        count = total - state.frames_emitted
        # Right reflect padding: samples N-2, N-3, ..., N-201 after the last sample N-1.
        tail = state.pending[-_HALF_WINDOW - 1 : -1].flip(0)
        padded = torch.cat([state.pending.to(self.device), tail.to(self.device)])
        frames, _ = self._emit(padded, count, state.running_max)
        return frames

    def _emit(
        self, padded: torch.Tensor, count: int, running_max: float
    ) -> tuple[torch.Tensor, float]:
        """The first `count` frames of a padded signal, floored at (running maximum - 8)."""
        if count <= 0:
            return self._empty(), running_max
        segment = padded[: (count - 1) * HOP_LENGTH + N_FFT]
        spectrum = torch.stft(
            segment, N_FFT, HOP_LENGTH, window=self.window, center=False, return_complex=True
        )  # (K, count)
        log_power = self._log_mel(spectrum)
        running_max = max(running_max, float(log_power.max()))
        return _normalise(log_power, running_max), running_max

    def _log_mel(self, spectrum: torch.Tensor) -> torch.Tensor:
        power = spectrum.abs() ** 2  # (K, T)
        return torch.clamp(self.filters @ power, min=MIN_MEL_POWER).log10()  # (M, T)

    def _as_audio(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        audio = torch.as_tensor(samples)
        if audio.dim() != 1:
            raise ValueError(f"samples must be 1-D mono audio, got shape {tuple(audio.shape)}")
        return audio.to(self.device, torch.float32)

    def _empty(self) -> torch.Tensor:
        return torch.zeros(NUM_MEL_BINS, 0, device=self.device)


def _normalise(log_power: torch.Tensor, maximum: float) -> torch.Tensor:
    """Applies the floor (maximum - 8) and the Whisper scaling (x + 4) / 4."""
    return (torch.clamp(log_power, min=maximum - FLOOR_DECADES) + 4.0) / 4.0


def log_mel(samples: np.ndarray | torch.Tensor, *, min_samples: int = 0) -> torch.Tensor:
    """Log-mel features of one whole utterance; see `LogMelFrontEnd.__call__`."""
    return LogMelFrontEnd()(samples, min_samples=min_samples)


def stream_log_mel(
    samples: np.ndarray | torch.Tensor, step_samples: int, front_end: LogMelFrontEnd | None = None
) -> torch.Tensor:
    """Runs the streaming front end over a whole utterance in fixed steps, then flushes.

    Args:
        samples: mono float audio at 16 kHz, shape (S,).
        step_samples: samples per `step` call (e.g. 16000 for 1 s).
        front_end: the front end to use (a new one by default).

    Returns:
        float32 (M, S // 160): the concatenated frames of every call.

    Raises:
        ValueError: if `step_samples` is not positive.
    """
    if step_samples <= 0:
        raise ValueError(f"step_samples must be positive, got {step_samples}")
    front_end = front_end or LogMelFrontEnd()
    audio = torch.as_tensor(samples)
    state = front_end.initial_state()
    pieces = []
    for start in range(0, audio.shape[0], step_samples):
        frames, state = front_end.step(audio[start : start + step_samples], state)
        pieces.append(frames)
    pieces.append(front_end.flush(state))
    return torch.cat(pieces, dim=1)


@dataclass(frozen=True)
class FloorDifference:
    """How far streamed features are from the reference's per-utterance floor.

    Attributes:
        max_abs: largest absolute difference of any feature value.
        mean_abs: mean absolute difference over all values.
        changed_fraction: fraction of values that differ by more than 1e-6.
    """

    max_abs: float
    mean_abs: float
    changed_fraction: float


def floor_difference(
    utterances: list[np.ndarray], step_samples: int, front_end: LogMelFrontEnd | None = None
) -> FloorDifference:
    """Compares streamed features (running-max floor) with whole-utterance features.

    Args:
        utterances: mono float audio clips at 16 kHz.
        step_samples: samples per streaming step.
        front_end: the front end to use (a new one by default).

    Returns:
        The differences pooled over all clips.
    """
    front_end = front_end or LogMelFrontEnd()
    diffs = []
    for samples in utterances:
        whole = front_end(samples)
        streamed = stream_log_mel(samples, step_samples, front_end)
        diffs.append((whole - streamed).abs().flatten())
    pooled = torch.cat(diffs)
    return FloorDifference(
        max_abs=float(pooled.max()),
        mean_abs=float(pooled.mean()),
        changed_fraction=float((pooled > 1e-6).float().mean()),
    )
