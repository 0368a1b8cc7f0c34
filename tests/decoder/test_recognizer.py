"""QwenRecognizer: the Recognizer contract, language handling, budgets and words."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import decoder.recognizer as recognizer_module
from decoder.generate import Generated
from decoder.recognizer import QwenOptions, QwenRecognizer, QwenSegmentState
from decoder.words import estimate_times, split_words
from encoder.config import num_tokens
from streaming.config import Stability
from streaming.recognizer import DecodeRequest, Hypothesis, Word, join_words
from streaming.stabilizer import Stabilizer

STEP = 16_000  # 1 s


@pytest.fixture(scope="module")
def recognizer(untied: Callable[[str], Path]) -> QwenRecognizer:
    """The untied tiny model in fp32 with the default 4 s window."""
    return QwenRecognizer.load(untied("hf"), QwenOptions(mode="float32"))


class Scripted:
    """Stands in for `continue_stream_steps`: records its arguments, answers scripted text."""

    def __init__(self, recognizer: QwenRecognizer, answers: Sequence[tuple[str, str]]) -> None:
        self.tokenizer = recognizer.model.tokenizer
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, decoder: Any, stream: Any, open_audio: Any, tail: Any, **kwargs: Any):
        self.calls.append({"tail": list(tail), **kwargs})
        text, stop = self.answers.pop(0)
        tokens = self.tokenizer.encode(text)
        if stop == "eos":
            tokens.append(self.tokenizer.special.im_end)
        return self._steps(Generated(tokens=tokens, stop=stop))

    @staticmethod
    def _steps(generated: Generated) -> Generator[Any, Any, Generated]:
        """Steps that need no decoder call and return the scripted answer."""
        return generated
        yield  # a generator, like the function it stands in for


def stream_session(
    recognizer: QwenRecognizer, audio: np.ndarray, **request: Any
) -> tuple[list[Hypothesis], list[DecodeRequest]]:
    """Drives one segment like the session: 1 s steps, LocalAgreement commits, a final."""
    stabilizer = Stabilizer(Stability())
    committed: tuple[Word, ...] = ()
    state = None
    hypotheses, requests = [], []
    for end in [*range(STEP, len(audio), STEP), len(audio)]:
        final = end == len(audio)
        req = DecodeRequest(audio=audio[:end], committed=committed, state=state, final=final,
                            **request)  # fmt: skip
        hypothesis = recognizer.decode([req])[0]
        hypotheses.append(hypothesis)
        requests.append(req)
        assert hypothesis.words[: len(committed)] == committed  # the forced prefix, verbatim
        state = hypothesis.state
        if not final:
            new, _ = stabilizer.update(hypothesis.words[len(committed) :], req.duration_ms)
            committed += tuple(new)
    return hypotheses, requests


def test_a_segment_keeps_its_committed_prefix(
    recognizer: QwenRecognizer, speech: Callable[[float], np.ndarray]
) -> None:
    """Over a 12 s segment every answer starts with the committed words; the final too."""
    hypotheses, requests = stream_session(recognizer, speech(12.0), previous_text="one two")
    assert requests[-1].committed, "nothing was committed: the test exercises no prefix"
    assert join_words(hypotheses[-1].words).startswith(join_words(requests[-1].committed))
    state = hypotheses[-2].state
    assert isinstance(state, QwenSegmentState) and state.decoder.audio > 0


def test_forced_language_is_prefilled_and_reported(
    recognizer: QwenRecognizer, speech: Callable[[float], np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A forced language becomes the `language X<asr_text>` prefill and the answer's language."""
    fake = Scripted(recognizer, [(" hello", "eos")])
    monkeypatch.setattr(recognizer_module, "continue_stream_steps", fake)
    hypothesis = recognizer.decode([DecodeRequest(audio=speech(2.0), language="de")])[0]
    prefill = recognizer.model.tokenizer.encode("language German<asr_text>")
    tail = fake.calls[0]["tail"]
    assert tail[-len(prefill) :] == prefill and hypothesis.language == "de"
    assert join_words(hypothesis.words) == "hello"


