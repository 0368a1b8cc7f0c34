"""Benchmark: the KV-cached streaming decoder and the whole Qwen recognizer, real 0.6B shapes.

    python scripts/bench_decoder.py [--quick] [--modes float32 bfloat16 int8] [--window 4]
        [--threads 2] [--repeats 3] [--json out.json]
    python scripts/bench_decoder.py --batched [--streams 1 2 3 4 8] [--device cuda]
    python scripts/bench_decoder.py --encoder-batch [--streams 1 2 3 4]

Models: Qwen3-ASR-0.6B shapes (encoder 18 x 896, LLM 28 x 1024, vocabulary 151936, tied head)
with random weights; the cost does not depend on their values. The tokenizer is a byte-level BPE
trained on the test corpus' transcripts, padded to the real vocabulary with filler tokens, with
the real special-token ids, so English text has realistic token counts and random ids decode.

1. Logits error of bf16 and int8 against fp32: the same prompt (system turn, 15 s of real
   speech through each mode's own encoder, tail, committed text) and the same 8 tokens
   teacher-forced; error relative to the fp32 logits' standard deviation, and top-1 agreement.
   On the same prompt, the draft acceptance of each mode (as in 2.).
2. One streaming step (1 s of new audio, 8 generated tokens) at segment positions 5, 15 and
   30 s: stable windows that complete are prefilled, then open-window audio + tail + committed
   text (3 tokens per second of speech, 1.5 s behind the edge), then 8 tokens one by one (no
   draft: the worst case). The cost depends on the position inside the encoder window, so each
   figure is the mean over the window cycle ending there. "8 drafted tokens" is the same step
   when the previous step's 8 tokens are all confirmed by verification (the best case: one
   prefill 8 positions longer, no sequential step); next to it, how many of the step's own 8
   tokens verification accepts when they come back as the draft (8 in fp32; int8 quantizes a
   layer's whole input with one scale, so it may reject near-tied tokens). Then the official
   approach in the same run and mode: front end and encoder over all audio (8 s windows), the
   whole prompt prefilled, the previous answer minus 5 tokens as prefix, 8 new tokens.
3. Session length: our recognizer's state belongs to the segment; at minute 1, 10 and 60 a step
   at segment position 15 s sees the same state apart from the 200 characters of earlier text
   the session passes. The official approach re-processes all audio of the session: measured
   at 1 min, and at 10 min for the last mode (without --quick); longer sessions get a lower
   bound (proportional to the longest measured; the attention part grows faster than that).
4. Real-time factor of one stream through `QwenRecognizer.decode` as the session calls it:
   45 s of real speech in 15 s segments, a partial decode per 1 s, committed words of a real
   transcript at 2.5 words/s, 1.5 s behind the edge, and a final per segment. Random weights
   never emit <|im_end|>, so every partial generates its whole budget (here 8 tokens) and every
   final its whole budget (10 tokens per uncommitted second + 16), and no draft is confirmed; a
   trained model stops earlier and most of its continuation is verified as a draft, so these
   are upper bounds. For the last mode the same run with encoder windows 2, 4 and 8 s.

The machine is shared: figures vary between runs; the timing loops take the median of
`--repeats` runs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from machine import describe  # scripts/ is on sys.path
from make_tiny_checkpoint import train_byte_level_bpe  # scripts/ is on sys.path
from tokenizers import AddedToken, Tokenizer

from decoder.config import QWEN3_0_6B
from decoder.fixed_rows import use_fixed_rows
from decoder.generate import decode, prefill
from decoder.loader import QwenModel, quantize_encoder, quantize_model
from decoder.model import QwenDecoder
from decoder.prompt import LANGUAGE_NAMES, build_prompt, language_prefill
from decoder.recognizer import QwenOptions, QwenRecognizer, QwenSegmentState
from decoder.stream import append_stable, continue_stream, open_stream
from decoder.tokenizer import QwenTokenizer
from encoder.config import QWEN3_ASR_0_6B, TOKENS_PER_CHUNK
from encoder.features import LogMelFrontEnd
from encoder.model import AudioEncoder
from streaming.recognizer import DecodeRequest, Word

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "tests" / "data"
SAMPLE_RATE = 16_000
TEXT_TOKENS_PER_S = 3.0  # English speech: ~2.5 words/s at ~1.2 tokens per word
WORDS_PER_S = 2.5
COMMIT_LAG_S = 1.5  # committed text trails the live edge by about this much
STEP_TOKENS = 8  # tokens generated per partial step
ROLLBACK = 5  # the official streaming drops the last 5 tokens of its previous answer
# real special-token ids of Qwen3-ASR (reference doc §1.5); the gaps hold placeholder tokens
SPECIAL_IDS = {
    151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>",
    151669: "<|audio_start|>", 151670: "<|audio_end|>", 151675: "<non_speech>",
    151676: "<|audio_pad|>", 151704: "<asr_text>", 151705: "<timestamp>",
}  # fmt: skip
NON_SPECIAL = {"<non_speech>", "<asr_text>", "<timestamp>"}


# ------------------------------------------------------------------ setup


def corpus() -> tuple[np.ndarray, list[str]]:
    """All test-corpus speech concatenated, and the words of its transcripts."""
    import wave

    lines = (DATA_DIR / "manifest.tsv").read_text().splitlines()[1:]
    audio, words = [], []
    for line in lines:
        name, _, reference = line.split("\t")
        with wave.open(str(DATA_DIR / name)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
            audio.append(raw.reshape(-1, w.getnchannels()).mean(axis=1))
        words += reference.split()
    return np.concatenate(audio), words


def speech(seconds: float, pool: np.ndarray) -> np.ndarray:
    """`seconds` of real speech (the corpus, tiled)."""
    n = round(seconds * SAMPLE_RATE)
    return np.tile(pool, n // len(pool) + 1)[:n].copy()


def bench_tokenizer(words: list[str]) -> QwenTokenizer:
    """A Qwen2-style BPE trained on the transcripts, padded to 151643 entries, real specials."""
    text = " ".join(words) + " language English<asr_text>"
    tokenizer = train_byte_level_bpe([text] * 8, 3000)
    data = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    index = len(vocab)
    serial = 0
    while index < min(SPECIAL_IDS):
        name, n = "", serial
        for _ in range(4):
            n, r = divmod(n, 26)
            name += letters[r]
        serial += 1
        filler = "Ġzq" + name  # decodes to " zq...": random ids read as words
        if filler not in vocab:
            vocab[filler] = index
            index += 1
    tokenizer = Tokenizer.from_str(json.dumps(data))
    for token_id in range(min(SPECIAL_IDS), max(SPECIAL_IDS) + 1):
        content = SPECIAL_IDS.get(token_id, f"<|reserved_{token_id}|>")
        token = AddedToken(content, special=content not in NON_SPECIAL, normalized=False)
        if content in NON_SPECIAL:
            tokenizer.add_tokens([token])
        else:
            tokenizer.add_special_tokens([token])
        assert tokenizer.token_to_id(content) == token_id, content
    return QwenTokenizer(tokenizer)


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def randomize(module: ModuleT, seed: int) -> ModuleT:
    """O(1) activations: matrices N(0, 1/fan_in), norm scales ~1, biases ~0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel()))
            elif "norm" in name or "ln" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))
    return module.eval().requires_grad_(False)


