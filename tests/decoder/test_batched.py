"""Cross-stream batched decoding: the same tokens as alone, and in int8 bitwise the same logits.

Streams share every Linear pass (`QwenDecoder.forward_many`, `decoder.generate.run_batched`);
each keeps its own cache and attends alone. fp32 GEMMs round differently with the row count, so
fp32 is held to 1e-4 and the same greedy tokens; int8 rounds each row alone (`decoder.quant`)
and must be bitwise equal in any batch, since it is the mode that serves batched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from client.connection import SessionSettings
from client.file_streamer import PaceOptions, stream_samples
from decoder.fixed_rows import FixedRows, use_fixed_rows
from decoder.generate import decode_steps, run, run_batched
from decoder.loader import Mode, load_qwen
from decoder.model import QwenDecoder
from decoder.quant import Int8Linear
from decoder.recognizer import QwenRecognizer
from streaming.recognizer import DecodeRequest
from streaming.server.service import ServerConfig, StreamingServer
from tests.conftest import MS

STOP = frozenset[int]()


def test_int8_rows_are_rounded_as_if_alone() -> None:
    """A row's int8 output is bitwise the same alone, in a batch, and permuted (bias too)."""
    torch.manual_seed(0)
    linear = Int8Linear(torch.randn(96, 64) * 0.02, torch.randn(96) * 0.1)
    rows = torch.randn(8, 64)
    rows[3] *= 10
    rows[3, 5] = 300.0  # one loud row with an outlier: per-tensor int8 re-rounds every other row
    alone = torch.cat([linear(rows[i : i + 1]) for i in range(8)])
    assert torch.equal(linear(rows), alone)
    assert torch.equal(linear(rows.flip(0)).flip(0), alone)
    assert torch.equal(linear(rows[[1, 6]]), alone[[1, 6]])


