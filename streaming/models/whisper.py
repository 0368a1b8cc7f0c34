"""The embedded default recognizer: Whisper (CTranslate2, int8) on local weights.

Built on CTranslate2's Whisper model directly (with faster-whisper's feature extractor and
tokenizer helpers) rather than `WhisperModel.transcribe`, because streaming needs three things
that call does not offer: a batch of requests from different sessions in one encoder and decoder
pass, a forced prefix (the committed words) per request, and word alignment of that text. Whole
files (`transcribe --offline`) go through `WhisperModel.transcribe` itself, the reference
pipeline for Whisper's offline quality (`transcribe_offline`).

How one decode of a segment is built (the *decode window*):

- The window is the segment's audio from an anchor to the live edge. The anchor starts at the
  segment start and moves forward, at a committed word boundary, only once the window would
  exceed `max_window_s`; it then moves to the boundary nearest `keep_window_s` before the edge,
  always leaving at least `MIN_PREFIX_WORDS` committed words inside. A step therefore costs the
  same at second 5 and second 50 of a segment (one encoder window, a bounded forced prefix), and
  no audio is decoded twice as "new". A final's window is at most about 6 s (`final_window_s`):
  the user waits on it, and fewer forced words make it a fifth cheaper at the same accuracy.
- Committed words inside the window are the forced prefix: the model continues after them and
  never regenerates them. The words before the anchor are not lost: they stay in the hypothesis
  verbatim, and their last `previous_tokens` tokens are the decoder prompt (Whisper's
  previous-text context), so the model keeps the sentence's thread.
- An error of the alignment at the anchor cannot cost a word: the audio around the anchor
  belongs to forced prefix words, so a fragment of the word before it is never transcribed as
  new text, and a clipped onset of the first word inside is already written out by the prefix.

Where the continuation ends: generation stops at Whisper's own end-of-text token. CTranslate2
(like Whisper) suppresses end-of-text and blank at the first generated position by default,
which is right without a prefix but wrong after one: when the committed words already cover the
speech the model is forced to say *something*, and it repeats the utterance ("... forever. I feel
like these days go on forever."). Measured on the 13 short clips and the long-form set, allowing
it there removes those repetitions without any text heuristic (BENCHMARKS.md, issue 10).

Where a continuation skips speech: on a repeated phrase the model can jump from the committed
words to the phrase's next copy ("government of the people, [by the people,] for the people"),
and the word alignment then gives the skipped audio to the clause mark it jumped at, which
covers 0.9 s or more (`uncovered_word`). Such a decode is checked again with the audio cut right
after that token: with nothing after the cut to jump to, the model transcribes what is there,
and a recheck that holds the original's words and more replaces them up to the cut
(`merge_recheck`); one that finds nothing new changes nothing. Measured in BENCHMARKS.md (issue
10): it restores the Gettysburg phrase, fires on a tenth of the decodes (one more decode each),
and leaves the other sets' accuracy within noise. No word is ever removed by it.

Decoding choices, from what went wrong in peers (shared/design/peer-measurements.md):
- greedy at temperature 0, no temperature fallback: a retry with sampling made single steps of
  whisper_streaming take 4-21 s (beam search is an option, `beam_size`);
- a bounded number of new tokens per request, scaled to the audio after the last committed
  word, and a repetition-loop trim when that bound is hit; a decode that loops is decoded
  again without the earlier text in its prompt (Whisper's prompt reset on a failed decode):
  the earlier text is what pulls tiny.en into most loops ("1, 1, 2, 2" before "Add one cup"),
  and a trimmed loop would otherwise stand for the segment's speech;
- an encoder input of the decode window's audio plus at least 3 s of padding, in 5 s steps
  from 15 s to 30 s (`encoder_window`): half the 30 s encoder's cost, with the same WER;
- a fixed low-level dither (-70 dBFS) on the segment audio: stretches of exact digital zeros
  (a browser stream's first moments, noise-gated microphones) made tiny.en drop the first word
  of an utterance in 2-3 s decodes ("And Mr. John ..." -> "Mr. John ..."), which LocalAgreement
  then commits for good. The same noise is added at the same segment positions in every decode,
  so successive hypotheses stay comparable and results stay reproducible;
- a decode window quieter than -25 dBFS at its loudest is amplified to that level
  (`quiet_gain`): tiny.en took speech peaking at -45 dBFS for silence and lost whole sentences.
"""

from __future__ import annotations

import dataclasses
import math
import string
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import numpy as np
import tokenizers
from faster_whisper import WhisperModel
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import Tokenizer

from streaming.loops import without_loop
from streaming.recognizer import (
    DecodeRequest,
    Hypothesis,
    ModelInfo,
    OfflineOptions,
    OfflineSegment,
    Recognizer,
    Word,
    join_words,
)