def base_models() -> tuple[AudioEncoder, QwenDecoder]:
    """The fp32 random-weight encoder (8 s window) and decoder every mode is derived from."""
    encoder = randomize(AudioEncoder(QWEN3_ASR_0_6B), 1)
    return encoder, randomize(QwenDecoder(QWEN3_0_6B), 2)


def with_window(model: QwenModel, window: int) -> QwenModel:
    """The same weights with another encoder window (a window is only a config value)."""
    encoder = copy.copy(model.encoder)
    encoder.config = model.encoder.config.with_window(window)
    return dataclasses.replace(model, encoder=encoder)


def build_model(
    mode: str,
    base: tuple[AudioEncoder, QwenDecoder],
    tokenizer: QwenTokenizer,
    window: int,
    *,
    batch_invariant: bool = True,
) -> QwenModel:
    """The base weights in `mode`, with the given encoder window."""
    encoder, decoder = base
    if mode != "float32":
        encoder, decoder = copy.deepcopy(encoder), copy.deepcopy(decoder)
    if mode == "bfloat16":
        encoder, decoder = encoder.to(torch.bfloat16), decoder.to(torch.bfloat16)
    elif mode == "int8":
        quantize_model(encoder, decoder, batch_invariant=batch_invariant)
    stop = frozenset({tokenizer.special.im_end, tokenizer.special.endoftext})
    languages = tuple(LANGUAGE_NAMES.values())
    model = QwenModel(encoder, decoder, tokenizer, stop, languages, 512, mode)  # type: ignore[arg-type]
    return with_window(model, window)


def timed(function: Callable[[], Any], repeats: int, *, warm_up: bool = True) -> float:
    """Median wall time in ms of `repeats` calls (after one warm-up call)."""
    if warm_up:
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


# ------------------------------------------------------------------ 1. logits error


