"""Greedy decoding over an explicit KV cache: prefill, token generator, draft verification.

- `prefill` runs a prompt piece through the decoder in bounded chunks and computes logits only
  for the last positions asked for.
- `decode` continues a prompt: it prefills the new prompt tokens *and a draft* (normally the
  continuation the previous streaming step produced) in one pass, keeps the longest draft prefix
  that greedy decoding would have produced itself (the argmax at each draft position equals the
  next draft token), rolls the cache back past the rest, and generates from there. The result is
  exactly the greedy continuation; a good draft only makes it cheaper, because verifying k draft
  tokens costs one k-token prefill (the weights are read once) instead of k sequential steps.
- A loop (`streaming.loops`) is looked for only when generation has used up its budget: a
  pattern that repeats within a budget sized to the audio is speech, one past it is a loop.
- Each is written once as `Steps` (`prefill_steps`, `decode_steps`: generators of the decoder
  calls they need); `run` drives one alone, `run_batched` several streams in lockstep.

Shape legend: T tokens; D hidden; V vocabulary.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch

from decoder.kv_cache import KVCache
from decoder.model import QwenDecoder
from streaming.loops import without_loop

PREFILL_CHUNK = 256  # tokens per prefill pass: bounds the (T, S) attention scores of long audio

R = TypeVar("R")


@dataclass(frozen=True)
class Forward:
    """One decoder call a decode needs: new positions after its cache's, and logits wanted."""

    x: torch.Tensor  # (1, T, D) embeddings
    cache: KVCache
    num_logits: int


# A decode written as a generator: it yields the `Forward`s it needs one at a time, is sent each
# one's logits (num_logits, V), and returns its result. `run` drives one alone; `run_batched`
# drives several in lockstep, one packed decoder pass per round (`QwenDecoder.forward_many`).
Steps = Generator[Forward, torch.Tensor, R]


@torch.no_grad()
def run(decoder: QwenDecoder, steps: Steps[R]) -> R:
    """Drives one decode: each `Forward` is one `decoder(...)` call."""
    try:
        forward = next(steps)
        while True:
            logits = decoder(forward.x, forward.cache, num_logits=forward.num_logits)[0]
            forward = steps.send(logits)
    except StopIteration as done:
        return cast(R, done.value)


@torch.no_grad()
def run_batched(decoder: QwenDecoder, decodes: Sequence[Steps[R]]) -> list[R]:
    """Drives several decodes (each over its own cache) in lockstep.

    Each round packs the pending `Forward` of every decode still running into one
    `forward_many` pass: ragged prefills and single-token steps of different streams share the
    Linears and the head; attention stays per stream. A decode leaves the lockstep when it
    returns (stop token, loop, budget). With a batch-invariant decoder (int8) every decode's
    tokens are bitwise those of `run` alone. If a pass raises, the exception propagates and the
    caches hold scratch past their callers' stable prefixes only, so each can be retried.
    """
    results: list[R | None] = [None] * len(decodes)
    pending: dict[int, Forward] = {}
    for i, steps in enumerate(decodes):
        try:
            pending[i] = next(steps)
        except StopIteration as done:
            results[i] = done.value
    while pending:
        order = list(pending)
        forwards = [pending[i] for i in order]
        logits = decoder.forward_many(
            [f.x for f in forwards], [f.cache for f in forwards], [f.num_logits for f in forwards]
        )
        for i, out in zip(order, logits, strict=True):
            try:
                pending[i] = decodes[i].send(out[0])
            except StopIteration as done:
                results[i] = done.value
                del pending[i]
    return cast(list[R], results)


def prefill_steps(
    decoder: QwenDecoder,
    cache: KVCache,
    x: torch.Tensor,
    *,
    num_logits: int = 1,
    chunk: int = PREFILL_CHUNK,
) -> Steps[torch.Tensor]:
    """`prefill` as steps (see `Steps`)."""
    count = x.shape[1]
    if not 0 <= num_logits <= count:
        raise ValueError(f"num_logits must be in 0..{count}, got {num_logits}")
    body = count - max(num_logits, 1) if count else 0
    for start in range(0, body, chunk):
        yield Forward(x[:, start : min(start + chunk, body)], cache, 0)
    if count == 0:
        return x.new_zeros(0, decoder.config.vocab_size)
    return (yield Forward(x[:, body:], cache, num_logits))


