"""The embedded default recognizer: Whisper (CTranslate2, int8) on local weights.

Built on CTranslate2's Whisper model directly (with faster-whisper's feature extractor and
tokenizer helpers) rather than `WhisperModel.transcribe`, because the service needs three things
that call does not offer: a batch of requests from different sessions in one encoder and decoder
pass, a forced prefix (the committed words) per request, and word alignment of the whole text
including that prefix.

Decoding choices, from what went wrong in peers (shared/design/peer-measurements.md):
- greedy at temperature 0, no temperature fallback: a retry with sampling made single steps of
  whisper_streaming take 4-21 s;
- a bounded number of new tokens per request, scaled to the audio length, and a repetition-loop
  trim when that bound is hit;
- a shorter encoder window than Whisper's 30 s (15 s by default, 30 s for longer segments):
  measured on this machine, the 15 s window costs a quarter of the encoder time with the same
  WER on the test corpus; windows below ~10 s, or windows sized to the audio, make tiny.en loop;
- a fixed low-level dither (-70 dBFS) on the segment audio: stretches of exact digital zeros
  (a browser stream's first moments, noise-gated microphones) made tiny.en drop the first word
  of an utterance in 2-3 s decodes ("And Mr. John ..." -> "Mr. John ..."), which LocalAgreement
  then commits for good. The same noise is added at the same positions in every decode of a
  segment, so successive hypotheses stay comparable and results stay reproducible.
"""

from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import numpy as np
import tokenizers
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import Tokenizer

from streaming.recognizer import DecodeRequest, Hypothesis, ModelInfo, Recognizer, Word

SAMPLE_RATE = 16_000  # Hz
HOP = 160  # samples per mel frame: 10 ms
MS_PER_ALIGNMENT_STEP = 20  # encoder frames are 2 mel frames
MAX_TOKENS = 448  # Whisper's text context, prompt included
MAX_PROMPT_TOKENS = MAX_TOKENS // 2 - 1  # Whisper's own cap for previous-text prompts
NEW_TOKENS_PER_SECOND = 6  # fast speech is ~4 tokens/s; more than 6 means a loop
NO_SPEECH_PROBABILITY = 0.6  # with a low average log-probability: no speech (Whisper's rule)
NO_SPEECH_LOGPROB = -1.0
DITHER_RMS = 10 ** (-70 / 20)  # -70 dBFS: far below speech, above the log-mel floor of zeros


@dataclass(frozen=True)
class WhisperOptions:
    """How the Whisper recognizer runs."""

    # CTranslate2 compute type: int8 halves memory and time on CPU at no measurable WER cost
    compute_type: str = "int8"
    # "cpu" or "cuda"
    device: str = "cpu"
    # threads inside one decode (2 = both cores of the reference machine)
    threads: int = 2
    # encoder window for segments that fit it, seconds (segments above it use 30 s)
    window_s: float = 15.0
    # also put the end of the previous segments' text into the prompt; off by default because
    # a misrecognition then feeds the next segment, and prompts of unequal length cannot share
    # a batch in CTranslate2
    carry_previous_text: bool = False

    def __post_init__(self) -> None:
        if not 10.0 <= self.window_s <= 30.0:
            raise ValueError(f"window_s must be between 10 and 30 seconds, got {self.window_s!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads!r}")


@dataclass(frozen=True)
class _Prepared:
    """One request turned into model inputs."""

    index: int
    request: DecodeRequest
    frames: int  # mel frames of real audio
    window: int  # mel frames the encoder sees
    features: np.ndarray  # (n_mels, window)
    prompt: list[int]  # previous-text part, may be empty
    prefix: list[int]  # committed text tokens