def logits_probe(
    model: QwenModel, pool: np.ndarray, reference: dict[str, Any] | None
) -> dict[str, Any]:
    """Logits of 8 tokens after a 15 s prompt; the fp32 run (no reference) picks the tokens."""
    audio = speech(15.0, pool)
    committed = model.tokenizer.encode(" ".join(["the quick brown fox"] * 8))
    embeddings = model.audio_embeddings(model.front_end(audio))
    prompt = build_prompt(model.tokenizer, num_audio=embeddings.shape[0],
                          system="cards, sea shells", language="English")  # fmt: skip
    ids = prompt.ids + committed
    if reference is None:
        x = model.splice(ids, prompt.audio_start, embeddings)
        out = decode(model.decoder, model.decoder.new_cache(), x, max_new=STEP_TOKENS,
                     stop_ids=frozenset(), loop_guard=False)  # fmt: skip
        tokens = out.tokens
    else:
        tokens = reference["tokens"]
    x = model.splice(ids + tokens[:-1], prompt.audio_start, embeddings)
    cache = model.decoder.new_cache(capacity=x.shape[1])
    logits = prefill(model.decoder, cache, x, num_logits=STEP_TOKENS).float()
    if reference is None:
        return {"tokens": tokens, "logits": logits}
    spread = reference["logits"].std()
    error = (logits - reference["logits"]).abs() / spread
    agree = (logits.argmax(-1) == reference["logits"].argmax(-1)).float().mean()
    return {"max": float(error.max()), "mean": float(error.mean()), "top1": float(agree)}


def draft_acceptance(model: QwenModel, pool: np.ndarray) -> int:
    """How many of its own 8 greedy tokens a step accepts when they come back as its draft.

    fp32 accepts all 8 (verification is exact). int8 quantizes a layer's whole input with one
    scale, so a batched prefill may disagree with one-token steps where logits are near-tied.
    """
    audio = speech(15.0, pool)
    embeddings = model.audio_embeddings(model.front_end(audio))
    prompt = build_prompt(model.tokenizer, num_audio=embeddings.shape[0],
                          system="cards, sea shells", language="English")  # fmt: skip
    ids = prompt.ids + model.tokenizer.encode(" ".join(["the quick brown fox"] * 8))
    x = model.splice(ids, prompt.audio_start, embeddings)

    def run(draft: list[int]) -> Any:
        return decode(model.decoder, model.decoder.new_cache(), x, max_new=STEP_TOKENS,
                      stop_ids=frozenset(), loop_guard=False, draft=draft)  # fmt: skip

    own = run(draft=[]).tokens
    return run(draft=own).draft_accepted


# ------------------------------------------------------------------ 2./3. step costs


def encoder_costs(model: QwenModel, repeats: int, pool: np.ndarray) -> dict[int, float]:
    """Front end + encoder step cost (ms) by the open window's length after the step (1..w s)."""
    window = model.encoder.config.window_seconds
    audio = speech(window + 1, pool)
    costs = {}
    fe, enc = model.front_end, model.encoder
    features, state = fe.initial_state(), enc.initial_state()
    for k in range(1, window + 1):
        chunk = audio[(k - 1) * SAMPLE_RATE : k * SAMPLE_RATE]

        def step(chunk: np.ndarray = chunk, features: Any = features, state: Any = state) -> Any:
            frames, _ = fe.step(chunk, features)
            return enc.step(frames, state)

        costs[k] = timed(step, repeats)
        frames, features = fe.step(chunk, features)
        _, state = enc.step(frames, state)
    return costs


