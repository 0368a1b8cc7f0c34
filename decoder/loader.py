"""Loading a whole Qwen3-ASR checkpoint: encoder, decoder, tokenizer, generation settings.

`load_decoder` reads the LLM weights by canonical name through `encoder.checkpoint.Checkpoint`
(`model.*`, `lm_head.*`, the same in both layouts). A tied checkpoint, or one without
`lm_head.weight`, gets its output head tied to `model.embed_tokens.weight`.

`load_qwen` builds a `QwenModel` in one of three modes:

- "float32": encoder and decoder in fp32 (the reference's precision; parity tests use it);
- "bfloat16": encoder and decoder weights and activations in bf16 (RMSNorm in fp32);
- "int8": every Linear of the decoder (the output head included) and of the encoder's
  transformer and projector as `Int8Linear` (int8 weights, per-call int8 activations, fp32
  accumulation and output); the KV cache in bf16; embeddings, norms, convolutions, the
  encoder's conv_out and all other activations stay fp32.

On a CUDA device with `batch_invariant` (the default), the float modes run the decoder's
Linears and RMSNorms on fixed 64-row blocks (`decoder.fixed_rows`), so the streams of a batch
can share its passes without changing each other's bits; the CPU float modes keep the plain
layers (cheaper for one stream there) and decode a batch's streams one by one.

`QwenModel.transcribe` is the offline path: one whole utterance, the reference's features
(whole-utterance floor, 0.5 s minimum), one prompt, greedy decoding until a stop token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from decoder.config import DecoderConfig, aligner_classes
from decoder.fixed_rows import use_fixed_rows
from decoder.generate import decode
from decoder.model import QwenDecoder, Rotary
from decoder.prompt import (
    LANGUAGE_NAMES,
    build_prompt,
    language_name,
    normalize_language_name,
    parse_asr_output,
)
from decoder.quant import quantize_linears
from decoder.tokenizer import QwenTokenizer
from encoder.checkpoint import Checkpoint, CheckpointError, load_audio_encoder
from encoder.features import REFERENCE_MIN_SAMPLES, SAMPLE_RATE, LogMelFrontEnd
from encoder.model import AudioEncoder

Mode = Literal["float32", "bfloat16", "int8"]
MODES: tuple[Mode, ...] = ("float32", "bfloat16", "int8")
DEFAULT_MAX_NEW_TOKENS = 512  # the reference's default when generation_config.json has none
FINAL_TOKENS_PER_SECOND = 10  # cap of a whole-utterance answer: fast speech is ~4-6 tokens/s
FINAL_TOKENS_SLACK = 16  # plus a short tail
HEADER_TOKENS = 8  # room for "language Xxx<asr_text>" when the model names the language

log = logging.getLogger(__name__)


def decoder_parameter_names(decoder: QwenDecoder) -> dict[str, str]:
    """Maps each parameter name of `decoder` to its canonical checkpoint name."""
    names = {}
    for name in decoder.state_dict():
        names[name] = name if name.startswith("lm_head.") else "model." + name
    return names


def load_decoder(
    source: str | Path | Checkpoint,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> QwenDecoder:
    """Builds the Qwen3 decoder from a checkpoint (either layout), in eval mode.

    Raises:
        CheckpointError: if config.json's text_config is invalid, or the LLM tensors are
            missing, unexpected or of the wrong shape.
    """
    checkpoint = source if isinstance(source, Checkpoint) else Checkpoint(source)
    try:
        config = DecoderConfig.from_checkpoint_config(checkpoint.config)
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint.directory / 'config.json'}: {exc}") from exc
    # an aligner's class head cannot stand in for a missing LM head, nor the other way round
    tie = config.num_classes is None and (
        config.tie_word_embeddings or not checkpoint.has("lm_head.weight")
    )
    if tie and not config.tie_word_embeddings:
        log.warning("%s: no lm_head.weight; tying the head to the embedding", checkpoint.directory)
    with torch.device("meta"):
        decoder = QwenDecoder(config)  # shapes only; the weights come from the checkpoint
    names = decoder_parameter_names(decoder)
    if tie:
        names.pop("lm_head.weight")
    expected = {names[k]: tuple(v.shape) for k, v in decoder.state_dict().items() if k in names}
    unexpected = [
        n
        for n in checkpoint.names
        if (n.startswith("model.") or n.startswith("lm_head.")) and n not in expected
        and not (tie and n == "lm_head.weight")
    ]  # fmt: skip
    checkpoint.check_fits(
        expected,
        unexpected,
        f"LLM weights ({config.num_layers} layers, hidden {config.hidden_size})",
    )
    loaded = checkpoint.tensors(expected, dtype=dtype, device=device)
    decoder.load_state_dict({k: loaded[c] for k, c in names.items()}, strict=False, assign=True)
    if tie:
        decoder.tie_head()
    # RoPE frequencies are a constant, not stored: rebuild them off the meta device.
    decoder.rotary = Rotary(config.head_dim, config.rope_theta).to(device)
    return decoder.eval()


@dataclass(frozen=True)
class Transcription:
    """The offline result for one utterance."""

    language: str | None  # the model's language name ("English"), None if none was named
    text: str  # the transcript, after the reference's output parsing
    raw: str  # the decoded answer before parsing
    tokens: list[int]  # generated ids (the stop token included when one ended the answer)
    prompt: list[int]  # prompt ids with one placeholder per audio embedding
    logits: list[torch.Tensor] = field(default_factory=list)  # per token, when asked for
    stop: str = "eos"


@dataclass
class QwenModel:
    """Everything loaded from one checkpoint, shared by all streams."""

    encoder: AudioEncoder
    decoder: QwenDecoder
    tokenizer: QwenTokenizer
    stop_ids: frozenset[int]  # generation_config.json's eos_token_id
    languages: tuple[str, ...]  # language names the checkpoint lists (all 30 if none)
    max_new_tokens: int  # generation_config.json's max_new_tokens
    mode: Mode = "float32"
    front_end: LogMelFrontEnd = field(default_factory=LogMelFrontEnd)

    @torch.no_grad()
    def audio_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """(M, T) log-mel features -> (N, D) audio embeddings in the decoder's dtype."""
        embeddings, lengths = self.encoder(features[None])
        return embeddings[0, : int(lengths[0])].to(self.decoder.device, self.decoder.dtype)

    @torch.no_grad()
    def splice(self, ids: Sequence[int], start: int, audio: torch.Tensor) -> torch.Tensor:
        """Embeds prompt ids and puts the audio embeddings at positions start.. : (1, T, D)."""
        x = self.decoder.embed(list(ids))
        x[0, start : start + audio.shape[0]] = audio
        return x

    def final_budget(self, seconds: float, *, header: bool) -> int:
        """Most tokens a final answer for `seconds` of audio may have (proportional to it).

        Args:
            seconds: the audio the answer still has to cover.
            header: whether the answer starts with the language header the model writes.
        """
        budget = FINAL_TOKENS_SLACK + int(np.ceil(FINAL_TOKENS_PER_SECOND * seconds))
        return budget + (HEADER_TOKENS if header else 0)

    @torch.no_grad()
    def transcribe(
        self,
        audio: np.ndarray,
        *,
        context: str = "",
        language: str | None = None,
        max_new_tokens: int | None = None,
        loop_guard: bool = True,
        keep_logits: bool = False,
    ) -> Transcription:
        """Transcribes one whole utterance as the reference does (no streaming).

        Args:
            audio: float32 samples at 16 kHz, mono.
            context: the system turn's text.
            language: an ISO code or name to force, None to let the model detect it.
            max_new_tokens: cap on generated tokens (default: proportional to the audio).
            loop_guard: stop early in a decoding loop (off for reference comparisons).
            keep_logits: return each generated token's logits.

        Raises:
            ValueError: on an unknown language.
        """
        name = language_name(language) if language else None
        features = self.front_end(audio, min_samples=REFERENCE_MIN_SAMPLES)
        embeddings = self.audio_embeddings(features)
        prompt = build_prompt(
            self.tokenizer, num_audio=embeddings.shape[0], system=context, language=name
        )
        x = self.splice(prompt.ids, prompt.audio_start, embeddings)
        cache = self.decoder.new_cache(capacity=x.shape[1] + 64)
        budget = max_new_tokens or self.final_budget(len(audio) / SAMPLE_RATE, header=not name)
        out = decode(
            self.decoder, cache, x, max_new=budget, stop_ids=self.stop_ids,
            loop_guard=loop_guard, keep_logits=keep_logits,
        )  # fmt: skip
        raw = self.tokenizer.decode(out.tokens, skip_special=True)
        parsed = parse_asr_output(raw, name)
        return Transcription(
            parsed.language, parsed.text, raw, out.tokens, prompt.ids, out.logits, out.stop
        )


