"""Configuration of the AuT audio encoder of Qwen3-ASR.

`EncoderConfig` holds only what shapes the encoder. The three published sizes are module
constants (frozen, so they cannot be modified); `EncoderConfig.from_checkpoint_config` reads the
`config.json` of a checkpoint in either published layout:

- original (`Qwen/Qwen3-ASR-0.6B`): `thinker_config.audio_config` with `encoder_layers`,
  `d_model`, `encoder_attention_heads`, `encoder_ffn_dim`, ...;
- transformers-native (`...-hf`): top-level `audio_config`. transformers 5.23 writes the same
  field names, but its config class also accepts the aliases `num_hidden_layers`, `hidden_size`,
  `num_attention_heads` and `intermediate_size`, so both spellings are read in both layouts.

The attention window is stored in the checkpoint as `n_window_infer` mel frames (800 = 8 s); here it
is `window_seconds`, a whole number of 1 s conv chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

CHUNK_FRAMES = 100  # mel frames per conv chunk: 1 s at a 10 ms hop
MIN_WINDOW_SECONDS = 1  # shortest attention window the model was trained with
MAX_WINDOW_SECONDS = 8  # longest window, and the one the released checkpoints use

# Field names in the checkpoint's audio config, with the aliases transformers accepts.
_AUDIO_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "d_model": ("d_model", "hidden_size"),
        "num_layers": ("encoder_layers", "num_hidden_layers"),
        "num_heads": ("encoder_attention_heads", "num_attention_heads"),
        "ffn_dim": ("encoder_ffn_dim", "intermediate_size"),
        "output_dim": ("output_dim",),
        "num_mel_bins": ("num_mel_bins",),
        "conv_channels": ("downsample_hidden_size",),
    }
)
_OPTIONAL_FIELDS = ("num_mel_bins", "conv_channels")


def conv_output_length(frames: int) -> int:
    """Number of outputs of three Conv2d(kernel 3, stride 2, padding 1) layers along one axis.

    Args:
        frames: input length (mel frames or mel bins); 0 gives 0.

    Returns:
        The length after the third convolution, e.g. 100 -> 13 and 128 -> 16.
    """
    for _ in range(3):
        frames = (frames - 1) // 2 + 1 if frames > 0 else 0
    return frames


TOKENS_PER_CHUNK = conv_output_length(CHUNK_FRAMES)  # 13 tokens per second of audio


def num_tokens(frames: int) -> int:
    """Number of encoder output tokens for `frames` mel frames of one utterance.

    Every full 1 s chunk gives 13 tokens; a last partial chunk of L frames gives
    `conv_output_length(L)`.

    Args:
        frames: number of mel frames (>= 0).

    Returns:
        The token count, e.g. 50 -> 7, 200 -> 26, 800 -> 104.
    """
    full, rest = divmod(frames, CHUNK_FRAMES)
    return full * TOKENS_PER_CHUNK + conv_output_length(rest)


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of the AuT encoder and its projector into the LLM width.

    Raises:
        ValueError: at construction, naming the field and value, when a field is out of range.
    """

    d_model: int  # transformer width (896 for 0.6B, 1024 for 1.7B and the aligner)
    num_layers: int  # number of pre-LN transformer layers
    num_heads: int  # attention heads; head_dim = d_model / num_heads (64 in released models)
    ffn_dim: int  # hidden width of the GELU feed-forward block
    output_dim: int  # projector output width, equal to the LLM hidden size
    num_mel_bins: int = 128  # log-mel channels of the input features
    conv_channels: int = 480  # channels of the three stride-2 convolutions
    window_seconds: int = 8  # attention window in whole 1 s chunks (1..8); 8 = 104 tokens
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm (torch default, as in the reference)

    def __post_init__(self) -> None:
        for name in (
            "d_model",
            "num_layers",
            "num_heads",
            "ffn_dim",
            "output_dim",
            "num_mel_bins",
            "conv_channels",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"EncoderConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"EncoderConfig.d_model ({self.d_model}) must be divisible by "
                f"EncoderConfig.num_heads ({self.num_heads})"
            )
        if self.d_model % 2 != 0:
            # The sinusoidal table concatenates d_model/2 sines and d_model/2 cosines.
            raise ValueError(f"EncoderConfig.d_model must be even, got {self.d_model}")
        if (
            not _is_int(self.window_seconds)
            or not MIN_WINDOW_SECONDS <= self.window_seconds <= MAX_WINDOW_SECONDS
        ):
            raise ValueError(
                f"EncoderConfig.window_seconds must be a whole number of seconds from "
                f"{MIN_WINDOW_SECONDS} to {MAX_WINDOW_SECONDS}, got {self.window_seconds!r}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(
                f"EncoderConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.num_heads

    @property
    def window_tokens(self) -> int:
        """Tokens per attention window (104 for 8 s)."""
        return self.window_seconds * TOKENS_PER_CHUNK

    @property
    def window_frames(self) -> int:
        """Mel frames per attention window (800 for 8 s)."""
        return self.window_seconds * CHUNK_FRAMES

    @property
    def conv_features(self) -> int:
        """Input width of `conv_out`: channels times mel bins left after the convs (480 * 16)."""
        return self.conv_channels * conv_output_length(self.num_mel_bins)

    def with_window(self, seconds: int) -> EncoderConfig:
        """The same config with another attention window (validated like the constructor)."""
        return dataclasses.replace(self, window_seconds=seconds)

    @classmethod
    def from_checkpoint_config(
        cls, config: Mapping[str, Any], *, window_seconds: int | None = None
    ) -> EncoderConfig:
        """Reads the encoder shape from a checkpoint's parsed `config.json`.

        Args:
            config: the whole parsed `config.json`, original (`thinker_config`) or `-hf` layout.
            window_seconds: attention window to use instead of the checkpoint's `n_window_infer`.

        Returns:
            The encoder config.

        Raises:
            ValueError: naming the field when the audio config is absent, a required field is
                missing, aliases disagree, or a value is unsupported.
        """
        if "thinker_config" in config:
            where = "thinker_config"
            parent = config["thinker_config"]
            if not isinstance(parent, Mapping):
                raise ValueError(f"config.json: thinker_config must be an object, got {parent!r}")
        elif "audio_config" in config:
            where, parent = "", config
        else:
            raise ValueError(
                "config.json has neither thinker_config.audio_config (original layout) "
                "nor audio_config (-hf layout)"
            )
        prefix = f"{where}.audio_config" if where else "audio_config"
        audio = parent.get("audio_config")
        if not isinstance(audio, Mapping):
            raise ValueError(f"config.json: {prefix} must be an object, got {audio!r}")

        values: dict[str, Any] = {}
        for field, keys in _AUDIO_KEYS.items():
            found = {key: audio[key] for key in keys if key in audio}
            if len(set(map(repr, found.values()))) > 1:
                raise ValueError(f"config.json: {prefix} has conflicting values {found}")
            if found:
                values[field] = next(iter(found.values()))
            elif field not in _OPTIONAL_FIELDS:
                raise ValueError(f"config.json: {prefix}.{keys[0]} is missing")

        n_window = audio.get("n_window", CHUNK_FRAMES // 2)
        if n_window != CHUNK_FRAMES // 2:
            # 13 tokens per chunk and the per-chunk positions are tied to 100-frame chunks.
            raise ValueError(
                f"config.json: {prefix}.n_window must be {CHUNK_FRAMES // 2}, got {n_window!r}"
            )
        activation = audio.get("activation_function", "gelu")
        if activation != "gelu":
            raise ValueError(
                f"config.json: {prefix}.activation_function must be 'gelu', got {activation!r}"
            )
        if window_seconds is None:
            n_window_infer = audio.get("n_window_infer", MAX_WINDOW_SECONDS * CHUNK_FRAMES)
            if not _is_int(n_window_infer) or n_window_infer % CHUNK_FRAMES != 0:
                raise ValueError(
                    f"config.json: {prefix}.n_window_infer must be a multiple of "
                    f"{CHUNK_FRAMES} frames, got {n_window_infer!r}"
                )
            window_seconds = n_window_infer // CHUNK_FRAMES

        text = parent.get("text_config")
        if (
            isinstance(text, Mapping)
            and "hidden_size" in text
            and text["hidden_size"] != values["output_dim"]
        ):
            raise ValueError(
                f"config.json: {prefix}.output_dim ({values['output_dim']!r}) must equal "
                f"the LLM width text_config.hidden_size ({text['hidden_size']!r})"
            )
        return cls(window_seconds=window_seconds, **values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


QWEN3_ASR_0_6B = EncoderConfig(
    d_model=896, num_layers=18, num_heads=14, ffn_dim=3584, output_dim=1024
)
QWEN3_ASR_1_7B = EncoderConfig(
    d_model=1024, num_layers=24, num_heads=16, ffn_dim=4096, output_dim=2048
)
# The aligner pairs the 1.7B-size encoder with the 0.6B LLM, hence output_dim 1024.
QWEN3_FORCED_ALIGNER_0_6B = EncoderConfig(
    d_model=1024, num_layers=24, num_heads=16, ffn_dim=4096, output_dim=1024
)