def our_step_cycle(
    model: QwenModel, position: int, repeats: int, committed_ids: list[int]
) -> dict[str, float]:
    """Mean decoder cost of the 1 s steps of the window cycle ending at second `position`."""
    decoder = model.decoder
    window = model.encoder.config.window_seconds
    pieces = build_prompt(model.tokenizer, num_audio=0, system="cards, sea shells")
    header = model.tokenizer.encode(language_prefill("English"))
    rows: dict[str, list[float]] = {
        "decoder": [], "prefill": [], "drafted": [], "accepted": [], "tokens": [], "kv": [],
    }  # fmt: skip
    for p in range(position - window + 1, position + 1):
        k = p % window or window  # seconds in the open window after this step
        before = (p - k) * TOKENS_PER_CHUNK if k < window else (p - window) * TOKENS_PER_CHUNK
        stream = append_stable(decoder, open_stream(decoder, pieces.prefix),
                               torch.randn(before, decoder.config.hidden_size))  # fmt: skip
        new_stable = window * TOKENS_PER_CHUNK if k == window else 0
        open_tokens = 0 if k == window else k * TOKENS_PER_CHUNK
        committed = committed_ids[: int(TEXT_TOKENS_PER_S * max(p - COMMIT_LAG_S, 0))]
        tail = [*pieces.suffix, *header, *committed]
        stable_audio = torch.randn(new_stable, decoder.config.hidden_size)
        open_audio = torch.randn(open_tokens, decoder.config.hidden_size)

        def step(
            stream: Any = stream, stable: torch.Tensor = stable_audio,
            audio: torch.Tensor = open_audio, tail: list[int] = tail, new: int = STEP_TOKENS,
            draft: list[int] | None = None,
        ) -> Any:  # fmt: skip
            s = append_stable(decoder, stream, stable)
            return continue_stream(decoder, s, audio, tail, max_new=new, stop_ids=frozenset(),
                                   loop_guard=False, draft=draft or ())  # fmt: skip

        rows["decoder"].append(timed(step, repeats))
        rows["prefill"].append(timed(functools.partial(step, new=1), repeats))
        # the best case: the previous step's 8 tokens all verified in the prefill. Costed as the
        # prefill with those 8 positions appended, because with random weights (near-tied
        # logits) and int8's per-batch activation scales the argmax may not confirm them
        own = step().tokens
        drafted = [*tail, *own]
        rows["drafted"].append(timed(functools.partial(step, tail=drafted, new=1), repeats))
        rows["accepted"].append(step(draft=own).draft_accepted)
        rows["tokens"].append(new_stable + open_tokens + len(tail))
        rows["kv"].append(stream.cache.position + new_stable + open_tokens + len(tail) + 8)
    out = {key: statistics.mean(values) for key, values in rows.items()}
    scale = decoder.new_cache(capacity=1).data.element_size() / 4  # bytes per value / fp32's
    out["kv_mib"] = out.pop("kv") * QWEN3_0_6B.kv_bytes_per_token * scale / 2**20
    return out


def official_step(
    model: QwenModel, seconds: float, repeats: int, text_ids: list[int], pool: np.ndarray
) -> dict[str, float]:
    """The official approach's step at `seconds` of session audio: everything recomputed."""
    audio = speech(seconds, pool)
    answer = text_ids[: max(int(TEXT_TOKENS_PER_S * seconds) - ROLLBACK, 0)]
    header = model.tokenizer.encode(language_prefill("English"))
    measured: dict[str, float] = {}

    def run() -> None:
        start = time.perf_counter()
        embeddings = model.audio_embeddings(model.front_end(audio))
        middle = time.perf_counter()
        prompt = build_prompt(model.tokenizer, num_audio=embeddings.shape[0],
                              system="cards, sea shells")  # fmt: skip
        x = model.splice(prompt.ids + header + answer, prompt.audio_start, embeddings)
        cache = model.decoder.new_cache(capacity=x.shape[1] + STEP_TOKENS)
        decode(model.decoder, cache, x, max_new=STEP_TOKENS, stop_ids=frozenset(),
               loop_guard=False)  # fmt: skip
        measured["encoder"] = 1000 * (middle - start)
        measured["decoder"] = 1000 * (time.perf_counter() - middle)
        measured["tokens"] = x.shape[1]

    measured["total"] = timed(run, max(repeats, 1), warm_up=repeats > 0)
    return measured