class WhisperRecognizer(Recognizer):
    """Whisper on CTranslate2, serving batches of segment decodes."""

    def __init__(self, model_dir: Path, name: str, options: WhisperOptions | None = None):
        self.options = options or WhisperOptions()
        if not (model_dir / "model.bin").is_file():
            raise FileNotFoundError(f"{model_dir} holds no CTranslate2 Whisper model (model.bin)")
        self.model = ctranslate2.models.Whisper(
            str(model_dir),
            device=self.options.device,
            compute_type=self.options.compute_type,
            intra_threads=self.options.threads,
            inter_threads=1,
        )
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
            details={
                "engine": "ctranslate2",
                "compute_type": self.options.compute_type,
                "device": self.options.device,
            },
        )

    # ----------------------------------------------------------------- decode

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        """Decodes requests in batches of equal encoder window and prompt length."""
        groups: dict[tuple[int, int], list[_Prepared]] = defaultdict(list)
        for i, request in enumerate(requests):
            prepared = self._prepare(i, request)
            groups[(prepared.window, len(prepared.prompt))].append(prepared)
        answers: list[Hypothesis | None] = [None] * len(requests)
        for group in groups.values():
            for prepared, hypothesis in zip(group, self._decode_group(group), strict=True):
                answers[prepared.index] = hypothesis
        assert all(a is not None for a in answers)
        return [a for a in answers if a is not None]

    def _tokenizer(self, language: str | None) -> Tokenizer:
        if language not in self._tokenizers:
            self._tokenizers[language] = Tokenizer(
                self._hf_tokenizer,
                self.model.is_multilingual,
                task="transcribe",
                language=language or "en",
            )
        return self._tokenizers[language]

    def _prepare(self, index: int, request: DecodeRequest) -> _Prepared:
        frames = len(request.audio) // HOP
        window_s = self.options.window_s if frames <= self.options.window_s * 100 else 30.0
        window = int(window_s * 100)
        # Whisper's log-mel floor is relative to the loudest frame of the input, so features are
        # computed with the window's zero padding included, as Whisper was trained.
        padded = np.zeros(window * HOP, np.float32)
        audio = request.audio[: window * HOP]
        padded[: len(audio)] = audio + self._dither[: len(audio)]
        features = self._features(padded)[:, :window]
        tokenizer = self._tokenizer(None)
        prompt_text = " ".join(
            t
            for t in (
                request.context.strip(),
                ", ".join(request.hotwords),
                request.previous_text.strip() if self.options.carry_previous_text else "",
            )
            if t
        )
        prompt: list[int] = []
        if prompt_text:
            prompt = [tokenizer.sot_prev, *tokenizer.encode(" " + prompt_text)[-MAX_PROMPT_TOKENS:]]
        prefix = tokenizer.encode("".join(w.text for w in request.committed))
        return _Prepared(index, request, frames, window, features, prompt, prefix)

    def _decode_group(self, group: list[_Prepared]) -> list[Hypothesis]:
        features = np.ascontiguousarray(np.stack([p.features for p in group]))
        encoded = self.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True)
        languages = self._languages(encoded, group)
        prompts = []
        for p, language in zip(group, languages, strict=True):
            tokenizer = self._tokenizer(language)
            prompts.append([*p.prompt, *tokenizer.sot_sequence, tokenizer.no_timestamps, *p.prefix])
        budgets = [self._new_token_budget(p) for p in group]
        results = self.model.generate(
            encoded,
            prompts,
            beam_size=1,
            max_length=max(len(prompt) + b for prompt, b in zip(prompts, budgets, strict=True)),
            return_scores=True,
            return_no_speech_prob=True,
        )
        texts: list[list[int]] = []
        for p, result, budget in zip(group, results, budgets, strict=True):
            ids = [t for t in result.sequences_ids[0] if t < self._tokenizer(None).eot]
            if ids[: len(p.prefix)] != p.prefix:
                ids = p.prefix + ids  # CTranslate2 echoes the prefix; keep it if it did not
            new = ids[len(p.prefix) :][:budget]
            if len(new) >= budget:
                new = _trim_repetition(new)
            # scores[0] is the length-normalised log-probability of the sequence
            silent = (
                not p.prefix
                and result.no_speech_prob > NO_SPEECH_PROBABILITY
                and result.scores[0] < NO_SPEECH_LOGPROB
            )
            texts.append(p.prefix + ([] if silent else new))
        timings = self._align(encoded, group, texts, languages)
        return [
            Hypothesis(
                words=self._words(p, tokens, times, language),
                language=language,
                state=language,
            )
            for p, tokens, times, language in zip(group, texts, timings, languages, strict=True)
        ]

    def _new_token_budget(self, p: _Prepared) -> int:
        budget = int(NEW_TOKENS_PER_SECOND * p.frames / 100) + 8
        room = MAX_TOKENS - len(p.prompt) - len(p.prefix) - 4
        return max(1, min(budget, room))

    def _languages(self, encoded: ctranslate2.StorageView, group: list[_Prepared]) -> list[str]:
        """The language of each request: forced, kept from earlier decodes, or detected now."""
        known = [p.request.language or p.request.state for p in group]
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
    ) -> list[np.ndarray]:
        """Start time (ms) of each text token plus a trailing end time, by cross-attention DTW."""
        timings: list[np.ndarray] = [np.zeros(len(t) + 1) for t in texts]
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
                timings[i] = timing
        return timings

    def _words(
        self, p: _Prepared, tokens: list[int], times: np.ndarray, language: str
    ) -> tuple[Word, ...]:
        """The committed words verbatim, then the new tokens grouped into timed words."""
        committed = p.request.committed
        new_tokens = tokens[len(p.prefix) :]
        if not new_tokens:
            return committed
        tokenizer = self._tokenizer(language)
        pieces, piece_tokens = tokenizer.split_to_word_tokens(new_tokens)
        words: list[Word] = []
        position = len(p.prefix)
        for piece, ids in zip(pieces, piece_tokens, strict=True):
            start = int(times[position])
            position += len(ids)
            end = int(times[min(position, len(times) - 1)])
            if not piece.strip():
                continue
            if words and piece.strip() in string.punctuation:
                last = words[-1]  # punctuation belongs to the word it follows
                words[-1] = Word(last.text + piece, last.start_ms, max(last.end_ms, end))
            else:
                words.append(Word(piece, start, max(start, end)))
        return committed + _drop_unsupported(committed, words)