SAMPLE_RATE = 16_000  # Hz
HOP = 160  # samples per mel frame: 10 ms
FULL_WINDOW_FRAMES = 3000  # Whisper's 30 s input
ENCODER_STEP_FRAMES = 500  # the encoder input grows in 5 s steps
ENCODER_MARGIN_FRAMES = 300  # ... and holds at least 3 s of padding after the window's audio
MS_PER_ALIGNMENT_STEP = 20  # encoder frames are 2 mel frames
MAX_TOKENS = 448  # Whisper's text context, prompt included
MAX_PROMPT_TOKENS = MAX_TOKENS // 2 - 1  # Whisper's own cap for previous-text prompts
# new tokens per decode, per second of audio after the last committed word, plus a slack; the
# densest speech of the test sets holds 34 tokens in 4 s, 62 in 10 s (tests/test_guards.py)
NEW_TOKENS_PER_SECOND = 10
NEW_TOKENS_SLACK = 10
NO_SPEECH_PROBABILITY = 0.6  # with a low average log-probability: no speech (Whisper's rule)
NO_SPEECH_LOGPROB = -1.0
DITHER_RMS = 10 ** (-70 / 20)  # -70 dBFS: far below speech, above the log-mel floor of zeros
# a decode window quieter than this at its loudest is amplified up to it, by at most
# QUIET_MAX_GAIN (`quiet_gain`)
QUIET_PEAK = 10 ** (-25 / 20)  # -25 dBFS
QUIET_MAX_GAIN = 10 ** (40 / 20)  # +40 dB
# committed words always left inside a moved window: they carry the audio around the anchor
MIN_PREFIX_WORDS = 2
# audio one new word may cover before it is re-checked (`uncovered_word`), and how close to the
# live edge a word may end and still be re-checked, ms
UNCOVERED_MS = 700
# the full-width marks of languages without spaces (Whisper attaches them to the word before, as
# faster-whisper's `append_punctuations` does); a piece of only these is no word of its own
FULL_WIDTH_MARKS = frozenset("。，、！？：；”）」』")
CLAUSE_MARKS = frozenset(",.;:?!。，、！？；：")
LIVE_EDGE_MS = 100
# audio after a decode's last word that means it stopped before the speech did (`uncovered_tail`)
# (a segment ends 0.3 s after its last voiced frame, so a real pause inside one is shorter),
# how far before that word's end the tail's decode starts (an alignment error there clips the
# next word's onset: "And Mr. John ..." came back without "And" at 0 ms, whole at 150 and 300),
# and how many tail decodes one decode may chain while each finds more words
TAIL_MS = 2000
TAIL_MARGIN_MS = 150
TAIL_ROUNDS = 3


def quiet_gain(audio: np.ndarray) -> float:
    """The gain that brings a quiet decode window's loudest sample up to `QUIET_PEAK`; 1 for
    any window as loud as that.

    Whisper's log-mel features are not level-free (a fixed offset after the log), and tiny.en
    hears quiet speech as silence: the long-form set played 40 dB down (peaks -40 to -45 dBFS)
    streamed at 21.6 % WER, 45 dB down at 52.1 % with whole sentences gone (the decode ends at
    once, or the no-speech rule drops it), against 10.7 % at full level (BENCHMARKS.md, "Quiet
    speech").
    """
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak >= QUIET_PEAK or peak == 0.0:
        return 1.0
    return min(QUIET_PEAK / peak, QUIET_MAX_GAIN)


def encoder_window(frames: int, shortest_s: float = 15.0) -> int:
    """Mel frames the encoder sees for a decode window of `frames` (10 ms each).

    The window's audio plus at least `ENCODER_MARGIN_FRAMES` of padding, rounded up to 5 s,
    never under `shortest_s` nor over Whisper's 30 s. The encoder's cost grows with its input;
    Whisper was trained on 30 s inputs whose speech ends before the input does. 15 s inputs
    give the 30 s input's WER at half its cost. Shorter ones do not (BENCHMARKS.md, "Model
    lanes"): 5 s inputs made the short clips 26 % WER (8 % with 15 s); 10 s inputs for young
    segments replayed at 1 s steps as accurately as 15 s, a fifth cheaper, but served with
    0.5 s steps tiny.en repeated a fully committed clip after its prefix ("4. Queen of Cloves
    4. Queen of Cloves ..."), which 15 s inputs never did; 10 s inputs for finals alone
    (whose windows are at most about 6 s) did the same on the Ecclesiastes reading (BENCHMARKS.md,
    "What a long segment's final costs"). Longer windows (nothing committed
    yet to move the anchor to, a final after a lagging partial) grow the input in 5 s steps
    instead of jumping to 30 s: with only 10 s and 30 s, two streams' late finals fed each
    other through 30 s passes (issue 10).
    """
    needed = frames + ENCODER_MARGIN_FRAMES
    steps = math.ceil(needed / ENCODER_STEP_FRAMES) * ENCODER_STEP_FRAMES
    return min(max(int(shortest_s * 100), steps), FULL_WINDOW_FRAMES)


