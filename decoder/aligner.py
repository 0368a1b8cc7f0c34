"""Qwen3-ForcedAligner: word times for a known transcript, in one forward pass.

The aligner is a Qwen3-ASR model whose LLM head classifies instead of generating: the prompt is
the audio followed by each cleaned word and two `<timestamp>` slots (no chat turns: a prefix
shifts every time late, vllm-project/vllm-omni#7240), and the head's argmax at each slot is the
word's start or end in 80 ms classes. It runs on the project's own `AudioEncoder` and
`QwenDecoder` (the decoder with `num_classes` head rows), loaded from either checkpoint layout.

    prompt  <|audio_start|> <|audio_pad|> x N <|audio_end|> w1 <ts><ts> w2 <ts><ts> ...
    times   argmax(head) x 80 ms -> fix_timestamps -> positive_spans -> display words

Audio longer than `MAX_ALIGN_S` (the reference's 180 s) is refused: past it the model's times
degrade (soniqo/speech-swift#237), and a transcript cannot be cut to match without knowing
where its words lie. The streaming and offline paths align one segment (at most 30 s) at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from decoder.alignment import (
    SEGMENT_MS,
    AlignmentError,
    AlignmentWord,
    aligner_language,
    alignment_words,
    display_words,
    fix_timestamps,
    positive_spans,
)
from decoder.config import aligner_classes
from decoder.loader import MODES, Mode, load_modules
from decoder.model import QwenDecoder
from decoder.tokenizer import QwenTokenizer
from encoder.checkpoint import Checkpoint, CheckpointError
from encoder.features import REFERENCE_MIN_SAMPLES, SAMPLE_RATE, LogMelFrontEnd
from encoder.model import AudioEncoder
from streaming.recognizer import Word

MAX_ALIGN_S = 180.0  # the reference's MAX_FORCE_ALIGN_INPUT_SECONDS
TIMESTAMP_TOKEN = "<timestamp>"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alignment:
    """Timed words of one transcript."""

    words: tuple[Word, ...]  # display words (punctuation, case kept), ms from the audio start
    tokens: tuple[str, ...]  # the cleaned words the model timed, one per word
    raw_ms: tuple[int, ...] = ()  # the reference's times: 2 per word, after its repair


@dataclass
class ForcedAligner:
    """A loaded Qwen3-ForcedAligner, shared by all sessions (read-only after loading)."""

    encoder: AudioEncoder
    decoder: QwenDecoder
    tokenizer: QwenTokenizer
    timestamp_id: int
    name: str
    mode: Mode = "float32"
    front_end: LogMelFrontEnd = field(default_factory=LogMelFrontEnd)

    @property
    def max_ms(self) -> int:
        """The latest time the head can express."""
        return self.decoder.config.head_size * SEGMENT_MS

    def prompt_ids(self, num_audio: int, words: Sequence[AlignmentWord]) -> list[int]:
        """The reference prompt: audio placeholders, then each word and its two slots."""
        special = self.tokenizer.special
        ids = [special.audio_start, *([special.audio_pad] * num_audio), special.audio_end]
        for word in words:
            ids += self.tokenizer.encode(word.text)
            ids += [self.timestamp_id, self.timestamp_id]
        return ids

    @torch.no_grad()
    def logits(self, audio: np.ndarray, words: Sequence[AlignmentWord]) -> torch.Tensor:
        """Head logits at every timestamp slot: (2 * words, classes), fp32."""
        features = self.front_end(audio, min_samples=REFERENCE_MIN_SAMPLES)
        embeddings, lengths = self.encoder(features[None])
        audio_embeddings = embeddings[0, : int(lengths[0])]
        ids = self.prompt_ids(audio_embeddings.shape[0], words)
        x = self.decoder.embed(ids)
        x[0, 1 : 1 + audio_embeddings.shape[0]] = audio_embeddings.to(x.dtype)
        text_start = 2 + audio_embeddings.shape[0]  # the head only runs over the words
        out = self.decoder(x, None, num_logits=len(ids) - text_start)[0]
        slots = torch.tensor(ids[text_start:]) == self.timestamp_id
        return out[slots.to(out.device)].float()

    def align(self, audio: np.ndarray, text: str, language: str | None = None) -> Alignment:
        """Times every word of `text` in `audio` (float32 at 16 kHz, mono).

        Args:
            audio: the audio the transcript is of.
            text: the transcript; punctuation and case are kept in the result.
            language: ISO code or name; None aligns with the default (whitespace/CJK) rule.

        Returns:
            One `Word` per alignable word (none for punctuation-only text), each with a positive
            duration, in order, inside the audio.

        Raises:
            AlignmentError: an unsupported language, audio longer than `MAX_ALIGN_S` or than the
                head can time, or a missing Japanese/Korean tokenizer package.
        """
        seconds = len(audio) / SAMPLE_RATE
        if seconds > MAX_ALIGN_S:
            raise AlignmentError(
                f"audio of {seconds:.1f} s is longer than the aligner's {MAX_ALIGN_S:.0f} s; "
                "align it a segment at a time"
            )
        if seconds * 1000 > self.max_ms:
            raise AlignmentError(
                f"audio of {seconds:.1f} s is longer than this aligner's head can time "
                f"({self.max_ms / 1000:.1f} s)"
            )
        words = alignment_words(text, aligner_language(language))
        if not words:
            return Alignment((), ())
        classes = self.logits(audio, words).argmax(dim=-1)
        fixed = fix_timestamps((classes * SEGMENT_MS).tolist())
        duration_ms = len(audio) * 1000 // SAMPLE_RATE
        spans = positive_spans(fixed, end_ms=max(duration_ms, 2 * len(words)))
        shown = display_words(text, words)
        timed = tuple(Word(s, a, b) for s, (a, b) in zip(shown, spans, strict=True))
        return Alignment(timed, tuple(w.text for w in words), tuple(fixed))


def load_aligner(
    directory: str | Path, *, mode: Mode = "float32", device: torch.device | str = "cpu"
) -> ForcedAligner:
    """Loads a Qwen3-ForcedAligner checkpoint folder (original or -hf layout).

    Args:
        directory: the checkpoint (config.json, weights, tokenizer files).
        mode: "float32", "bfloat16" or "int8", as for the recognizer (`decoder.loader`).
        device: "cpu" or a CUDA device.

    Raises:
        CheckpointError: not an aligner checkpoint, or a file missing or not fitting.
        ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    checkpoint = Checkpoint(directory)
    try:
        classes = aligner_classes(checkpoint.config)
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint.directory / 'config.json'}: {exc}") from exc
    if classes is None:
        raise CheckpointError(
            f"{checkpoint.directory}: not a Qwen3-ForcedAligner checkpoint (expected "
            "thinker_config.model_type 'qwen3_forced_aligner' or the architecture "
            "Qwen3ASRForTokenClassification)"
        )
    encoder, decoder, tokenizer = load_modules(checkpoint, mode=mode, device=device)
    timestamp_id = tokenizer.token_id(TIMESTAMP_TOKEN)
    configured = checkpoint.config.get("timestamp_token_id")
    if timestamp_id is None or (configured is not None and int(configured) != timestamp_id):
        raise CheckpointError(
            f"{checkpoint.directory}: the tokenizer's {TIMESTAMP_TOKEN} is {timestamp_id}, "
            f"config.json's timestamp_token_id is {configured}"
        )
    return ForcedAligner(
        encoder, decoder, tokenizer, timestamp_id, checkpoint.directory.name, mode,
        LogMelFrontEnd(device=device),
    )  # fmt: skip


__all__ = ["MAX_ALIGN_S", "Alignment", "AlignmentError", "ForcedAligner", "load_aligner"]
