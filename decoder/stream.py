"""The decoder side of streaming: a KV cache with a stable prefix, extended and re-decoded.

One segment's prompt is

    [system turn ... <|audio_start|>] [audio of completed windows] | [audio of the open window]
    [<|audio_end|> ... assistant\\n] [language X<asr_text>] [committed text] [continuation]

Everything left of `|` is *stable*: the system turn never changes within a segment, and an
encoder window, once complete, never changes again (`encoder.state.StepOutput.stable`). Its KV
entries are computed once (`open_stream`, `append_stable`) and kept. Everything right of `|`
changes at every step, because the open window's audio is recomputed and the text attends to
it, so each step truncates the cache back to the stable prefix and prefills the open window,
the turn tail, the language prefill and the committed text again, then generates
(`continue_stream`). Per step, the decoder therefore processes

    new stable audio (once) + open-window audio + ~5 tail tokens + language prefill
    + committed text + draft, then the generated tokens one by one,

which depends on the window length and the segment's committed text, not on the session.

`DecoderStream` is a frozen value: the cache it points to is mutated only past `stable`, so a
step that fails half-way can be retried with the same value.

Shape legend: N audio embeddings; D hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from decoder.generate import Generated, Steps, decode_steps, prefill_steps, run
from decoder.kv_cache import KVCache
from decoder.model import QwenDecoder


@dataclass(frozen=True)
class DecoderStream:
    """Decoder state of one segment.

    Attributes:
        cache: the segment's KV cache; positions past `stable` are scratch.
        stable: cache positions that are final (system turn + completed windows' audio).
        audio: stable audio embeddings in the cache.
    """

    cache: KVCache
    stable: int
    audio: int = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the cache."""
        return self.cache.nbytes


def open_stream_steps(
    decoder: QwenDecoder, prefix: Sequence[int], *, capacity: int = 512
) -> Steps[DecoderStream]:
    """`open_stream` as steps (`decoder.generate.Steps`)."""
    cache = decoder.new_cache(capacity=max(capacity, len(prefix)))
    yield from prefill_steps(decoder, cache, decoder.embed(list(prefix)), num_logits=0)
    return DecoderStream(cache, cache.position)


@torch.no_grad()
def open_stream(
    decoder: QwenDecoder, prefix: Sequence[int], *, capacity: int = 512
) -> DecoderStream:
    """Starts a segment: prefills the system turn up to <|audio_start|> into a new cache."""
    return run(decoder, open_stream_steps(decoder, prefix, capacity=capacity))


def append_stable_steps(
    decoder: QwenDecoder, stream: DecoderStream, audio: torch.Tensor
) -> Steps[DecoderStream]:
    """`append_stable` as steps."""
    if audio.shape[0] == 0:
        return stream
    stream.cache.truncate(stream.stable)
    x = audio.to(decoder.device, decoder.dtype)[None]  # (1, N, D)
    yield from prefill_steps(decoder, stream.cache, x, num_logits=0)
    return replace(stream, stable=stream.cache.position, audio=stream.audio + audio.shape[0])


@torch.no_grad()
def append_stable(
    decoder: QwenDecoder, stream: DecoderStream, audio: torch.Tensor
) -> DecoderStream:
    """Adds the embeddings (N, D) of newly completed windows to the stable prefix."""
    return run(decoder, append_stable_steps(decoder, stream, audio))


def continue_stream_steps(
    decoder: QwenDecoder,
    stream: DecoderStream,
    open_audio: torch.Tensor,
    tail: Sequence[int],
    *,
    max_new: int,
    stop_ids: frozenset[int],
    draft: Sequence[int] = (),
    history: Sequence[int] = (),
    loop_guard: bool = True,
    keep_logits: bool = False,
) -> Steps[Generated]:
    """Decodes one step: open-window audio and the turn tail after the stable prefix.

    Args:
        decoder: the decoder.
        stream: the segment's state; its cache is truncated to the stable prefix first.
        open_audio: (N_t, D) embeddings of the open window (may be empty).
        tail: ids after the audio: turn tail, language prefill, committed text (not empty).
        max_new: tokens to generate at most (draft tokens included).
        stop_ids: tokens that end the answer.
        draft: the continuation expected (the previous step's), verified in the prefill.
        history: the committed text's ids, for loop detection.
        loop_guard: stop at a decoding loop.
        keep_logits: keep each token's logits.

    Returns:
        The generated tokens (see `decoder.generate.decode`).
    """
    if not tail:
        raise ValueError("the tail after the audio must hold at least <|audio_end|>")
    stream.cache.truncate(stream.stable)
    x = torch.cat(
        [open_audio.to(decoder.device, decoder.dtype)[None], decoder.embed(list(tail))], dim=1
    )  # (1, N_t + len(tail), D)
    return (
        yield from decode_steps(
            decoder, stream.cache, x, max_new=max_new, stop_ids=stop_ids, draft=draft,
            history=history, loop_guard=loop_guard, keep_logits=keep_logits,
        )
    )  # fmt: skip


@torch.no_grad()
def continue_stream(
    decoder: QwenDecoder,
    stream: DecoderStream,
    open_audio: torch.Tensor,
    tail: Sequence[int],
    **options: Any,
) -> Generated:
    """`continue_stream_steps` run alone (same arguments)."""
    return run(decoder, continue_stream_steps(decoder, stream, open_audio, tail, **options))