@dataclass(frozen=True)
class WhisperOptions:
    """How the Whisper recognizer runs."""

    # CTranslate2 compute type: int8 halves memory and time on CPU at no measurable WER cost
    compute_type: str = "int8"
    # "cpu" or "cuda"
    device: str = "cpu"
    # CPU threads in all (2 = both cores of the reference machine)
    threads: int = 2
    # model calls that run at once, each on its own CTranslate2 replica with threads // lanes
    # threads; None: one lane per thread on the CPU, one on a GPU. Measured on the 2-core
    # machine (BENCHMARKS.md, "Model lanes"): a decode of a 12 s window takes 812 ms with two
    # threads and 430 ms with one (a tiny model's decoder step is too short to split between
    # cores), and two one-thread lanes side by side finish one every 224 ms
    lanes: int | None = None
    # the shortest encoder input, seconds (`encoder_window`)
    window_s: float = 15.0
    # the decode window's audio never exceeds this while committed words allow a move, seconds
    max_window_s: float = 12.0
    # ... and a move leaves about this much audio in it. Measured replaying the long, short and
    # synthetic sets at 1 s steps (2284 words, BENCHMARKS.md): 15/12/9 s make 253 errors in 334 s
    # of decoding, 10/8/6 s 265 in 215 s, 15/8/6 s 267 in 254 s, 10/9/7 s 287 in 224 s. Same
    # accuracy within noise there, but served in real time the short window inserted repeated
    # phrases on the Ecclesiastes reading (10-13 % WER against 2.5 %, three runs): 12/9 s stays
    # until the shorter window is fixed, at a third more decode time. Anchoring in the longest
    # pause near that point instead of at a word's start replayed 1.5 points better on the
    # synthetic set, with 10/7 s windows as good as 12/9 s, but it moved the captured Gettysburg
    # step's window so that the skipped "by the people" hid under no clause mark and the recheck
    # (`uncovered_word`) missed it: not shipped (BENCHMARKS.md, "Pause anchors").
    keep_window_s: float = 9.0
    # committed text before the anchor handed to the decoder as previous-text prompt, tokens
    previous_tokens: int = 32
    # ... and before it, the previous segments' text
    previous_segments: bool = True
    # a decode that ends in a loop is decoded again without that earlier text (Whisper's
    # prompt reset); off only to measure what it changes
    reset_prompt_on_loop: bool = True
    # 1: greedy; more: beam search (slower, see BENCHMARKS.md)
    beam_size: int = 1
    # a call that holds a final encodes on all `threads` when no other call runs (a second
    # copy of the weights, one replica with every thread): the user waits on a final, and the
    # encoder, unlike the decoder's steps, is big enough to split. Measured (BENCHMARKS.md,
    # "A final's encoder on every core"): a 15 s encoder input takes 146 ms on one thread and
    # 90-107 ms on two; finalize P50 on the short clips 362 -> 310 ms. Partials on both cores
    # as well made it 377 ms: a final then starts beside a partial that holds both cores.
    wide_encoder: bool = True
    # a final's decode window moves once it holds more than this much audio, to about this
    # much (committed words allowing), seconds; None: the partials' window (`max_window_s`,
    # `keep_window_s`). The committed words inside the window are forced one token at a time
    # (~5.5 ms each); the words before it are the prompt, read in one pass. Measured
    # (BENCHMARKS.md, "A final's window"): the 38 finals of the long and synthetic sets decode
    # in 331 ms P50 instead of 426; replays with every final decoded give the same WER within
    # noise (long 10.70 both, held-out 6.89 both), and 3 s cost "by the people" on Gettysburg
    # again (long 12.11 %), so 6 s
    final_window_s: float | None = 6.0

    @property
    def parallel_calls(self) -> int:
        """The lanes in effect (`lanes`, or its default for the device)."""
        if self.lanes is not None:
            return self.lanes
        return self.threads if self.device == "cpu" else 1

    def __post_init__(self) -> None:
        if not 10.0 <= self.window_s <= 30.0:
            raise ValueError(f"window_s must be between 10 and 30 seconds, got {self.window_s!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads!r}")
        if self.lanes is not None and self.lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {self.lanes!r}")
        if self.device == "cpu" and self.lanes is not None and self.lanes > self.threads:
            raise ValueError(
                f"lanes ({self.lanes}) cannot exceed threads ({self.threads}) on the cpu: "
                "each lane needs a thread of its own"
            )
        longest = 30.0 - ENCODER_MARGIN_FRAMES / 100
        if not 2.0 <= self.keep_window_s < self.max_window_s <= longest:
            raise ValueError(
                f"expected 2 <= keep_window_s < max_window_s <= {longest:g}, got "
                f"{self.keep_window_s!r}, {self.max_window_s!r}"
            )
        if self.final_window_s is not None and not 2.0 <= self.final_window_s <= longest:
            raise ValueError(
                f"final_window_s must be None or 2..{longest:g} s, got {self.final_window_s!r}"
            )
        if not 0 <= self.previous_tokens <= MAX_PROMPT_TOKENS:
            raise ValueError(f"previous_tokens must be 0..{MAX_PROMPT_TOKENS}")
        if not 1 <= self.beam_size <= 10:
            raise ValueError(f"beam_size must be 1..10, got {self.beam_size!r}")


@dataclass(frozen=True)
class WhisperSegmentState:
    """What the recognizer keeps between decodes of one segment (`Hypothesis.state`)."""

    # the segment's language once known (forced or detected), so it cannot flip mid-segment
    language: str | None = None
    # where the decode window starts, ms from the segment start
    anchor_ms: int = 0
    # committed words before the anchor (the prompt's text, not the forced prefix)
    anchor_words: int = 0


