"""The cached streaming decoder against an uncached recomputation of the same prompt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from decoder.generate import decode
from decoder.loader import QwenModel, load_qwen
from decoder.prompt import build_prompt
from decoder.stream import append_stable, continue_stream, open_stream
from streaming.loops import repetition_start

ATOL = 1e-4  # fp32 logits, as the issue asks
STEP = 16_000  # 1 s of audio per streaming step


@pytest.fixture(scope="module")
def model(untied: Callable[[str], Path]) -> QwenModel:
    """The untied tiny model with 2 s encoder windows, so windows complete during the test."""
    return load_qwen(untied("hf"), window_seconds=2)


def uncached_logits(
    model: QwenModel, ids: list[int], start: int, audio: torch.Tensor, count: int
) -> torch.Tensor:
    """Logits of the last `count` positions of the whole prompt, in one pass, no cache."""
    x = model.splice(ids, start, audio)
    return model.decoder(x, num_logits=count)[0]


def test_each_step_equals_an_uncached_recomputation(
    model: QwenModel, speech: Callable[[float], np.ndarray]
) -> None:
    """At every 1 s step (and the final one) the cached logits equal a fresh full pass."""
    decoder, tokenizer = model.decoder, model.tokenizer
    pieces = build_prompt(tokenizer, num_audio=0, system="sea shells", language="English")
    stream = open_stream(decoder, pieces.prefix)
    features, encoder = model.front_end.initial_state(), model.encoder.initial_state()
    audio = speech(9.5)
    stable: list[torch.Tensor] = []
    committed: list[int] = []
    previous: list[int] = []
    steps = [*range(STEP, len(audio), STEP), len(audio)]
    for index, end in enumerate(steps):
        final = end == len(audio)
        begin = steps[index - 1] if index else 0
        frames, features = model.front_end.step(audio[begin:end], features)
        if final:
            frames = torch.cat([frames, model.front_end.flush(features)], dim=1)
        out, encoder = model.encoder.step(frames, encoder, final=final)
        stream = append_stable(decoder, stream, out.stable)
        stable.append(out.stable)
        tail = [*pieces.suffix, *pieces.language, *committed]
        draft = previous[2:] if index % 2 else []  # half the steps verify a draft
        generated = continue_stream(
            decoder, stream, out.tentative, tail, max_new=8, stop_ids=frozenset(),
            draft=draft, loop_guard=False, keep_logits=True,
        )  # fmt: skip
        assert len(generated.tokens) == 8
        whole_audio = torch.cat([*stable, out.tentative])
        ids = [*pieces.prefix, *[pieces.audio_pad] * whole_audio.shape[0], *tail]
        ids += generated.tokens[:-1]
        expected = uncached_logits(model, ids, len(pieces.prefix), whole_audio, 8)
        assert (torch.stack(generated.logits) - expected).abs().max() < ATOL, index
        assert generated.tokens == expected.argmax(-1).tolist()
        assert stream.stable == len(pieces.prefix) + sum(s.shape[0] for s in stable)
        committed += generated.tokens[:2]  # the first two tokens become a forced prefix
        previous = generated.tokens
    assert sum(s.shape[0] > 0 for s in stable) >= 4  # windows completed along the way


def test_a_draft_changes_the_cost_not_the_tokens(
    model: QwenModel, speech: Callable[[float], np.ndarray]
) -> None:
    """With the right draft, the same tokens come from fewer sequential decoder calls."""
    decoder = model.decoder
    pieces = build_prompt(model.tokenizer, num_audio=0)
    audio = model.audio_embeddings(model.front_end(speech(3.0)))
    stream = append_stable(decoder, open_stream(decoder, pieces.prefix), audio[:26])
    args = (decoder, stream, audio[26:], pieces.suffix)
    plain = continue_stream(*args, max_new=10, stop_ids=frozenset(), loop_guard=False)
    drafted = continue_stream(
        *args, max_new=10, stop_ids=frozenset(), loop_guard=False, draft=plain.tokens
    )
    wrong = continue_stream(
        *args, max_new=10, stop_ids=frozenset(), loop_guard=False,
        draft=[*plain.tokens[:4], (plain.tokens[4] + 1) % 300, *plain.tokens[5:]],
    )  # fmt: skip
    assert drafted.tokens == plain.tokens == wrong.tokens
    assert (plain.decoded, drafted.decoded, drafted.draft_accepted) == (9, 0, 10)
    assert wrong.draft_accepted == 4 and wrong.decoded == 5


def test_a_step_can_be_retried_from_the_same_state(
    model: QwenModel, speech: Callable[[float], np.ndarray]
) -> None:
    """Running the same step twice from one stream value gives the same answer."""
    decoder = model.decoder
    pieces = build_prompt(model.tokenizer, num_audio=0)
    audio = model.audio_embeddings(model.front_end(speech(4.0)))
    stream = append_stable(decoder, open_stream(decoder, pieces.prefix), audio[:26])
    first = continue_stream(decoder, stream, audio[26:], pieces.suffix, max_new=6,
                            stop_ids=frozenset(), loop_guard=False)  # fmt: skip
    second = continue_stream(decoder, stream, audio[26:], pieces.suffix, max_new=6,
                             stop_ids=frozenset(), loop_guard=False)  # fmt: skip
    assert first.tokens == second.tokens


def test_stop_tokens_end_the_answer(model: QwenModel) -> None:
    """Generation stops at (and keeps) the first stop token, from the draft or from decoding."""
    decoder = model.decoder
    x = decoder.embed([5, 6, 7])
    free = decode(decoder, decoder.new_cache(), x, max_new=12, stop_ids=frozenset(),
                  loop_guard=False)  # fmt: skip
    stop = free.tokens[3]
    cut = decode(decoder, decoder.new_cache(), x, max_new=12, stop_ids=frozenset({stop}),
                 loop_guard=False)  # fmt: skip
    assert cut.tokens == free.tokens[: free.tokens.index(stop) + 1] and cut.stop == "eos"
    drafted = decode(decoder, decoder.new_cache(), x, max_new=12, stop_ids=frozenset({stop}),
                     loop_guard=False, draft=free.tokens)  # fmt: skip
    assert drafted.tokens == cut.tokens and drafted.decoded == 0


def test_loops_are_detected_and_cut_to_one_copy() -> None:
    """repetition_start finds a pattern repeated up to the end; speech-like repeats pass."""
    assert repetition_start([1, 2] + [7, 8, 9] * 4) == (2, 3)
    assert repetition_start([5] * 12) == (0, 1)
    assert repetition_start([5] * 11) is None  # "no no no ...": 12 copies needed for period 1
    assert repetition_start([7, 8, 9] * 4 + [1]) is None  # the loop must reach the end
    assert repetition_start([1, 2, 3, 4, 5, 6] * 3) is None  # 4 copies needed


def test_the_loop_guard_cuts_only_a_loop_that_uses_up_the_budget(model: QwenModel) -> None:
    """A repeat that runs to the budget is a loop (one copy kept); one that ends is speech."""
    decoder = model.decoder
    x = decoder.embed([5, 6, 7])
    answer = decode(decoder, decoder.new_cache(), x, max_new=12, stop_ids=frozenset(),
                    loop_guard=False).tokens  # fmt: skip
    history = answer * 3  # as if the committed text already held three copies of the answer
    cache = decoder.new_cache()
    looped = decode(decoder, cache, x, max_new=12, stop_ids=frozenset(), history=history)
    assert looped.stop == "loop" and looped.tokens == []  # the fourth copy is dropped
    assert cache.position == x.shape[1]  # and its cache entries with it
    ended = decode(decoder, decoder.new_cache(), x, max_new=13, stop_ids=frozenset({answer[-1]}),
                   history=history)  # fmt: skip
    assert ended.stop == "eos" and ended.tokens == answer  # it ended by itself: kept
