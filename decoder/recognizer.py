"""`QwenRecognizer`: Qwen3-ASR behind the streaming engine's `Recognizer` interface.

Per segment the recognizer keeps a `QwenSegmentState` (returned in `Hypothesis.state` and
passed back by the session): the log-mel and encoder streaming states, the decoder's KV cache
with its stable prefix (`decoder.stream`), the locked language header and the previous answer.
A partial decode of a segment

1. computes log-mel frames and encoder output only for the samples that are new;
2. prefills the windows that completed into the cached stable prefix (once);
3. prefills the open window, `<|audio_end|>...assistant\\n`, the language prefill and the
   committed words (a forced prefix, never regenerated), plus the previous step's continuation
   as a draft that greedy decoding verifies in the same pass;
4. generates greedily up to a budget proportional to the audio not yet covered by committed
   words, stopping at <|im_end|>, a loop, or the budget;
5. turns the continuation into words with estimated times (`decoder.words`).

A final decode flushes the front end, closes the encoder stream and generates until a stop
token (budget: 10 tokens per second of uncommitted audio). A final decode without state (a
short segment, or `transcribe --offline`) encodes the whole audio as the reference does.

Language: a forced language is a `language {Name}<asr_text>` prefill. Otherwise the model names
it in its first answer; the first real language it names is kept for the rest of the segment
(prefilled from then on), so it cannot flip mid-segment. `language None` (no speech) is not
kept, so the next decode asks again. A new segment starts from scratch and carries the last
words of the previous ones in its system turn, after the session's context and hotwords.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from decoder.fixed_rows import FixedRows
from decoder.generate import Steps, run, run_batched
from decoder.loader import FINAL_TOKENS_SLACK, HEADER_TOKENS, Mode, QwenModel, load_qwen
from decoder.prompt import (
    collapse_repetitions,
    language_code,
    language_name,
    language_prefill,
    parse_asr_output,
    system_text,
)
from decoder.quant import Int8Linear
from decoder.stream import (
    DecoderStream,
    append_stable_steps,
    continue_stream_steps,
    open_stream_steps,
)
from decoder.words import split_words, timed_words
from encoder.config import CHUNK_FRAMES, TOKENS_PER_CHUNK
from encoder.features import REFERENCE_MIN_SAMPLES, SAMPLE_RATE, LogMelState
from encoder.state import EncoderState
from streaming.recognizer import DecodeRequest, Hypothesis, ModelInfo, Recognizer

ASR_TAG = "<asr_text>"
# the segment text-rate cap allows this many tokens on top; at least a final answer's slack, so
# the cap (12 tokens/s) never binds before the final budget (10 tokens/s) in a fresh segment
RATE_SLACK_TOKENS = FINAL_TOKENS_SLACK + HEADER_TOKENS
# the session's language table (Whisper's) calls Filipino "tl"; the model's table says "fil"
_SESSION_CODES = {"fil": "tl"}
# reported when the model named no known language (no speech, or an unknown name): the
# protocol's transcript.final always carries a language, and this is BCP 47's "undetermined"
UNDETERMINED = "und"


@dataclass(frozen=True)
class QwenOptions:
    """How the Qwen recognizer loads and decodes.

    Raises:
        ValueError: at construction, naming the field, when a value is out of range.
    """

    # "float32", "bfloat16" or "int8" (int8 Linear layers, bf16 KV cache, fp32 elsewhere; CPU)
    mode: Mode = "int8"
    # encoder attention window in seconds (1..8); None keeps the checkpoint's (8 s). Shorter
    # windows close sooner, so less audio is re-prefilled per step (see decoder/README.md)
    window_s: int | None = 4
    # "cpu" or "cuda"
    device: str = "cpu"
    # torch threads (2 = both cores of the reference machine)
    threads: int = 2
    # longest segment the session sends; committed text is re-prefilled every step, so long
    # segments cost more per step
    max_segment_s: float = 20.0
    # longest audio one whole-file decode takes (the reference's 1200 s); longer files are
    # split by the caller (streaming.offline)
    max_offline_s: float = 1200.0
    # per partial decode: tokens allowed per second of audio after the last committed word ...
    # (measured with the Qwen BPE on the long-form and synthetic sets: at most 18 tokens in
    # 2 s of speech, 24 in 3 s, 38 in 5 s; decoder/README.md, Guards)
    step_tokens_per_s: float = 8.0
    # ... plus this many, and never more than max_step_tokens
    step_slack_tokens: int = 8
    max_step_tokens: int = 48
    # a segment's text may not exceed this rate over its audio (a runaway-generation guard)
    max_tokens_per_s: float = 12.0
    # words of the previous segments' text carried into a new segment's system turn (0: none)
    previous_words: int = 12
    # verify the previous step's continuation as a draft (exact; only saves time)
    use_draft: bool = True
    # decode a batch of streams in lockstep, with a batch-invariant decoder (int8: rows
    # rounded as if alone; CUDA float modes: fixed-row blocks). False: plain layers (int8 a
    # quarter cheaper for a single stream), a batch decoded one by one (BENCHMARKS.md, issue 13)
    batch: bool = True

    def __post_init__(self) -> None:
        if self.window_s is not None and not 1 <= self.window_s <= 8:
            raise ValueError(f"QwenOptions.window_s must be 1..8 or None, got {self.window_s!r}")
        if self.threads < 1:
            raise ValueError(f"QwenOptions.threads must be at least 1, got {self.threads!r}")
        for name in ("max_segment_s", "max_offline_s", "step_tokens_per_s", "max_tokens_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"QwenOptions.{name} must be positive, got {getattr(self, name)!r}"
                )
        for name in ("step_slack_tokens", "max_step_tokens", "previous_words"):
            if getattr(self, name) < 0:
                raise ValueError(f"QwenOptions.{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class QwenSegmentState:
    """What the recognizer keeps between decodes of one segment."""

    features: LogMelState  # streaming log-mel state
    encoder: EncoderState  # streaming encoder state
    decoder: DecoderStream  # KV cache with the stable prefix
    samples: int  # segment samples consumed so far
    # the language prefill kept for the segment ("language English<asr_text>"), "" for an
    # answer without one, None while the model has not named a real language
    header: str | None = None
    previous_answer: str = ""  # the last answer after "assistant\n" (the next draft)
    previous_stopped: bool = False  # whether it ended with a stop token

    @property
    def nbytes(self) -> int:
        """Memory held: KV cache plus encoder state."""
        return self.decoder.nbytes + self.encoder.nbytes


class QwenRecognizer(Recognizer):
    """Qwen3-ASR with incremental encoder and KV-cached decoder; see the module docstring.

    Args:
        model: the loaded checkpoint.
        name: name reported to clients.
        options: decoding options (the load options in it are informational here).
    """

    def __init__(self, model: QwenModel, name: str, options: QwenOptions | None = None) -> None:
        self.model = model
        self.options = options or QwenOptions()
        torch.set_num_threads(self.options.threads)
        tokenizer = model.tokenizer
        self._suffix = tuple(tokenizer.encode("<|audio_end|><|im_end|>\n<|im_start|>assistant\n"))
        codes = {language_code(n) for n in model.languages} - {None}
        self.info = ModelInfo(
            name=name,
            languages=frozenset(_SESSION_CODES.get(c, c) for c in codes if c),
            max_segment_s=self.options.max_segment_s,
            word_timestamps=False,
            details={
                "engine": "torch",
                "mode": model.mode,
                "device": str(model.decoder.device),
                "window_s": str(model.encoder.config.window_seconds),
            },
        )

    @classmethod
    def load(cls, directory: str | Path, options: QwenOptions | None = None) -> QwenRecognizer:
        """Loads a checkpoint folder (either layout) with the options' mode, window and device.

        Raises:
            CheckpointError: the folder is not a complete, consistent checkpoint.
        """
        options = options or QwenOptions()
        model = load_qwen(
            directory, mode=options.mode, window_seconds=options.window_s, device=options.device,
            batch_invariant=options.batch,
        )  # fmt: skip
        return cls(model, f"qwen3-asr:{Path(directory).name}", options)

    @property
    def max_offline_s(self) -> float:
        """Longest audio one final decode without state takes (decoder.offline splits more)."""
        return self.options.max_offline_s

    # ----------------------------------------------------------------- decode

    @torch.no_grad()
    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        """Decodes requests of different streams, batched when that cannot change their text.

        In a batch-invariant mode (`batch_invariant`: int8, whose Linear rounds each row as if
        it were alone; CUDA float modes, whose row-wise layers run on fixed-size blocks) all
        requests run in lockstep (`decoder.generate.run_batched`): their prefills and greedy
        steps share every Linear pass, each keeps its own cache. In fp32 and bf16 on the CPU
        the GEMM's rounding depends on the number of rows, so a stream's tokens could depend on
        its neighbours: they decode one after another.
        """
        if len(requests) > 1 and self.options.batch and self.batch_invariant:
            return run_batched(self.model.decoder, [self._decode_steps(r) for r in requests])
        return [self.decode_one(request) for request in requests]

    @property
    def batch_invariant(self) -> bool:
        """Whether a stream's logits are bitwise the same in any batch (row-invariant int8, or
        fixed-row blocks)."""
        head = self.model.decoder.lm_head
        return isinstance(head, FixedRows) or (isinstance(head, Int8Linear) and head.row_invariant)

    @torch.no_grad()
    def decode_one(self, request: DecodeRequest) -> Hypothesis:
        """One decode of one segment alone (see `_decode_steps`)."""
        return run(self.model.decoder, self._decode_steps(request))

    def _decode_steps(self, request: DecodeRequest) -> Steps[Hypothesis]:
        """One decode of one segment (see the module docstring), as decoder steps.

        Raises:
            ValueError: on a foreign state, a partial request with less audio than already
                consumed, an unknown forced language, or whole-file audio above
                `max_offline_s`.
        """
        model = self.model
        if request.state is None and request.final:
            return (yield from self._decode_whole(request, None))
        state = request.state or (yield from self._new_state(request))
        if not isinstance(state, QwenSegmentState):
            raise ValueError(f"state must come from QwenRecognizer, got {type(state).__name__}")
        if len(request.audio) < state.samples:
            if request.final:
                return (yield from self._decode_shortened(request, state))
            raise ValueError(
                f"the segment audio ({len(request.audio)} samples) is shorter than what was "
                f"already decoded ({state.samples})"
            )
        frames, features = model.front_end.step(request.audio[state.samples :], state.features)
        if request.final:
            frames = torch.cat([frames, model.front_end.flush(features)], dim=1)
        out, encoder_state = model.encoder.step(frames, state.encoder, final=request.final)
        stream = yield from append_stable_steps(model.decoder, state.decoder, out.stable)
        state = replace(
            state, features=features, encoder=encoder_state, decoder=stream,
            samples=len(request.audio),
        )  # fmt: skip
        return (yield from self._answer(request, state, out.tentative))

    def _new_state(self, request: DecodeRequest) -> Steps[QwenSegmentState]:
        model = self.model
        prefix = self._prefix(request)
        capacity = self._capacity(request)
        return QwenSegmentState(
            features=model.front_end.initial_state(),
            encoder=model.encoder.initial_state(),
            decoder=(yield from open_stream_steps(model.decoder, prefix, capacity=capacity)),
            samples=0,
        )

    def _decode_shortened(
        self, request: DecodeRequest, state: QwenSegmentState
    ) -> Steps[Hypothesis]:
        """A final decode whose segment ends before audio a partial decode already consumed.

        The session places a segment's end at the end of speech (or, for an over-long segment,
        at a quiet point where the next segment starts), which can lie before the live edge
        the last partial decode saw. The audio past the end must not be transcribed (it may
        be the next segment's speech), so the encoder output after the last stable window is
        recomputed from the segment's audio alone. Windows are fixed from the segment start,
        so stable windows that end before the new end stay valid; if one does not, the whole
        segment is decoded again.
        """
        model = self.model
        stable_frames = state.encoder.tokens_emitted // TOKENS_PER_CHUNK * CHUNK_FRAMES
        features = model.front_end(request.audio, min_samples=REFERENCE_MIN_SAMPLES)
        if features.shape[1] < stable_frames:
            return (yield from self._decode_whole(request, state))
        rest = model.audio_embeddings(features[:, stable_frames:])
        stream = yield from append_stable_steps(model.decoder, state.decoder, rest)
        state = replace(state, decoder=stream, samples=len(request.audio))
        return (yield from self._answer(request, state, rest[:0]))

    def _decode_whole(
        self, request: DecodeRequest, earlier: QwenSegmentState | None
    ) -> Steps[Hypothesis]:
        """A final decode of the whole segment at once, with the reference's encoding.

        Args:
            request: the final request.
            earlier: the segment's state from partial decodes, if any: its language header
                and last answer are kept.
        """
        model = self.model
        seconds = len(request.audio) / SAMPLE_RATE
        if seconds > self.options.max_offline_s:
            raise ValueError(
                f"{seconds:.0f} s of audio exceed max_offline_s ({self.options.max_offline_s:.0f}"
                " s); split it (streaming.offline.transcribe_file does)"
            )
        features = model.front_end(request.audio, min_samples=REFERENCE_MIN_SAMPLES)
        embeddings = model.audio_embeddings(features)
        prefix, capacity = self._prefix(request), self._capacity(request)
        stream = yield from open_stream_steps(model.decoder, prefix, capacity=capacity)
        stream = yield from append_stable_steps(model.decoder, stream, embeddings)
        state = QwenSegmentState(
            model.front_end.initial_state(), model.encoder.initial_state(), stream,
            len(request.audio),
        )  # fmt: skip
        if earlier is not None:
            state = replace(
                state, header=earlier.header, previous_answer=earlier.previous_answer,
                previous_stopped=earlier.previous_stopped,
            )  # fmt: skip
        return (yield from self._answer(request, state, embeddings[:0]))

    def _prefix(self, request: DecodeRequest) -> tuple[int, ...]:
        previous = ""
        if self.options.previous_words:
            previous = " ".join(request.previous_text.split()[-self.options.previous_words :])
        system = system_text(request.context, request.hotwords, previous)
        text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|audio_start|>"
        return tuple(self.model.tokenizer.encode(text))

    def _capacity(self, request: DecodeRequest) -> int:
        """KV positions to allocate at first: the audio so far plus text and a window's room.

        The cache grows by blocks when a segment outgrows it, so memory follows the segment's
        actual length instead of the longest one allowed.
        """
        seconds = len(request.audio) / SAMPLE_RATE + self.model.encoder.config.window_seconds
        return int(seconds * (TOKENS_PER_CHUNK + self.options.step_tokens_per_s)) + 128

    # ----------------------------------------------------------------- answer

    def _answer(
        self, request: DecodeRequest, state: QwenSegmentState, open_audio: torch.Tensor
    ) -> Steps[Hypothesis]:
        """Decodes the text after the audio and turns it into the hypothesis."""
        model, tokenizer, options = self.model, self.model.tokenizer, self.options
        committed_text = "".join(w.text for w in request.committed)
        forced = language_name(request.language) if request.language else None
        header = state.header
        if header is None and request.committed:
            # words were committed under the header of the answer they came from: keep it
            header = _header_of(state.previous_answer)
        prefill_text = language_prefill(forced) if forced else (header or "")
        committed_ids = tokenizer.encode(committed_text)
        tail = [*self._suffix, *tokenizer.encode(prefill_text), *committed_ids]

        duration_ms = request.duration_ms
        covered_ms = request.committed[-1].end_ms if request.committed else 0
        uncovered_s = max(len(request.audio) / SAMPLE_RATE - covered_ms / 1000, 0.0)
        detecting = not forced and header is None
        if request.final:
            budget = model.final_budget(uncovered_s, header=detecting)
        else:
            budget = options.step_slack_tokens + math.ceil(options.step_tokens_per_s * uncovered_s)
            budget = min(budget, options.max_step_tokens) + (HEADER_TOKENS if detecting else 0)
        rate_cap = math.ceil(options.max_tokens_per_s * duration_ms / 1000) + RATE_SLACK_TOKENS
        budget = max(0, min(budget, rate_cap - len(committed_ids)))
        if state.decoder.audio + open_audio.shape[0] == 0:
            budget = 0  # no audio token yet: nothing to transcribe

        forced_answer = prefill_text + committed_text
        draft: list[int] = []
        if options.use_draft and state.previous_answer.startswith(forced_answer):
            draft = tokenizer.encode(state.previous_answer[len(forced_answer) :])
            if state.previous_stopped:
                draft.append(tokenizer.special.im_end)
        generated = yield from continue_stream_steps(
            model.decoder, state.decoder, open_audio, tail, max_new=budget,
            stop_ids=model.stop_ids, draft=draft, history=committed_ids,
        )  # fmt: skip
        text = tokenizer.decode(generated.tokens, skip_special=True)

        named = forced or _language_of(header)
        words_text = text
        if not forced and header is None:
            named, words_text, complete = _split_header(text)
            if named is not None and language_code(named) is not None:
                header = language_prefill(named)  # a real language: keep it for the segment
            if not complete:
                words_text = ""
        if request.final:
            words_text = collapse_repetitions(words_text)
        if not request.committed:
            words_text = words_text.lstrip()
        pieces = split_words(words_text)
        if generated.stop == "limit" and not request.final and pieces:
            pieces = pieces[:-1]  # cut by the budget: the last word may be incomplete
        words = request.committed + timed_words(pieces, covered_ms, duration_ms)
        new_state = replace(
            state,
            header=header,
            previous_answer=forced_answer + text,
            previous_stopped=generated.stop == "eos",
        )
        code = language_code(named)
        return Hypothesis(
            words, _SESSION_CODES.get(code, code) if code else UNDETERMINED, new_state
        )


def _header_of(answer: str) -> str:
    """The `language X<asr_text>` part an answer starts with ("" if it has none)."""
    return answer.split(ASR_TAG, 1)[0] + ASR_TAG if ASR_TAG in answer else ""


def _language_of(header: str | None) -> str | None:
    """The language name in a kept header."""
    if not header:
        return None
    return parse_asr_output(header).language


def _split_header(text: str) -> tuple[str | None, str, bool]:
    """(language name, transcript, whether the header is complete) of a detecting answer."""
    if ASR_TAG in text:
        parsed = parse_asr_output(text)
        return parsed.language, text.split(ASR_TAG, 1)[1], True
    stripped = text.lstrip()
    if "language ".startswith(stripped[:9]) and "\n" not in stripped:
        return None, "", False  # still inside "language Xxx"
    return None, text, True  # no header at all: all of it is transcript