@dataclass(frozen=True)
class _Prepared:
    """One request turned into model inputs."""

    index: int
    request: DecodeRequest
    state: WhisperSegmentState
    frames: int  # mel frames of real audio in the window
    window: int  # mel frames the encoder sees
    features: np.ndarray  # (n_mels, window)
    prompt: list[int]  # previous-text part, may be empty
    prefix: list[int]  # committed text tokens inside the window
    budget: int  # new tokens allowed
    earlier: bool  # the prompt holds earlier text (not only the client's context)
    tail: bool = False  # the decode of an uncovered tail (`_decode_tails`)


class WhisperRecognizer(Recognizer):
    """Whisper on CTranslate2, serving batches of segment decodes."""

    def __init__(self, model_dir: Path, name: str, options: WhisperOptions | None = None):
        self.options = options or WhisperOptions()
        if not (model_dir / "model.bin").is_file():
            raise FileNotFoundError(f"{model_dir} holds no CTranslate2 Whisper model (model.bin)")
        lane_threads = max(1, self.options.threads // self.options.parallel_calls)
        # faster-whisper's model object holds the CTranslate2 model the streaming path drives
        # and runs `transcribe_offline`: one copy of the weights for both
        self._pipeline = WhisperModel(
            str(model_dir),
            device=self.options.device,
            compute_type=self.options.compute_type,
            cpu_threads=lane_threads,
            num_workers=self.options.parallel_calls,
        )
        self.model: ctranslate2.models.Whisper = self._pipeline.model
        self._wide_encoder: ctranslate2.models.Whisper | None = None
        wide = self.options.device == "cpu" and self.options.threads > lane_threads
        if self.options.wide_encoder and wide:
            self._wide_encoder = ctranslate2.models.Whisper(
                str(model_dir), device="cpu", compute_type=self.options.compute_type,
                intra_threads=self.options.threads, inter_threads=1,
            )  # fmt: skip
        self._calls_in_flight = 0  # decode calls running now, on all lanes
        self._calls_lock = threading.Lock()
        self._hf_tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizers: dict[str | None, Tokenizer] = {}
        self._features = FeatureExtractor(feature_size=self.model.n_mels)
        # one fixed noise table for every decode: sample i of a segment always gets noise[i]
        self._dither = (
            np.random.default_rng(0).standard_normal(30 * SAMPLE_RATE) * DITHER_RMS
        ).astype(np.float32)
        languages = None
        if not self.model.is_multilingual:
            languages = frozenset({"en"})
        self.info = ModelInfo(
            name=name,
            languages=languages,
            max_segment_s=30.0,
            word_timestamps=True,
            translates=self.model.is_multilingual,
            lanes=self.options.parallel_calls,
            partial_is_final=True,
            details={
                "engine": "ctranslate2",
                "compute_type": self.options.compute_type,
                "device": self.options.device,
                "beam_size": str(self.options.beam_size),
                "lanes": str(self.options.parallel_calls),
            },
        )

    # ----------------------------------------------------------------- decode

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        """Decodes requests, then re-checks audio their continuations leave uncovered."""
        with self._calls_lock:
            self._calls_in_flight += 1
        try:
            return self._decode(requests)
        finally:
            with self._calls_lock:
                self._calls_in_flight -= 1

    def _decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        prepared = [self._prepare(i, r) for i, r in enumerate(requests)]
        answers, _ = self._decode_resetting(prepared)
        # The speech under a stretched word (`uncovered_word`) is decoded again with the audio
        # cut right after it, where the model cannot jump ahead; a recheck that finds more words
        # there replaces the stretched stretch (`merge_recheck`).
        rechecks: list[_Prepared] = []
        cuts: dict[int, int] = {}
        for i, (request, answer) in enumerate(zip(requests, answers, strict=True)):
            word = uncovered_word(answer.words, len(request.committed), request.duration_ms)
            if word is None:
                continue
            assert isinstance(answer.state, WhisperSegmentState)
            cuts[i] = word.end_ms
            truncated = dataclasses.replace(
                request, audio=request.audio[: word.end_ms * SAMPLE_RATE // 1000], final=False,
                state=answer.state,
            )  # fmt: skip
            rechecks.append(self._prepare(i, truncated))
        for recheck, again in zip(rechecks, self._decode_prepared(rechecks)[0], strict=True):
            i = recheck.index
            n = len(requests[i].committed)
            merged = merge_recheck(answers[i].words, again.words, n, cuts[i])
            if merged is not None:
                answers[i] = dataclasses.replace(answers[i], words=merged)
        return self._decode_tails(requests, answers)

    def _decode_resetting(self, prepared: list[_Prepared]) -> tuple[list[Hypothesis], list[bool]]:
        """`_decode_prepared`, with a decode that ran into a loop decoded again without the
        earlier text in its prompt; the answers in `prepared`'s order, and whether each looped.

        Whisper resets its prompt when a decode fails: a repetitive prompt ("1, 1, 2, 2, 3, 3")
        pulls tiny.en into a loop on the next speech ("Add 1 cup. 1, 1, 1, ..."), and the trimmed
        loop then stood for the whole segment. The reading with more words is kept: always taking
        the retry cost 0.4 points where the prompt was not the cause (BENCHMARKS.md, "Prompt
        reset").
        """
        answers, looped = self._decode_prepared(prepared)
        by_index = {p.index: k for k, p in enumerate(prepared)}
        retries = [
            dataclasses.replace(self._prepare(p.index, p.request, earlier=False), tail=p.tail)
            for p, loop in zip(prepared, looped, strict=True)
            if loop and p.earlier and self.options.reset_prompt_on_loop
        ]
        again, again_looped = self._decode_prepared(retries)
        for retry, answer, loop in zip(retries, again, again_looped, strict=True):
            k = by_index[retry.index]
            if len(answer.words) > len(answers[k].words):
                answers[k], looped[k] = answer, loop
        return answers, looped

    def _decode_tails(
        self, requests: Sequence[DecodeRequest], answers: list[Hypothesis]
    ) -> list[Hypothesis]:
        """Decodes the audio a decode's words stop short of (`uncovered_tail`) and appends it.

        After a sentence that ends a conversation ("Thank you very much. Goodbye. Goodbye.")
        tiny.en ends its text there, even when the window goes on with seconds of speech of the
        next speaker, in partials and finals alike: a final of 14-22 s of such audio came back
        with nothing after "Goodbye." (BENCHMARKS.md, "Speech after a goodbye"). The tail is
        decoded on its own, the words so far as its previous-text prompt and none forced, so
        there is no ending to stop after; its words are appended (the answer's own words and
        its state stay as they are); a tail decode below Whisper's log-probability threshold gives
        none (noise the endpointer took for voice, where tiny.en repeats the prompt's last
        words), nor does one that still ends in a loop after the prompt reset: a loop that fills
        a budget sized to the densest real speech is a failed decode, and one copy of it taken
        as a tail ("Ah, bah" for French counting) had every later tail loop on from it
        (BENCHMARKS.md, "Other languages"). A tail decode that stops early again is followed by
        another, up to `TAIL_ROUNDS`, while each finds more words.
        """
        pending = set(range(len(requests)))
        for _ in range(TAIL_ROUNDS):
            tails: list[_Prepared] = []
            for i in sorted(pending):
                answer = answers[i]
                assert isinstance(answer.state, WhisperSegmentState)
                start = uncovered_tail(answer.words, requests[i].duration_ms)
                if start is None or start <= answer.state.anchor_ms:
                    pending.discard(i)  # covered, or the tail is the decode's own window
                    continue
                state = WhisperSegmentState(answer.state.language, start, len(answer.words))
                rest = dataclasses.replace(requests[i], committed=answer.words, state=state)
                tails.append(dataclasses.replace(self._prepare(i, rest), tail=True))
            if not tails:
                break
            again, looped = self._decode_resetting(tails)
            for tail, answer, loop in zip(tails, again, looped, strict=True):
                i = tail.index
                if not loop and len(answer.words) > len(answers[i].words):
                    answers[i] = dataclasses.replace(answers[i], words=answer.words)
                else:
                    pending.discard(i)
        return answers

    def _decode_prepared(self, prepared: list[_Prepared]) -> tuple[list[Hypothesis], list[bool]]:
        """Decodes in batches of equal encoder window and prompt length; answers in order, and
        whether each decode ended in a loop (trimmed)."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for position, p in enumerate(prepared):
            groups[(p.window, len(p.prompt))].append(position)
        answers: list[Hypothesis | None] = [None] * len(prepared)
        looped = [False] * len(prepared)
        for positions in groups.values():
            group = [prepared[k] for k in positions]
            hypotheses, loops = self._decode_group(group)
            for k, hypothesis, loop in zip(positions, hypotheses, loops, strict=True):
                answers[k], looped[k] = hypothesis, loop
        assert all(a is not None for a in answers)
        return [a for a in answers if a is not None], looped

    def _tokenizer(self, language: str | None) -> Tokenizer:
        if language not in self._tokenizers:
            self._tokenizers[language] = Tokenizer(
                self._hf_tokenizer,
                self.model.is_multilingual,
                task="transcribe",
                language=language or "en",
            )
        return self._tokenizers[language]

    def _prepare(self, index: int, request: DecodeRequest, *, earlier: bool = True) -> _Prepared:
        state = request.state if isinstance(request.state, WhisperSegmentState) else None
        state = self._move_anchor(request, state or WhisperSegmentState())
        start = state.anchor_ms * SAMPLE_RATE // 1000
        audio = request.audio[start:]
        frames = len(audio) // HOP
        window = encoder_window(frames, self.options.window_s)
        # Whisper's log-mel floor is relative to the loudest frame of the input, so features are
        # computed with the window's zero padding included, as Whisper was trained.
        padded = np.zeros(window * HOP, np.float32)
        audio = audio[: window * HOP]
        padded[: len(audio)] = quiet_gain(audio) * audio + self._noise(start, len(audio))
        features = self._features(padded)[:, :window]
        tokenizer = self._tokenizer(None)
        before = request.committed[: state.anchor_words]
        inside = request.committed[state.anchor_words :]
        context = " ".join(t for t in (request.context.strip(), ", ".join(request.hotwords)) if t)
        prompt: list[int] = []
        if context:
            prompt = tokenizer.encode(" " + context)
        earlier_text = join_words(before) if earlier else ""
        if self.options.previous_segments and earlier:
            earlier_text = f"{request.previous_text.strip()} {earlier_text}".strip()
        with_earlier = bool(earlier_text and self.options.previous_tokens)
        if with_earlier:
            prompt += tokenizer.encode(" " + earlier_text)[-self.options.previous_tokens :]
        if prompt:
            prompt = [tokenizer.sot_prev, *prompt[-MAX_PROMPT_TOKENS:]]
        prefix = tokenizer.encode("".join(w.text for w in inside))
        covered_ms = max(request.committed[-1].end_ms - state.anchor_ms, 0) if inside else 0
        uncovered_s = max(frames / 100 - covered_ms / 1000, 0.0)
        budget = math.ceil(NEW_TOKENS_PER_SECOND * uncovered_s) + NEW_TOKENS_SLACK
        room = MAX_TOKENS - len(prompt) - len(prefix) - 4
        budget = max(1, min(budget, room))
        return _Prepared(
            index, request, state, frames, window, features, prompt, prefix, budget, with_earlier
        )

    def _noise(self, start: int, count: int) -> np.ndarray:
        """The dither of segment samples [start, start + count), repeating every 30 s."""
        positions = np.arange(start, start + count) % len(self._dither)
        return self._dither[positions]

    def _move_anchor(
        self, request: DecodeRequest, state: WhisperSegmentState
    ) -> WhisperSegmentState:
        """Moves the decode window's start forward once the window has grown past
        `max_window_s` (a final's: past `final_window_s`)."""
        audio_ms = request.duration_ms
        committed = request.committed
        longest_s, keep_s = self.options.max_window_s, self.options.keep_window_s
        if request.final and self.options.final_window_s is not None:
            longest_s = keep_s = self.options.final_window_s
        if audio_ms - state.anchor_ms <= longest_s * 1000:
            return state
        keep_ms = keep_s * 1000
        # word j may open the window if MIN_PREFIX_WORDS committed words remain from it on
        candidates = [
            j
            for j in range(state.anchor_words + 1, len(committed) - MIN_PREFIX_WORDS + 1)
            if committed[j].start_ms > state.anchor_ms
        ]
        if not candidates:
            return state  # too little committed yet: the window grows (`encoder_window`)
        fitting = [j for j in candidates if audio_ms - committed[j].start_ms <= keep_ms]
        best = fitting[0] if fitting else candidates[-1]
        return WhisperSegmentState(state.language, committed[best].start_ms, best)

    def _decode_group(self, group: list[_Prepared]) -> tuple[list[Hypothesis], list[bool]]:
        features = np.ascontiguousarray(np.stack([p.features for p in group]))
        encoder = self._encoder(group)
        encoded = encoder.encode(ctranslate2.StorageView.from_array(features), to_cpu=True)
        languages = self._languages(encoded, group)
        prompts = []
        for p, language in zip(group, languages, strict=True):
            tokenizer = self._tokenizer(language)
            prompts.append([*p.prompt, *tokenizer.sot_sequence, tokenizer.no_timestamps, *p.prefix])
        results = self.model.generate(
            encoded,
            prompts,
            beam_size=self.options.beam_size,
            max_length=max(
                _max_length(prompt, p) for prompt, p in zip(prompts, group, strict=True)
            ),
            return_scores=True,
            return_no_speech_prob=True,
            # End-of-text must be possible right after a forced prefix (see the module
            # docstring); CTranslate2 suppresses it at the first step by default.
            suppress_blank=False,
        )
        texts: list[list[int]] = []
        loops: list[bool] = []
        for p, result in zip(group, results, strict=True):
            ids = [t for t in result.sequences_ids[0] if t < self._tokenizer(None).eot]
            if ids[: len(p.prefix)] != p.prefix:
                ids = p.prefix + ids  # CTranslate2 echoes the prefix; keep it if it did not
            new = ids[len(p.prefix) :][: p.budget]
            looped = without_loop(new, p.prefix) if len(new) >= p.budget else None
            loops.append(looped is not None)
            if looped is not None:  # more text than speech holds, ending in a loop
                new = looped
            # scores[0] is the length-normalised log-probability of the sequence
            silent = (
                not p.request.committed
                and result.no_speech_prob > NO_SPEECH_PROBABILITY
                and result.scores[0] < NO_SPEECH_LOGPROB
            )
            # a tail's decode (`_decode_tails`) is a second look at audio the first decode took
            # for the end: its text is kept only above Whisper's log-probability threshold
            # (below it Whisper takes a decode for failed). Measured: real speech after a
            # goodbye -0.10 to -0.12; the prompt's last words repeated over noise the
            # endpointer took for voice ("10 meters 10 meters") -1.4 to -4.3
            silent = silent or (p.tail and result.scores[0] < NO_SPEECH_LOGPROB)
            texts.append(p.prefix + ([] if silent else new))
        alignments = self._align(encoded, group, texts, languages)
        hypotheses = [
            Hypothesis(
                words=self._words(p, tokens, times, probabilities, language),
                language=language,
                state=WhisperSegmentState(language, p.state.anchor_ms, p.state.anchor_words),
            )
            for p, tokens, (times, probabilities), language in zip(
                group, texts, alignments, languages, strict=True
            )
        ]
        return hypotheses, loops

    def _encoder(self, group: list[_Prepared]) -> ctranslate2.models.Whisper:
        """The model that encodes `group`: every thread for a final when no other call runs
        (`WhisperOptions.wide_encoder`), else the lane's own replica."""
        if self._wide_encoder is None or not any(p.request.final for p in group):
            return self.model
        with self._calls_lock:
            alone = self._calls_in_flight == 1
        return self._wide_encoder if alone else self.model

    def _languages(self, encoded: ctranslate2.StorageView, group: list[_Prepared]) -> list[str]:
        """The language of each request: forced, kept from earlier decodes, or detected now."""
        known = [p.request.language or p.state.language for p in group]
        if not self.model.is_multilingual:
            return ["en"] * len(group)
        if all(known):
            return [str(k) for k in known]
        detected = self.model.detect_language(encoded)
        return [str(k) if k else detected[i][0][0].strip("<|>") for i, k in enumerate(known)]

    def _align(
        self,
        encoded: ctranslate2.StorageView,
        group: list[_Prepared],
        texts: list[list[int]],
        languages: list[str],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text: the start time (ms, in the window) of each token plus a trailing end time
        (DTW), and each token's probability among the text tokens (the alignment pass scores
        the text it aligns: CTranslate2's `text_token_probs`)."""
        alignments: list[tuple[np.ndarray, np.ndarray]] = [
            (np.zeros(len(t) + 1), np.zeros(len(t))) for t in texts
        ]
        todo = [i for i, t in enumerate(texts) if t]
        by_language: dict[str, list[int]] = defaultdict(list)
        for i in todo:
            by_language[languages[i]].append(i)
        for language, indices in by_language.items():
            # align() takes one start sequence (with the language token) per batch
            enc = encoded
            if len(indices) != len(group):
                rows = np.asarray(encoded)[indices]
                enc = ctranslate2.StorageView.from_array(np.ascontiguousarray(rows))
            results = self.model.align(
                enc,
                self._tokenizer(language).sot_sequence,
                [texts[i] for i in indices],
                [max(1, group[i].frames) for i in indices],
                median_filter_width=7,
            )
            for i, result in zip(indices, results, strict=True):
                text_index = np.array([a[0] for a in result.alignments])
                time_index = np.array([a[1] for a in result.alignments])
                jumps = np.pad(np.diff(text_index), (1, 0), constant_values=1).astype(bool)
                starts = time_index[jumps] * MS_PER_ALIGNMENT_STEP
                end_ms = group[i].frames * 10
                timing = np.full(len(texts[i]) + 1, end_ms, dtype=np.int64)
                n = min(len(starts), len(timing))
                timing[:n] = np.minimum(starts[:n], end_ms)
                alignments[i] = (timing, np.asarray(result.text_token_probs, dtype=np.float64))
        return alignments

    def _words(
        self,
        p: _Prepared,
        tokens: list[int],
        times: np.ndarray,
        probabilities: np.ndarray,
        language: str,
    ) -> tuple[Word, ...]:
        """The committed words verbatim, then the new tokens grouped into timed words, each
        with the mean probability of its tokens (faster-whisper's word probability; a mark
        joined to the word before leaves that word's probability as it was, as there)."""
        committed = p.request.committed
        new_tokens = tokens[len(p.prefix) :]
        if not new_tokens:
            return committed
        tokenizer = self._tokenizer(language)
        pieces, piece_tokens = tokenizer.split_to_word_tokens(new_tokens)
        offset = p.state.anchor_ms
        words: list[Word] = []
        position = len(p.prefix)
        for piece, ids in zip(pieces, piece_tokens, strict=True):
            start = offset + int(times[position])
            scores = probabilities[position : position + len(ids)]
            position += len(ids)
            end = offset + int(times[min(position, len(times) - 1)])
            if not piece.strip():
                continue
            mark = piece.strip() in string.punctuation or set(piece.strip()) <= FULL_WIDTH_MARKS
            if words and mark:
                last = words[-1]  # punctuation belongs to the word it follows
                words[-1] = dataclasses.replace(
                    last, text=last.text + piece, end_ms=max(last.end_ms, end)
                )
            else:
                probability = round(float(scores.mean()), 4) if len(scores) else None
                words.append(Word(piece, start, max(start, end), probability))
        return committed + tuple(words)

    # ---------------------------------------------------------------- offline

    def transcribe_offline(
        self, samples: np.ndarray, options: OfflineOptions
    ) -> Iterator[OfflineSegment]:
        """A whole recording through faster-whisper's own long-form pipeline, lazily.

        `WhisperModel.transcribe` is the reference for Whisper's offline quality (30 s windows
        moved by the model's timestamps, previous text as prompt, temperature fallback); beam
        as `beam_size` says, no VAD filter. Each step of the iterator decodes one window.
        """
        segments, info = self._pipeline.transcribe(
            samples,
            language=options.language if self.model.is_multilingual else "en",
            task=options.task,
            beam_size=self.options.beam_size,
            initial_prompt=options.context or None,
            hotwords=", ".join(options.hotwords) or None,
            word_timestamps=options.word_timestamps,
        )
        for s in segments:
            words = tuple(
                Word(w.word, int(w.start * 1000), int(w.end * 1000), w.probability)
                for w in s.words or ()
            )
            yield OfflineSegment(
                int(s.start * 1000), int(s.end * 1000), s.text.strip(), info.language, words,
                tuple(s.tokens), s.avg_logprob, s.compression_ratio, s.no_speech_prob,
                s.temperature or 0.0,
            )  # fmt: skip


def _max_length(prompt: list[int], p: _Prepared) -> int:
    """CTranslate2's `max_length` that lets `p` generate its whole budget after its prefix.

    Measured with CTranslate2 4.8 (tests/models/test_whisper.py checks it): Whisper's generate
    returns at most `max_length // 2` tokens after the start sequence, the forced prefix
    included, and at most `max_length` minus the start sequence. So twice the prefix and the
    budget, plus the start sequence; the budget itself is enforced on the result.
    """
    start = len(prompt) - len(p.prefix)
    return start + 2 * (len(p.prefix) + p.budget)


def uncovered_word(words: Sequence[Word], committed: int, duration_ms: int) -> Word | None:
    """The first new word, if it ends a clause and covers more audio than a word can.

    When the model skips speech on a repeated phrase ("government of the people, [by the
    people,] for the people"), it jumps right after the committed words, at a clause mark, and
    the alignment gives the skipped audio to that token ("," or "people,"), which then covers
    0.9 s. Measured with fixed 1 s steps (`scripts/bench_replay.py`, BENCHMARKS.md, issue 10):
    words of any kind stretched past 0.7 s are mostly DTW artefacts before a number or a pause
    ("is" before "$120"), and re-checking them cost a word on the account reading; checking
    every new word that ends a clause fired on 19 % of the long-form decodes, the first new
    word only on 9 % (11 % synthetic), with the same accuracy. Words ending at the live edge
    are left out: there the audio has no continuation to jump to.
    """
    if len(words) <= committed:
        return None
    word = words[committed]
    stretched = word.end_ms - word.start_ms >= UNCOVERED_MS
    if stretched and _ends_clause(word.text) and word.end_ms < duration_ms - LIVE_EDGE_MS:
        return word
    return None


def uncovered_tail(words: Sequence[Word], duration_ms: int) -> int | None:
    """Where to decode again from when the words end `TAIL_MS` or more before the audio does.

    Inside a segment a pause is shorter than that (the endpointer ends the segment), so such a
    tail holds speech the decode stopped short of, or noise the endpointer took for voice, which
    the tail's log-probability rule then drops. Where the text stops short, the alignment often
    stretches its last word over the speech that follows ("Goodbye." over 4.1-12.9 s), so the
    last word is taken to end at most `UNCOVERED_MS` after it starts (the longest word of the
    exact boundaries in tests/data/word_boundaries lasts 563 ms; a number read as one word,
    "555-1212.", can last longer, and a tail after it then starts inside it: measured with the
    sets in BENCHMARKS.md). The tail starts `TAIL_MARGIN_MS` before that end. None when the
    words reach the audio's end, or when there are none.
    """
    if not words:
        return None
    last = words[-1]
    end = min(last.end_ms, last.start_ms + UNCOVERED_MS)
    if duration_ms - end < TAIL_MS:
        return None
    return max(0, end - TAIL_MARGIN_MS)


def _ends_clause(text: str) -> bool:
    return text.rstrip()[-1:] in CLAUSE_MARKS


def merge_recheck(
    words: Sequence[Word], recheck: Sequence[Word], committed: int, cut_ms: int
) -> tuple[Word, ...] | None:
    """The words of a decode with the audio up to `cut_ms` re-decoded, or None if no better.

    The recheck may only add words: its continuation up to the cut must hold the original's
    words there, in order, and more. It then replaces them, and the original words from the cut
    on follow it. A recheck that finds nothing new (a real pause under a long word) or something
    else (a different reading) leaves the answer as it was. The recheck's last word can be the
    next word anticipated at the cut ("a time to plant, and [and] a time"): one equal to the
    first word after the cut is dropped.
    """
    before = [w for w in words[committed:] if w.start_ms < cut_ms]
    after = [w for w in words[committed:] if w.start_ms >= cut_ms]
    # The recheck's audio ends at the cut: words it starts in the last `LIVE_EDGE_MS` have no
    # audio under them. There tiny.en runs on with the phrase it just said, stacked at the cut
    # ("salt, two mags on rice, two mags on beans, two mags on" at 18.7-18.8 s for a cut at
    # 18.8 s), and taking them committed a repeat the speaker never said (BENCHMARKS.md,
    # "A repeat stacked at a recheck's cut").
    found = [w for w in recheck[committed:] if w.start_ms < cut_ms - LIVE_EDGE_MS]
    if found and after and _plain(found[-1].text) == _plain(after[0].text):
        found.pop()
    if not _is_subsequence(_spoken(before), _spoken(found)):
        return None
    if len(_spoken(found)) <= len(_spoken(before)):
        return None
    if found and after and after[0].text.lstrip()[:1].islower():
        # the cut ended the recheck's sentence; the original goes on with the same sentence
        last = found[-1]
        found[-1] = dataclasses.replace(last, text=last.text.rstrip(".?!"))
    return (*words[:committed], *found, *after)


def _plain(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def _spoken(words: Sequence[Word]) -> list[str]:
    return [p for p in (_plain(w.text) for w in words) if p]


def _is_subsequence(short: Sequence[str], long: Sequence[str]) -> bool:
    remaining = iter(long)
    return all(any(item == other for other in remaining) for item in short)