def test_a_detected_language_is_kept_for_the_segment(
    recognizer: QwenRecognizer, speech: Callable[[float], np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The first real language named is prefilled from then on; the draft is the rest."""
    fake = Scripted(recognizer, [
        ("language None<asr_text>", "eos"),
        ("language English<asr_text>Hello world", "eos"),
        ("Hello world again", "eos"),
    ])  # fmt: skip
    monkeypatch.setattr(recognizer_module, "continue_stream_steps", fake)
    audio, state = speech(3.0), None
    answers = []
    for end in (STEP, 2 * STEP, 3 * STEP):
        answers.append(recognizer.decode([DecodeRequest(audio=audio[:end], state=state)])[0])
        state = answers[-1].state
    assert answers[0].language == "und" and answers[0].words == ()
    assert answers[1].language == "en"
    assert [w.text for w in answers[1].words] == ["Hello", " world"]
    tokenizer = recognizer.model.tokenizer
    header = tokenizer.encode("language English<asr_text>")
    assert fake.calls[1]["tail"][-len(header) :] != header  # still detecting at step 2
    assert fake.calls[2]["tail"][-len(header) :] == header  # kept at step 3
    assert fake.calls[2]["draft"] == [*tokenizer.encode("Hello world"), tokenizer.special.im_end]
    assert join_words(answers[2].words) == "Hello world again" and answers[2].language == "en"


def test_budgets_follow_the_uncommitted_audio(
    recognizer: QwenRecognizer, speech: Callable[[float], np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Partial budgets scale with audio after the last committed word; text rate is capped."""
    fake = Scripted(recognizer, [("x", "eos")] * 4)
    monkeypatch.setattr(recognizer_module, "continue_stream_steps", fake)
    audio = speech(5.0)
    recognizer.decode([DecodeRequest(audio=audio[: 3 * STEP], language="en")])
    recognizer.decode([DecodeRequest(audio=audio[: 3 * STEP])])
    committed = (Word("Ten", 0, 2000),)
    recognizer.decode([DecodeRequest(audio=audio[: 3 * STEP], committed=committed, language="en",
                                     final=True)])  # fmt: skip
    chatter = tuple(Word(" la", i * 100, i * 100 + 100) for i in range(60))
    recognizer.decode([DecodeRequest(audio=audio[: 3 * STEP], committed=chatter, language="en")])
    budgets = [call["max_new"] for call in fake.calls]
    assert budgets == [8 + 24, 8 + 24 + 8, 16 + 10, 0]  # 3 s, + header, final 1 s, runaway


def test_a_word_cut_by_the_budget_is_left_out(
    recognizer: QwenRecognizer, speech: Callable[[float], np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """When the budget ends a partial answer, its possibly incomplete last word is dropped."""
    fake = Scripted(recognizer, [(" ten of clu", "limit"), (" ten of clu" + "bs" * 30, "limit")])
    monkeypatch.setattr(recognizer_module, "continue_stream_steps", fake)
    partial = recognizer.decode([DecodeRequest(audio=speech(2.0), language="en")])[0]
    assert [w.text for w in partial.words] == ["ten", " of"]
    final = recognizer.decode([DecodeRequest(audio=speech(2.0), language="en", final=True)])[0]
    assert join_words(final.words) == "ten of clubs"  # the reference's loop collapse


def test_bad_requests_are_refused(
    recognizer: QwenRecognizer, speech: Callable[[float], np.ndarray]
) -> None:
    """Foreign states, shrinking audio and unknown languages raise ValueError."""
    audio = speech(2.0)
    with pytest.raises(ValueError, match="state must come from QwenRecognizer"):
        recognizer.decode([DecodeRequest(audio=audio, state="whisper")])
    state = recognizer.decode([DecodeRequest(audio=audio)])[0].state
    with pytest.raises(ValueError, match="shorter than what was already decoded"):
        recognizer.decode([DecodeRequest(audio=audio[:STEP], state=state)])
    with pytest.raises(ValueError, match="'xx'"):
        recognizer.decode([DecodeRequest(audio=audio, language="xx")])


def test_info_describes_the_model(recognizer: QwenRecognizer) -> None:
    """ModelInfo lists the session's language codes, estimated word times and the mode."""
    info = recognizer.info
    assert info.languages is not None
    assert {"en", "zh", "yue", "tl"} <= info.languages and "fil" not in info.languages
    assert not info.word_timestamps and info.max_segment_s == 20.0
    assert info.details["mode"] == "float32" and info.details["window_s"] == "4"
    with pytest.raises(ValueError, match="window_s"):
        QwenOptions(window_s=9)


def test_words_split_by_spaces_and_by_character() -> None:
    """Words keep their leading space; CJK characters are words; the text is preserved."""
    assert split_words(" ten of clubs, four") == [" ten", " of", " clubs,", " four"]
    assert split_words("你好，世界 ok") == ["你", "好，", "世", "界", " ok"]
    for text in ("a  b\nc ", "日本語abc", "", "  "):
        assert "".join(split_words(text)) == text.rstrip()


def test_times_spread_by_characters_up_to_the_edge() -> None:
    """Estimated times are contiguous, proportional to characters and end at the live edge."""
    times = estimate_times([" a", " bbb"], 1000, 2000)
    assert times == [(1000, 1250), (1250, 2000)]
    assert estimate_times([], 0, 100) == []


@pytest.mark.parametrize("end_s", [4.5, 3.5])
def test_a_final_shorter_than_the_partials_covers_only_its_audio(
    recognizer: QwenRecognizer, speech: Callable[[float], np.ndarray], end_s: float
) -> None:
    """The session may end a segment before the last partial's live edge: no error, no extra."""
    audio = speech(6.0)
    state = None
    for end in range(STEP, 6 * STEP + 1, STEP):
        state = recognizer.decode([DecodeRequest(audio=audio[:end], state=state)])[0].state
    assert isinstance(state, QwenSegmentState) and state.encoder.tokens_emitted == 52  # 4 s
    committed = (Word("x", 0, 100),)
    short = audio[: int(end_s * STEP)]
    final = recognizer.decode([DecodeRequest(short, committed, state=state, final=True)])[0]
    assert final.words[:1] == committed
    assert isinstance(final.state, QwenSegmentState)
    assert final.state.decoder.audio == num_tokens(len(short) // 160)  # exactly its audio
    with pytest.raises(ValueError, match="shorter than what was already decoded"):
        recognizer.decode([DecodeRequest(short, committed, state=state)])  # partials never shrink


def test_a_decode_can_be_retried_from_the_same_state(
    recognizer: QwenRecognizer, speech: Callable[[float], np.ndarray]
) -> None:
    """The worker retries failed batches: the same request and state give the same answer."""
    audio = speech(6.0)
    state = recognizer.decode([DecodeRequest(audio=audio[: 4 * STEP])])[0].state
    request = DecodeRequest(audio=audio[: 5 * STEP + 4000], state=state)
    first, second = recognizer.decode([request, request])
    assert first.words == second.words and first.language == second.language