def prompts(decoder: QwenDecoder, lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    vocab = decoder.config.vocab_size
    return [torch.randint(0, vocab, (1, n), generator=generator) for n in lengths]


def greedy_alone(decoder, cache_prefix, prompt, max_new=8):
    cache = decoder.new_cache()
    decoder(cache_prefix, cache, num_logits=0)
    out = run(
        decoder,
        decode_steps(decoder, cache, decoder.embed(prompt[0]), max_new=max_new, stop_ids=STOP,
                     loop_guard=False, keep_logits=True),
    )  # fmt: skip
    return out, cache


def greedy_batched(decoder, prefixes, batch_prompts, max_new=8):
    caches = []
    for prefix in prefixes:
        cache = decoder.new_cache()
        decoder(prefix, cache, num_logits=0)
        caches.append(cache)
    steps = [
        decode_steps(decoder, cache, decoder.embed(p[0]), max_new=max_new, stop_ids=STOP,
                     loop_guard=False, keep_logits=True)
        for cache, p in zip(caches, batch_prompts, strict=True)
    ]  # fmt: skip
    return run_batched(decoder, steps), caches


def test_fixed_rows_make_a_float_row_independent_of_its_neighbours() -> None:
    """fp32 on the CPU: a plain Linear's rows change with the number of rows in the call; in
    fixed-size blocks each row is bitwise the same alone, in a batch, and at another place."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(1024, 1024)
    rows = torch.randn(40, 1024)
    alone = torch.cat([linear(rows[i : i + 1]) for i in range(40)])
    assert not torch.equal(linear(rows), alone)  # what FixedRows is for (MKL, this machine)
    fixed = FixedRows(linear, rows=16)
    alone = torch.cat([fixed(rows[i : i + 1]) for i in range(40)])
    assert torch.equal(fixed(rows), alone)
    assert torch.equal(fixed(rows.flip(0)).flip(0), alone)
    assert torch.equal(fixed(rows[[3, 17, 38]]), alone[[3, 17, 38]])
    assert torch.allclose(alone, linear(rows), atol=1e-5, rtol=0)


def decoder_in(mode: str, checkpoint: Path, device: str = "cpu") -> QwenDecoder:
    """The tiny decoder in a batching mode; "fixed-rows": fp32 with `use_fixed_rows` (8-row
    blocks, so the packed prefills span several), the CUDA float modes' mechanism on the CPU."""
    if mode == "fixed-rows":
        return cast(QwenDecoder, use_fixed_rows(load_qwen(checkpoint).decoder, rows=8))
    return load_qwen(checkpoint, mode=cast(Mode, mode), device=device).decoder


@pytest.mark.parametrize("mode", ["float32", "int8", "fixed-rows"])
def test_lockstep_decoding_matches_each_stream_alone(
    untied: Callable[[str], Path], mode: str
) -> None:
    """Ragged prefills and greedy steps of 4 streams in lockstep give each stream's own tokens.

    fp32: logits within 1e-4 and identical tokens. int8 and fixed-row fp32: bitwise equal
    logits, in two different batches and in permuted order. Caches end at the same positions
    as after sequential decoding, so a retry from the stable prefix is exact.
    """
    check_lockstep(decoder_in(mode, untied("hf")), bitwise=mode != "float32")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lockstep_decoding_on_cuda_is_batch_invariant(untied: Callable[[str], Path]) -> None:
    """bf16 on CUDA (fixed-row blocks, `load_qwen`'s default there): bitwise as above."""
    decoder = decoder_in("bfloat16", untied("hf"), device="cuda")
    assert isinstance(decoder.lm_head, FixedRows)
    check_lockstep(decoder, bitwise=True)


def check_lockstep(decoder: QwenDecoder, *, bitwise: bool) -> None:
    prefixes = prompts(decoder, [5, 9, 3, 7], seed=1)
    news = prompts(decoder, [6, 2, 11, 4], seed=2)
    alone = [greedy_alone(decoder, pre, new) for pre, new in zip(prefixes, news, strict=True)]
    batch_a, caches_a = greedy_batched(decoder, prefixes, news)
    order = [2, 0, 3, 1]
    batch_b, _ = greedy_batched(decoder, [prefixes[i] for i in order], [news[i] for i in order])
    batch_b = [batch_b[order.index(i)] for i in range(4)]
    pair, _ = greedy_batched(decoder, prefixes[1:3], news[1:3])  # another neighbourhood
    for i, (single, cache) in enumerate(alone):
        for batched in (batch_a[i], batch_b[i], *([pair[i - 1]] if 1 <= i <= 2 else [])):
            assert batched.tokens == single.tokens, i
            for got, want in zip(batched.logits, single.logits, strict=True):
                if bitwise:
                    assert torch.equal(got, want), (i, (got - want).abs().max())
                else:
                    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
        assert caches_a[i].position == cache.position


def test_one_stream_through_the_batched_path_is_bitwise_the_plain_path(
    untied: Callable[[str], Path],
) -> None:
    """fp32, B=1: `run_batched` with one stream computes exactly what `run` does."""
    decoder = load_qwen(untied("original"), mode="float32").decoder
    prefix, new = prompts(decoder, [7, 5], seed=3)
    single, cache = greedy_alone(decoder, prefix, new)
    (batched,), (batched_cache,) = greedy_batched(decoder, [prefix], [new])
    assert batched.tokens == single.tokens
    assert all(torch.equal(a, b) for a, b in zip(batched.logits, single.logits, strict=True))
    position = cache.position
    assert torch.equal(batched_cache.data[:, :, :, :, :position], cache.data[:, :, :, :, :position])


ON_CUDA = pytest.param(
    "bfloat16", "cuda",
    marks=[pytest.mark.gpu,
           pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)  # fmt: skip


@pytest.mark.parametrize(("mode", "device"), [("int8", "cpu"), ON_CUDA])
def test_the_recognizer_batches_streams_without_changing_their_text(
    untied: Callable[[str], Path], corpus: list, mode: Mode, device: str
) -> None:
    """QwenRecognizer (int8 on the CPU, bf16 on CUDA): 3 streams' partial and final decodes
    batched = one by one."""
    model = load_qwen(untied("hf"), mode=mode, window_seconds=2, device=device)
    recognizer = QwenRecognizer(model, "tiny")
    assert recognizer.batch_invariant
    audio = [corpus[i].samples().astype(np.float32) for i in (0, 3, 7)]
    states: list[object | None] = [None] * 3
    for cut_s, final in ((1.3, False), (2.9, False), (None, True)):
        requests = [
            DecodeRequest(
                audio=a if cut_s is None else a[: int(cut_s * 16_000)],
                final=final, state=state, language="en",
            )
            for a, state in zip(audio, states, strict=True)
        ]  # fmt: skip
        one_by_one = [recognizer.decode_one(r) for r in requests]
        batched = recognizer.decode(requests)
        assert [h.words for h in batched] == [h.words for h in one_by_one]
        # the batched answers' states continue exactly like the sequential ones
        states = [h.state for h in batched]


@pytest.mark.asyncio
async def test_a_transcript_is_the_same_with_one_or_four_sessions(
    untied: Callable[[str], Path], corpus: list
) -> None:
    """Over a real WebSocket (tiny int8 model): 4 concurrent sessions, batched in the model
    worker, each get the transcript that session gets alone."""
    recognizer = QwenRecognizer(load_qwen(untied("hf"), mode="int8", window_seconds=2), "tiny")
    server = StreamingServer(recognizer, ServerConfig(port=0, web_root=None))
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    settings = SessionSettings(language="en", partials=False)  # finals: one decode per segment
    pace = PaceOptions(200, realtime=False, trailing_silence_ms=900)
    clips = [
        (np.concatenate([corpus[i].samples(), corpus[i + 1].samples()]) * 32767).astype(np.int16)[
            :, None
        ]
        for i in (1, 4, 8, 10)
    ]
    try:
        async with asyncio.timeout(120_000 * MS):
            alone = [(await stream_samples(url, c, 16_000, settings, pace)).text for c in clips]
            before = server.worker.stats.largest_batch
            together = await asyncio.gather(
                *(stream_samples(url, c, 16_000, settings, pace) for c in clips)
            )
    finally:
        await server.shutdown()
    assert before == 1
    assert server.worker.stats.largest_batch > 1  # the sessions did share decodes
    assert [r.text for r in together] == alone
    assert all(alone)


def test_only_row_invariant_int8_is_batched(untied: Callable[[str], Path]) -> None:
    """On the CPU, fp32 and plain int8 (`--no-batch`) decode a batch one request after another
    (CUDA float modes are batched: the test above)."""
    for mode, invariant in (("float32", True), ("int8", False)):
        model = load_qwen(untied("hf"), mode=mode, batch_invariant=invariant)  # type: ignore[arg-type]
        assert not QwenRecognizer(model, "tiny").batch_invariant
    model = load_qwen(untied("hf"), mode="int8")
    assert QwenRecognizer(model, "tiny").batch_invariant