def text_ids(tokenizer: QwenTokenizer, words: list[str], seconds: float) -> list[int]:
    """Token ids of real transcript text, tiled to cover `seconds` of speech."""
    ids = tokenizer.encode(" ".join(words))
    need = int(TEXT_TOKENS_PER_S * seconds) + 16
    return (ids * (need // len(ids) + 1))[:need]


# ------------------------------------------------------------------ 4. real-time factor


def stream_rtf(
    model: QwenModel, seconds: float, segment_s: int, pool: np.ndarray, words: list[str]
) -> dict[str, float]:
    """Drives QwenRecognizer like the session over `seconds` of speech; returns RTF and more."""
    options = QwenOptions(mode=model.mode, window_s=model.encoder.config.window_seconds,
                          max_step_tokens=STEP_TOKENS, step_slack_tokens=STEP_TOKENS)  # fmt: skip
    recognizer = QwenRecognizer(model, "bench", options)
    audio = speech(seconds, pool)
    steps: list[float] = []
    finals: list[float] = []
    state_bytes = 0
    previous = ""
    spoken = [Word(f" {w}", int(i * 1000 / WORDS_PER_S), int((i + 1) * 1000 / WORDS_PER_S))
              for i, w in enumerate(words * 20)]  # fmt: skip
    for start in range(0, len(audio), segment_s * SAMPLE_RATE):
        segment = audio[start : start + segment_s * SAMPLE_RATE]
        state = None
        ends = [*range(SAMPLE_RATE, len(segment), SAMPLE_RATE), len(segment)]
        for i, end in enumerate(ends):
            final = i == len(ends) - 1
            edge_s = end / SAMPLE_RATE
            count = int(WORDS_PER_S * max(edge_s - COMMIT_LAG_S, 0))
            request = DecodeRequest(audio=segment[:end], committed=tuple(spoken[:count]),
                                    previous_text=previous,
                                    final=final, state=state)  # fmt: skip
            began = time.perf_counter()
            hypothesis = recognizer.decode([request])[0]
            (finals if final else steps).append(time.perf_counter() - began)
            state = hypothesis.state
            if isinstance(state, QwenSegmentState):
                state_bytes = max(state_bytes, state.nbytes)
        previous = (previous + " " + " ".join(w.text for w in spoken[:count]))[-200:]
    total = sum(steps) + sum(finals)
    return {
        "rtf": total / seconds,
        "step_p50": 1000 * statistics.median(steps),
        "step_p95": 1000 * float(np.percentile(steps, 95)),
        "step_max": 1000 * max(steps),
        "final_mean": 1000 * statistics.mean(finals),
        "state_mib": state_bytes / 2**20,
    }


def batched_streams(
    model: QwenModel,
    streams: int,
    seconds: float,
    pool: np.ndarray,
    words: list[str],
    *,
    batch: bool,
) -> dict[str, float]:
    """`streams` concurrent streams, one 1 s partial decode each per round, as one batch.

    Each stream has its own speech (the pool from a different offset), 15 s segments and a
    final per segment, as `stream_rtf`. The model worker hands such a batch to
    `QwenRecognizer.decode`: in lockstep when `batch` (int8), else one request after another.
    Real time holds while a round of 1 s steps takes at most 1 s.
    """
    options = QwenOptions(mode=model.mode, window_s=model.encoder.config.window_seconds,
                          max_step_tokens=STEP_TOKENS, step_slack_tokens=STEP_TOKENS,
                          batch=batch)  # fmt: skip
    recognizer = QwenRecognizer(model, "bench", options)
    segment_s = 15
    offset = len(pool) // max(streams, 1)
    audio = [np.roll(pool, -k * offset)[: int(seconds * SAMPLE_RATE)] for k in range(streams)]
    spoken = [Word(f" {w}", int(i * 1000 / WORDS_PER_S), int((i + 1) * 1000 / WORDS_PER_S))
              for i, w in enumerate(words * 20)]  # fmt: skip
    rounds: list[float] = []
    for start in range(0, int(seconds) * SAMPLE_RATE, segment_s * SAMPLE_RATE):
        states: list[object | None] = [None] * streams
        length = min(segment_s * SAMPLE_RATE, len(audio[0]) - start)
        ends = [*range(SAMPLE_RATE, length, SAMPLE_RATE), length]
        for i, end in enumerate(ends):
            count = int(WORDS_PER_S * max(end / SAMPLE_RATE - COMMIT_LAG_S, 0))
            requests = [
                DecodeRequest(audio=a[start : start + end], committed=tuple(spoken[:count]),
                              final=i == len(ends) - 1, state=state)
                for a, state in zip(audio, states, strict=True)
            ]  # fmt: skip
            began = time.perf_counter()
            answers = recognizer.decode(requests)
            rounds.append(time.perf_counter() - began)
            states = [h.state for h in answers]
    return {
        "round_p50": 1000 * statistics.median(rounds),
        "round_p95": 1000 * float(np.percentile(rounds, 95)),
        "per_stream_s": sum(rounds) / seconds / streams * 1000,
        "rtf": sum(rounds) / seconds,
    }


def bf16_model(
    base: tuple[AudioEncoder, QwenDecoder], tokenizer: QwenTokenizer, window: int, *,
    device: str, fixed_rows: bool,
) -> QwenModel:  # fmt: skip
    """The base weights in bf16 on `device`, as `load_qwen(mode="bfloat16", device="cuda")`
    builds them: the decoder's row-wise layers in fixed-row blocks when `fixed_rows`."""
    model = build_model("bfloat16", base, tokenizer, window)
    decoder = model.decoder.to(device)
    if fixed_rows:
        use_fixed_rows(decoder)
    return dataclasses.replace(
        model, encoder=model.encoder.to(device), decoder=decoder,
        front_end=LogMelFrontEnd(device=device),
    )  # fmt: skip


def batched_bf16_main(args: argparse.Namespace, device: str = "cuda") -> None:
    """--batched --device cuda: concurrent bf16 streams on one GPU, lockstep (fixed-row blocks,
    batch-invariant) against one by one (plain bf16)."""
    pool, words = corpus()
    tokenizer = bench_tokenizer(words)
    base = base_models()
    command = "python scripts/bench_decoder.py " + " ".join(sys.argv[1:])
    name = torch.cuda.get_device_name() if device == "cuda" else device
    print(f"`{command}` (torch {torch.__version__}, {name}, bf16, window {args.window} s, "
          f"{args.batched_seconds:.0f} s of speech per stream)\n")  # fmt: skip
    print("| streams | path | round of 1 s steps P50 / P95 (ms) | per stream-second (ms) "
          "| real time (round <= 1 s) |")  # fmt: skip
    print("|---|---|---|---|---|")
    figures: dict[str, Any] = {"command": command, "device": name}
    plain = bf16_model(base, tokenizer, args.window, device=device, fixed_rows=False)
    fixed = bf16_model(base, tokenizer, args.window, device=device, fixed_rows=True)
    for streams in args.streams:
        for label, model, batch in (("one by one, plain bf16", plain, False),
                                    ("lockstep, fixed rows", fixed, True)):  # fmt: skip
            if streams == 1 and batch:
                continue
            f = batched_streams(model, streams, args.batched_seconds, pool, words, batch=batch)
            figures[f"{streams}_{'batched' if batch else 'sequential'}"] = f
            print(f"| {streams} | {label} | {f['round_p50']:.0f} / {f['round_p95']:.0f} "
                  f"| {f['per_stream_s']:.0f} | {'yes' if f['rtf'] <= 1 else 'no'} "
                  f"(RTF {f['rtf']:.2f}) |", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def encoder_batch_main(args: argparse.Namespace) -> None:
    """--encoder-batch: the encoder steps of a batch through `step_many` or one by one.

    Each stream is 2.5 s into its segment (its own speech) and steps 1 s further, so its open
    window holds 3.5 s of a 4 s window, the typical partial step of a lockstep round. Plain int8
    (fbgemm's input quantization, what the encoder ships with) against row-invariant int8 (the
    decoder's batch-invariant rounding); bitwise: whether every stream's output in the batch
    equals its output alone.
    """
    torch.set_num_threads(args.threads)
    pool, words = corpus()
    tokenizer = bench_tokenizer(words)
    encoder_fp32, decoder_fp32 = base_models()
    command = "python scripts/bench_decoder.py " + " ".join(sys.argv[1:])
    print(f"`{command}` (torch {torch.__version__}, {args.threads} threads, window "
          f"{args.window} s, median of {args.repeats})\n")  # fmt: skip
    print("| encoder int8 | streams | one by one (ms) | `step_many` (ms) | bitwise as alone |")
    print("|---|---|---|---|---|")
    for row_invariant in (False, True):
        encoder = copy.deepcopy(encoder_fp32)
        quantize_encoder(encoder, row_invariant=row_invariant)
        model = with_window(
            QwenModel(encoder, decoder_fp32, tokenizer, frozenset(), (), 512, "int8"),
            args.window,
        )
        fe, enc = model.front_end, model.encoder
        for streams in args.streams:
            frames, states = [], []
            for k in range(streams):
                audio = np.roll(pool, -k * 3 * SAMPLE_RATE)[: int(3.5 * SAMPLE_RATE)]
                front, state = fe.initial_state(), enc.initial_state()
                first, front = fe.step(audio[: int(2.5 * SAMPLE_RATE)], front)
                _, state = enc.step(first, state)
                frames.append(fe.step(audio[int(2.5 * SAMPLE_RATE) :], front)[0])
                states.append(state)
            pairs = list(zip(frames, states, strict=True))
            alone = timed(functools.partial(_step_each, enc, pairs), args.repeats)
            together = timed(functools.partial(enc.step_many, frames, states), args.repeats)
            outputs = enc.step_many(frames, states)[0]
            same = all(
                torch.equal(enc.step(f, s)[0].tentative, out.tentative)
                for (f, s), out in zip(pairs, outputs, strict=True)
            )
            kind = "row-invariant" if row_invariant else "plain (shipped)"
            print(f"| {kind} | {streams} | {alone:.0f} | {together:.0f} "
                  f"| {'yes' if same else 'no'} |", flush=True)  # fmt: skip


def _step_each(encoder: AudioEncoder, pairs: list[tuple[torch.Tensor, Any]]) -> None:
    for frames, state in pairs:
        encoder.step(frames, state)


def batched_main(args: argparse.Namespace) -> None:
    """--batched: concurrent int8 streams batched against one by one (issue 13)."""
    if args.device == "cuda":
        batched_bf16_main(args)
        return
    torch.set_num_threads(args.threads)
    pool, words = corpus()
    tokenizer = bench_tokenizer(words)
    base = base_models()
    model = build_model("int8", base, tokenizer, args.window)
    command = "python scripts/bench_decoder.py " + " ".join(sys.argv[1:])
    reference = logits_probe(build_model("float32", base, tokenizer, args.window), pool, None)
    error = logits_probe(model, pool, reference)
    accepted = draft_acceptance(model, pool)
    print(f"int8 (row-invariant) logits against fp32: max {error['max']:.2f} sigma, mean "
          f"{error['mean']:.3f} sigma, top-1 {100 * error['top1']:.0f} %; own 8 tokens accepted "
          f"as draft: {accepted}\n")  # fmt: skip
    print(f"`{command}` (torch {torch.__version__}, {args.threads} threads, int8, window "
          f"{args.window} s, {args.batched_seconds:.0f} s of speech per stream)\n")  # fmt: skip
    print("| streams | path | round of 1 s steps P50 / P95 (ms) | per stream-second (ms) "
          "| real time (round <= 1 s) |")  # fmt: skip
    print("|---|---|---|---|---|")
    figures: dict[str, Any] = {"command": command, "logits": error, "draft_accepted": accepted}
    if 1 in args.streams:
        plain = build_model("int8", base, tokenizer, args.window, batch_invariant=False)
        f = batched_streams(plain, 1, args.batched_seconds, pool, words, batch=False)
        figures["1_plain"] = f
        print(f"| 1 | plain int8 (`--no-batch`) | {f['round_p50']:.0f} / {f['round_p95']:.0f} "
              f"| {f['per_stream_s']:.0f} | {'yes' if f['rtf'] <= 1 else 'no'} "
              f"(RTF {f['rtf']:.2f}) |", flush=True)  # fmt: skip
    for streams in args.streams:
        for batch in (False, True):
            if streams == 1 and batch:
                continue  # one stream takes the plain path either way
            f = batched_streams(model, streams, args.batched_seconds, pool, words, batch=batch)
            figures[f"{streams}_{'batched' if batch else 'sequential'}"] = f
            realtime = "yes" if f["rtf"] <= 1 else "no"
            print(f"| {streams} | {'lockstep' if batch else 'one by one'} "
                  f"| {f['round_p50']:.0f} / {f['round_p95']:.0f} | {f['per_stream_s']:.0f} "
                  f"| {realtime} (RTF {f['rtf']:.2f}) |", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


# ------------------------------------------------------------------ main


def main() -> None:
    """Runs the benchmark and prints markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer points, shorter")
    parser.add_argument("--modes", nargs="+", default=["float32", "bfloat16", "int8"])
    parser.add_argument("--window", type=int, default=QwenOptions.window_s or 8)
    parser.add_argument(
        "--windows", type=int, nargs="+", default=[2, 4, 8],
        help="windows compared for the last mode's real-time factor",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument(
        "--batched", action="store_true",
        help="only the cross-stream batching figures (int8, --streams, issue 13)",
    )  # fmt: skip
    parser.add_argument(
        "--encoder-batch", action="store_true",
        help="only the encoder: a batch's steps through step_many against one by one",
    )  # fmt: skip
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 2, 3, 4, 8])
    parser.add_argument("--batched-seconds", type=float, default=30.0)
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="--batched only: cuda measures bf16 streams on one GPU",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"Machine: {describe()}")
    if args.batched:
        batched_main(args)
        return
    if args.encoder_batch:
        encoder_batch_main(args)
        return
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    command = "python scripts/bench_decoder.py " + " ".join(sys.argv[1:])
    repeats = 1 if args.quick else args.repeats
    positions = [5, 15] if args.quick else [5, 15, 30]
    rtf_seconds = 30.0 if args.quick else 45.0
    pool, words = corpus()
    tokenizer = bench_tokenizer(words)
    base = base_models()
    text = text_ids(tokenizer, words, 600)
    results: dict[str, Any] = {"command": command, "window": args.window}
    print(f"`{command}` (torch {torch.__version__}, {args.threads} threads)")
    reference = logits_probe(build_model("float32", base, tokenizer, args.window), pool, None)
    for index, mode in enumerate(args.modes):
        last = index == len(args.modes) - 1
        model = build_model(mode, base, tokenizer, args.window)
        official = with_window(model, 8)
        if mode != "float32":
            results[f"logits_{mode}"] = logits_probe(model, pool, reference)
        results[f"draft_{mode}"] = draft_acceptance(model, pool)
        encoder = encoder_costs(model, repeats, pool)
        mean_encoder = statistics.mean(encoder.values())
        print(f"\n{mode}, window {args.window} s: one 1 s step, 8 generated tokens (ms)\n")
        print(
            "| segment at | prefilled tokens | decoder: prefill + 1st token | decoder total "
            "| + encoder | same, 8 drafted tokens | own tokens accepted as draft (mean of 8) "
            "| KV cache (MiB) | official: tokens | official total | ratio |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        steps: dict[int, dict[str, Any]] = {}
        for position in positions:
            ours = our_step_cycle(model, position, repeats, text)
            theirs = official_step(official, position, repeats, text, pool)
            total = ours["decoder"] + mean_encoder
            steps[position] = {"ours": ours, "official": theirs, "encoder": mean_encoder}
            print(f"| {position} s | {ours['tokens']:.0f} | {ours['prefill']:.0f} "
                  f"| {ours['decoder']:.0f} | {total:.0f} "
                  f"| {ours['drafted'] + mean_encoder:.0f} | {ours['accepted']:.1f} "
                  f"| {ours['kv_mib']:.0f} "
                  f"| {theirs['tokens']:.0f} | {theirs['total']:.0f} "
                  f"| {theirs['total'] / total:.1f}x |")  # fmt: skip
        results[f"steps_{mode}"] = steps
        sessions = [60, 600] if last and not args.quick else [60]
        print(f"\n{mode}: by session length (our step at segment second 15; ms)\n")
        print(
            "| session | ours: decoder + encoder | official: encoder | official: decoder "
            "| official total | ratio |"
        )
        print("|---|---|---|---|---|---|")
        ours_total = steps[15]["ours"]["decoder"] + mean_encoder
        measured = {}
        for seconds in sessions:
            theirs = official_step(official, seconds, 0, text, pool)  # one run, no warm-up
            measured[seconds] = theirs
            print(f"| {seconds // 60} min | {ours_total:.0f} | {theirs['encoder']:.0f} "
                  f"| {theirs['decoder']:.0f} | {theirs['total']:.0f} "
                  f"| {theirs['total'] / ours_total:.0f}x |")  # fmt: skip
        for minutes in (10, 60):
            if minutes * 60 in measured:
                continue
            longest = max(measured)
            bound = minutes * 60 / longest * measured[longest]["total"]
            print(f"| {minutes} min | {ours_total:.0f} | | | > {bound:.0f} (lower bound) "
                  f"| > {bound / ours_total:.0f}x |")  # fmt: skip
        results[f"sessions_{mode}"] = {"ours": ours_total, "official": measured}
        results[f"rtf_{mode}"] = stream_rtf(model, rtf_seconds, 15, pool, words)
        if last and not args.quick:
            for window in args.windows:
                if window != args.window:
                    other = with_window(model, window)
                    results[f"window_{window}"] = stream_rtf(other, rtf_seconds, 15, pool, words)
            results[f"window_{args.window}"] = results[f"rtf_{mode}"]
        del model, official

    print("\nLogits error against fp32 (15 s prompt, 8 teacher-forced tokens), and how many of")
    print("a step's own 8 tokens it accepts when they come back as its draft:\n")
    print("| mode | max abs err / std | mean abs err / std | top-1 agreement | draft accepted |")
    print("|---|---|---|---|---|")
    for mode in args.modes:
        e = results.get(f"logits_{mode}")
        error = (f"{e['max']:.3f} | {e['mean']:.4f} | {100 * e['top1']:.0f} %" if e
                 else "(reference) | | ")  # fmt: skip
        print(f"| {mode} | {error} | {results[f'draft_{mode}']} of {STEP_TOKENS} |")
    print(f"\nOne stream through QwenRecognizer.decode: {rtf_seconds:.0f} s of speech, "
          f"15 s segments, window {args.window} s\n")  # fmt: skip
    print(
        "| mode | RTF | partial p50 / p95 / max (ms) | final mean (ms) | state per stream (MiB) |"
    )
    print("|---|---|---|---|---|")
    for mode in args.modes:
        r = results[f"rtf_{mode}"]
        print(f"| {mode} | {r['rtf']:.2f} | {r['step_p50']:.0f} / {r['step_p95']:.0f} / "
              f"{r['step_max']:.0f} | {r['final_mean']:.0f} | {r['state_mib']:.0f} |")  # fmt: skip
    if any(key.startswith("window_") for key in results):
        print(f"\n{args.modes[-1]}: encoder window (cost only; accuracy needs trained weights)\n")
        print("| window | RTF | partial p50 / p95 / max (ms) | state per stream (MiB) |")
        print("|---|---|---|---|")
        for window in sorted(args.windows):
            r = results[f"window_{window}"]
            print(f"| {window} s | {r['rtf']:.2f} | {r['step_p50']:.0f} / {r['step_p95']:.0f} / "
                  f"{r['step_max']:.0f} | {r['state_mib']:.0f} |")  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nPeak RSS {rss:.0f} MiB; total {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