def load_qwen(
    directory: str | Path,
    *,
    mode: Mode = "float32",
    window_seconds: int | None = None,
    device: torch.device | str = "cpu",
    batch_invariant: bool = True,
) -> QwenModel:
    """Loads a Qwen3-ASR checkpoint folder (either layout) for inference.

    Args:
        directory: the checkpoint folder (config.json, weights, tokenizer files).
        mode: "float32", "bfloat16" or "int8" (see the module docstring).
        window_seconds: encoder attention window (1..8 s) instead of the checkpoint's.
        device: "cpu" or a CUDA device ("int8" is CPU only).
        batch_invariant: int8: the decoder rounds each row as if alone, so streams can share
            its passes (`decoder.quant`); False: plain fbgemm quantization, a quarter cheaper
            for one stream, never batched across streams. Float modes on CUDA: fixed-row
            blocks (`decoder.fixed_rows`); on the CPU float modes ignore it.

    Raises:
        CheckpointError: a file is missing, unreadable or does not fit.
        ValueError: an unknown mode, or int8 on a GPU.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "int8" and torch.device(device).type != "cpu":
        raise ValueError(f"int8 mode runs on the CPU only, got device {device!r}")
    checkpoint = Checkpoint(directory)
    if aligner_classes(checkpoint.config) is not None:
        raise CheckpointError(
            f"{checkpoint.directory}: a Qwen3-ForcedAligner checkpoint, not a speech recognizer; "
            "load it with --aligner"
        )
    encoder, decoder, tokenizer = load_modules(
        checkpoint, mode=mode, device=device, window_seconds=window_seconds,
        batch_invariant=batch_invariant,
    )  # fmt: skip
    stop_ids, max_new = _generation_settings(checkpoint.directory, tokenizer)
    supported = checkpoint.config.get("support_languages")
    languages = tuple(LANGUAGE_NAMES.values())
    if isinstance(supported, list) and supported:
        languages = tuple(normalize_language_name(str(n)) for n in supported)
    return QwenModel(
        encoder, decoder, tokenizer, stop_ids, languages, max_new, mode,
        LogMelFrontEnd(device=device),
    )  # fmt: skip


def load_modules(
    checkpoint: Checkpoint,
    *,
    mode: Mode,
    device: torch.device | str = "cpu",
    window_seconds: int | None = None,
    batch_invariant: bool = True,
) -> tuple[AudioEncoder, QwenDecoder, QwenTokenizer]:
    """The encoder, decoder and tokenizer of a checkpoint (recognizer or aligner), in `mode`.

    Raises:
        CheckpointError: a file is missing, unreadable or does not fit.
    """
    dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
    encoder = load_audio_encoder(
        checkpoint, dtype=dtype, device=device, window_seconds=window_seconds
    )
    decoder = load_decoder(checkpoint, dtype=dtype, device=device)
    # inference only: no parameter needs gradients, so no call can build an autograd graph
    encoder.requires_grad_(False)
    decoder.requires_grad_(False)
    if mode == "int8":
        quantize_model(encoder, decoder, batch_invariant=batch_invariant)
    elif batch_invariant and torch.device(device).type == "cuda":
        use_fixed_rows(decoder)
    return encoder, decoder, QwenTokenizer.from_directory(checkpoint.directory)


def quantize_model(
    encoder: AudioEncoder, decoder: QwenDecoder, *, batch_invariant: bool = True
) -> None:
    """Turns the Linear layers of a fp32 CPU model into `Int8Linear`s, in place.

    `batch_invariant`: the decoder's rows are rounded as if alone (see `load_qwen`).

    The decoder's KV caches are then kept in bf16: half the memory per stream, with an error
    far below the int8 layers' own.
    """
    quantize_linears(decoder, row_invariant=batch_invariant)
    decoder.kv_dtype = torch.bfloat16
    # The encoder steps one stream at a time, so it keeps fbgemm's plain (cheaper) input
    # quantization (batching its steps was measured and not adopted: BENCHMARKS.md).
    quantize_encoder(encoder, row_invariant=False)


def quantize_encoder(encoder: AudioEncoder, *, row_invariant: bool) -> None:
    """Turns the encoder's Linear layers into `Int8Linear`s, in place.

    The conv_out projection sees the conv features of every chunk; its error would feed every
    layer, and it is a small part of the encoder's time, so it stays in fp32.
    """
    quantize_linears(encoder, skip=("conv.conv_out",), row_invariant=row_invariant)


def _generation_settings(directory: Path, tokenizer: QwenTokenizer) -> tuple[frozenset[int], int]:
    """Stop ids and default max_new_tokens from generation_config.json (or the tokenizer)."""
    path = directory / "generation_config.json"
    settings = {}
    if path.is_file():
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    eos = settings.get("eos_token_id")
    if eos is None:
        stop = {tokenizer.special.im_end, tokenizer.special.endoftext}
    else:
        stop = set(eos) if isinstance(eos, list) else {int(eos)}
    return frozenset(int(i) for i in stop), int(
        settings.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    )