def _drop_unsupported(committed: tuple[Word, ...], new: list[Word]) -> tuple[Word, ...]:
    """Removes continuation words the audio does not support.

    Once the committed prefix already covers all the speech, Whisper tends to go on and repeat
    the utterance (measured on the test corpus: 10 of 13 files with the 15 s window). Those
    words have no audio of their own, so the alignment stacks them on one instant with zero
    duration. Real words never do that two at a time: from the first such pile (and the word
    that runs into it) on, the continuation is dropped. A punctuation-only continuation after
    text that already ends in punctuation is dropped too (" . ." after "them.").
    """
    for i in range(len(new) - 1):
        here, after = new[i], new[i + 1]
        if here.start_ms == here.end_ms == after.start_ms:
            cut = i
            while cut > 0 and new[cut - 1].end_ms >= here.start_ms:
                cut -= 1
            new = new[:cut]
            break
    text = "".join(w.text for w in new).strip()
    previous = "".join(w.text for w in committed).strip()
    if text and previous and not any(c.isalnum() for c in text) and previous[-1] in ".?!,;:":
        return ()
    return tuple(new)


def _trim_repetition(tokens: list[int], min_repeats: int = 3, max_period: int = 12) -> list[int]:
    """Cuts a runaway loop: keeps one copy of a pattern that repeats to the end of `tokens`."""
    for period in range(1, max_period + 1):
        span = period * min_repeats
        if len(tokens) < span:
            break
        tail = tokens[-span:]
        if all(tail[i] == tail[i % period] for i in range(span)):
            start = len(tokens) - period
            while start - period >= 0 and tokens[start - period : start] == tokens[-period:]:
                start -= period
            return tokens[: start + period]
    return tokens