@torch.no_grad()
def prefill(
    decoder: QwenDecoder,
    cache: KVCache,
    x: torch.Tensor,
    *,
    num_logits: int = 1,
    chunk: int = PREFILL_CHUNK,
) -> torch.Tensor:
    """Appends prompt positions to the cache and returns the logits of the last ones.

    Args:
        decoder: the decoder.
        cache: the sequence's cache; advanced by T.
        x: (1, T, D) embeddings.
        num_logits: how many of the last positions need logits (0: none).
        chunk: positions per decoder call (the last call holds all positions that need logits).

    Returns:
        (num_logits, V) logits.
    """
    return run(decoder, prefill_steps(decoder, cache, x, num_logits=num_logits, chunk=chunk))


@dataclass
class Generated:
    """Tokens produced by `decode`, with the bookkeeping a caller may report."""

    tokens: list[int] = field(default_factory=list)
    # logits (V,) each token was chosen from, when asked for
    logits: list[torch.Tensor] = field(default_factory=list)
    stop: str = "limit"  # "eos", "limit" or "loop"
    draft_accepted: int = 0  # tokens taken from the draft
    prefilled: int = 0  # positions prefilled (prompt + draft)
    decoded: int = 0  # sequential one-token decoder calls


def decode_steps(
    decoder: QwenDecoder,
    cache: KVCache,
    x: torch.Tensor,
    *,
    max_new: int,
    stop_ids: frozenset[int],
    draft: Sequence[int] = (),
    history: Sequence[int] = (),
    loop_guard: bool = True,
    keep_logits: bool = False,
) -> Steps[Generated]:
    """Prefills `x` (and a draft) and continues greedily, as steps (see `Steps`).

    Args:
        decoder: the decoder.
        cache: the cache up to the position before `x`; it ends holding the prompt and the
            accepted tokens (past the end is scratch).
        x: (1, T, D) embeddings of the prompt positions to add (T >= 1).
        max_new: tokens to produce at most (draft tokens included).
        stop_ids: tokens that end the answer (kept as the last token).
        draft: tokens expected to follow; each is kept only if greedy decoding agrees.
        history: tokens of the answer before `x`'s end (the forced prefix), for loop detection.
        loop_guard: when the budget is used up and the answer ends in a loop
            (`streaming.loops`), keep one copy of the pattern.
        keep_logits: keep each produced token's logits (tests, error measurements).

    Returns:
        The produced tokens and bookkeeping.
    """
    out = Generated()
    if max_new <= 0:
        yield from prefill_steps(decoder, cache, x, num_logits=0)
        out.prefilled = x.shape[1]
        return out
    draft = list(draft)[:max_new]
    if draft:
        x = torch.cat([x, decoder.embed(draft)], dim=1)
    before = cache.position
    logits = yield from prefill_steps(decoder, cache, x, num_logits=len(draft) + 1)  # (k+1, V)
    out.prefilled = x.shape[1]
    predicted = logits.argmax(-1).tolist()
    accepted = 0
    while accepted < len(draft) and predicted[accepted] == draft[accepted]:
        out.tokens.append(draft[accepted])
        if keep_logits:
            out.logits.append(logits[accepted])
        accepted += 1
        if draft[accepted - 1] in stop_ids:
            out.stop = "eos"
            break
    out.draft_accepted = accepted
    # the rejected draft positions become scratch
    cache.truncate(before + x.shape[1] - (len(draft) - accepted))
    if out.stop != "eos" and len(out.tokens) < max_new:
        token_logits = logits[accepted]  # the first token comes from the prefill's logits
        while True:
            token = int(token_logits.argmax())
            out.tokens.append(token)
            if keep_logits:
                out.logits.append(token_logits)
            if token in stop_ids:
                out.stop = "eos"
                break
            if len(out.tokens) >= max_new:
                break
            token_logits = (yield Forward(decoder.embed([token]), cache, 1))[-1]
            out.decoded += 1
    if out.stop == "limit" and loop_guard and _trim_loop(out, history):
        # the cache holds the answer's tokens in order: drop those of the cut copies
        cache.truncate(min(cache.position, before + x.shape[1] - len(draft) + len(out.tokens)))
    return out


@torch.no_grad()
def decode(decoder: QwenDecoder, cache: KVCache, x: torch.Tensor, **options: Any) -> Generated:
    """`decode_steps` run alone (same arguments): prefill `x` (and a draft), then greedy tokens."""
    return run(decoder, decode_steps(decoder, cache, x, **options))


def _trim_loop(out: Generated, history: Sequence[int]) -> bool:
    """Cuts `out.tokens` back to one copy of a loop that ends them; True if there was one."""
    kept = without_loop(out.tokens, history)
    if kept is None:
        return False
    del out.tokens[len(kept) :]
    del out.logits[len(kept) :]
    out.stop = "loop"
    return True
