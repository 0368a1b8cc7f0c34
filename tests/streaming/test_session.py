"""The sans-I/O session engine: events, invariants, bad input, limits."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from streaming.config import SessionConfig
from streaming.errors import CloseCode, ModelError
from streaming.invariants import check_events
from streaming.recognizer import Hypothesis, Word
from streaming.session import Limits, Session, State
from tests.streaming.fakes import ScriptedRecognizer, frames, s16, silence, tone

SCRIPT = [(" Go", 500), (" forward", 1000), (" ten", 1500), (" meters.", 2000)]
FRAME = 640  # 20 ms of s16 at 16 kHz


class Driver:
    """Feeds a session and answers its decode requests at once, keeping the event log."""

    def __init__(self, session: Session, recognizer: ScriptedRecognizer, answer: bool = True):
        self.session, self.recognizer, self.answer = session, recognizer, answer
        self.log: list[dict] = []
        self._collect()

    def _collect(self):
        for event in self.session.events_to_send():
            self.log.append(event.to_wire(self.session.session_id, len(self.log) + 1))

    def pump(self):
        while self.answer and (request := self.session.next_request()) is not None:
            self.session.complete(self.recognizer.decode([request])[0])
        self._collect()

    def audio(self, samples: np.ndarray, frame: int = FRAME):
        for chunk in frames(s16(samples), frame):
            self.session.receive_audio(chunk)
            self.pump()

    def send(self, message):
        self.session.receive_text(message if isinstance(message, str) else json.dumps(message))
        self.pump()

    def of(self, kind):
        return [e for e in self.log if e["type"] == kind]


def make(script=SCRIPT, **kwargs):
    recognizer = ScriptedRecognizer(script)
    return Driver(Session("s1", recognizer.info, **kwargs), recognizer)


def speech(seconds=2.5):
    return np.concatenate([silence(0.5), tone(seconds), silence(1.2)])


def test_one_utterance_gives_the_full_event_sequence():
    """Speech then silence: created, started, partials, stopped, final; all invariants hold."""
    d = make()
    d.audio(speech())
    d.send({"type": "input.end"})
    kinds = [e["type"] for e in d.log if e["type"] not in ("audio.ack",)]
    assert kinds[0] == "session.created"
    assert kinds[1] == "speech.started"
    assert "transcript.partial" in kinds
    assert kinds[-3:] == ["speech.stopped", "transcript.final", "session.closed"]
    final = d.of("transcript.final")[0]
    assert final["text"] == "Go forward ten meters."
    assert final["reason"] == "endpoint"
    assert check_events(d.log, input_ended=True) == []


def test_committed_text_grows_and_is_a_prefix_of_the_final():
    """Partials commit words progressively and never revise them."""
    d = make()
    d.audio(speech())
    committed = [e["committed"] for e in d.of("transcript.partial")]
    assert committed[-1].startswith("Go forward")
    assert all(b.startswith(a) for a, b in itertools.pairwise(committed))
    assert d.of("transcript.final")[0]["text"].startswith(committed[-1])


def test_committed_words_are_sent_back_as_the_forced_prefix():
    """Every decode request after a commit carries the committed words."""
    d = make()
    d.audio(speech())
    prefixes = [len(r.committed) for r in d.recognizer.requests]
    assert prefixes == sorted(prefixes) and prefixes[-1] >= 2


def test_input_end_mid_speech_yields_a_final_with_reason_end():
    """input.end while speaking finalizes the open segment (reason end), then closes."""
    d = make()
    d.audio(np.concatenate([silence(0.5), tone(2.5)]))
    d.send({"type": "input.end"})
    final = d.of("transcript.final")
    assert len(final) == 1 and final[0]["reason"] == "end"
    assert d.log[-1]["type"] == "session.closed" and d.log[-1]["segments"] == 1
    assert check_events(d.log, input_ended=True) == []


def test_finalize_ends_the_segment_and_keeps_the_session_open():
    """input.finalize emits the final now; later speech opens a new segment."""
    d = make()
    d.audio(np.concatenate([silence(0.5), tone(2.5)]))
    d.send({"type": "input.finalize"})
    assert d.of("transcript.final")[0]["reason"] == "finalize"
    d.audio(speech())
    d.send({"type": "input.end"})
    finals = d.of("transcript.final")
    assert [f["segment_id"] for f in finals] == [0, 1]
    assert check_events(d.log, input_ended=True) == []


def test_finalize_with_no_speech_warns():
    """input.finalize during silence answers with a nothing_to_finalize warning."""
    d = make()
    d.audio(silence(1))
    d.send({"type": "input.finalize"})
    assert d.of("warning")[-1]["code"] == "nothing_to_finalize"


def test_silence_never_reaches_the_recognizer():
    """A session of silence makes no decode request and closes with zero segments."""
    d = make()
    d.audio(silence(3))
    d.send({"type": "input.end"})
    assert d.recognizer.requests == []
    assert d.log[-1] == {**d.log[-1], "type": "session.closed", "segments": 0}


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "invalid_json"),
        ("UklGRiQAAABXQVZF", "invalid_json"),  # base64 audio in a text frame
        ('["session.start"]', "invalid_message"),
        ('{"type": 7}', "invalid_message"),
        ('{"type": "audio.append"}', "unknown_message_type"),
        ('{"type": "session.update", "audio": {"sample_rate": 8000}}', "invalid_config"),
        ('{"type": "session.update", "language": "de"}', "unsupported_language"),
    ],
)
def test_bad_messages_get_a_non_fatal_error_and_the_session_goes_on(message, code):
    """Each malformed or unknown message is answered by its error; speech still transcribes."""
    d = make()
    d.send(message)
    error = d.of("error")[-1]
    assert error["code"] == code and error["fatal"] is False
    d.audio(speech())
    d.send({"type": "input.end"})
    assert d.of("transcript.final")[0]["text"] == "Go forward ten meters."
    assert check_events(d.log, input_ended=True) == []


def test_odd_byte_count_frame_is_rejected_and_later_audio_still_counts():
    """A 3-byte s16 frame gets invalid_audio_frame; the stream continues aligned."""
    d = make()
    d.session.receive_audio(b"\x00\x01\x02")
    d.pump()
    assert d.of("error")[-1]["code"] == "invalid_audio_frame"
    d.audio(speech())
    d.send({"type": "input.end"})
    assert d.of("transcript.final")[0]["text"] == "Go forward ten meters."


def test_audio_after_input_end_is_refused_while_draining():
    """Audio after input.end, while finals are still pending, gets audio_after_end."""
    d = make()
    d.answer = False  # the final is still being decoded
    d.audio(np.concatenate([silence(0.5), tone(1.0)]))
    d.send({"type": "input.end"})
    d.session.receive_audio(s16(tone(0.1)))
    d.pump()
    assert d.of("error")[-1]["code"] == "audio_after_end"
    assert d.session.state is State.DRAINING


def test_nothing_follows_session_closed():
    """Once session.closed is out, more input produces no events at all."""
    d = make()
    d.audio(np.concatenate([silence(0.5), tone(1.0)]))
    d.send({"type": "input.end"})
    count = len(d.log)
    d.session.receive_audio(s16(tone(0.1)))
    d.send("{broken")
    assert len(d.log) == count and d.log[-1]["type"] == "session.closed"


def test_session_start_after_audio_is_refused():
    """Changing the format after audio started is rejected without ending the session."""
    d = make()
    d.audio(silence(0.2))
    d.send({"type": "session.start", "audio": {"sample_rate": 8000}})
    error = d.of("error")[-1]
    assert error["code"] == "session_already_started" and not error["fatal"]
    assert d.session.state is State.OPEN


def test_unsupported_sample_rate_is_fatal_with_close_code_4001():
    """session.start with 96 kHz fails the session and names the rate."""
    d = make()
    d.send({"type": "session.start", "audio": {"sample_rate": 96000}})
    error = d.of("error")[-1]
    assert (
        error["fatal"]
        and error["code"] == "unsupported_sample_rate"
        and "96000" in error["message"]
    )
    assert d.session.finished and d.session.fatal.close_code == CloseCode.BAD_CONFIG


def test_bad_query_parameter_fails_the_session_at_once():
    """?sample_rate=2000 produces session.created then a fatal error."""
    recognizer = ScriptedRecognizer(SCRIPT)
    session = Session("q", recognizer.info, query={"sample_rate": "2000"})
    kinds = [(e.type, getattr(e, "code", None)) for e in session.events_to_send()]
    assert kinds == [("session.created", None), ("error", "unsupported_sample_rate")]


def test_query_parameters_set_the_format():
    """?sample_rate=8000 makes 8 kHz audio transcribe."""
    recognizer = ScriptedRecognizer(SCRIPT)
    d = Driver(Session("q", recognizer.info, query={"sample_rate": "8000"}), recognizer)
    x = speech()
    d.audio(x[::2], frame=320)  # crude 8 kHz version of the 16 kHz signal
    d.send({"type": "input.end"})
    assert d.of("transcript.final")[0]["text"] == "Go forward ten meters."


def test_a_48k_stereo_float_stream_is_downmixed_and_resampled():
    """pcm_f32le at 48 kHz stereo is accepted and transcribed."""
    d = make()
    d.send(
        {
            "type": "session.start",
            "audio": {"encoding": "pcm_f32le", "sample_rate": 48000, "channels": 2},
        }
    )
    mono16 = speech()
    mono48 = np.interp(np.arange(len(mono16) * 3) / 3, np.arange(len(mono16)), mono16)
    stereo = np.stack([mono48, mono48], axis=1).astype("<f4").tobytes()
    for chunk in frames(stereo, 48 * 20 * 8):
        d.session.receive_audio(chunk)
        d.pump()
    d.send({"type": "input.end"})
    assert d.of("transcript.final")[0]["text"] == "Go forward ten meters."


def test_segments_never_interleave_while_a_final_is_pending():
    """Speech that starts before the previous final is decoded is held back until it is out."""
    d = make()
    d.answer = False  # the model is busy: no request is answered for now
    d.audio(np.concatenate([speech(), tone(2.0)]))
    kinds = [e["type"] for e in d.log]
    assert kinds.count("speech.started") == 1  # segment 1 has started but is held
    d.answer = True
    if d.session._in_flight is not None:  # answer the request that was issued meanwhile
        d.session.complete(d.recognizer.decode([d.session._in_flight[1]])[0])
    d.pump()
    d.send({"type": "input.end"})
    assert check_events(d.log, input_ended=True) == []
    assert [e["segment_id"] for e in d.of("speech.started")] == [0, 1]


def test_a_recognizer_that_cannot_keep_up_warns_then_fails_the_session():
    """With no answers, held audio grows: a lagging warning first, then a fatal overloaded."""
    d = make(limits=Limits(max_buffer_ms=8_000, lag_warning_ms=3_000))
    d.answer = False
    d.audio(np.concatenate([silence(0.5), tone(10.0)]))
    codes = [(e["type"], e["code"]) for e in d.log if e["type"] in ("warning", "error")]
    assert codes[0] == ("warning", "lagging")
    assert ("error", "overloaded") in codes
    assert d.session.finished and d.session.fatal.close_code == CloseCode.OVERLOADED


def test_the_session_length_limit_ends_input_with_finals():
    """At max_session_s the open segment is finalized and the session closes (max_session)."""
    d = make(limits=Limits(max_session_s=2.0))
    d.audio(np.concatenate([silence(0.5), tone(3.0)]))  # frames past the limit change nothing
    assert d.of("warning")[-1]["code"] == "session_limit"
    assert d.log[-1]["type"] == "session.closed" and d.log[-1]["reason"] == "max_session"
    assert check_events(d.log, input_ended=True) == []


def test_partials_off_means_finals_only_and_one_decode_per_segment():
    """partials:false sends no partial events and decodes each segment once."""
    d = make(config=SessionConfig(partials=False))
    d.audio(speech())
    d.send({"type": "input.end"})
    assert d.of("transcript.partial") == []
    assert len(d.recognizer.requests) == 1 and d.recognizer.requests[0].final


def test_word_timestamps_are_absolute_and_inside_the_segment():
    """word_timestamps:true attaches words timed in stream milliseconds."""
    d = make(config=SessionConfig(word_timestamps=True))
    d.audio(speech())
    final = d.of("transcript.final")[0]
    assert [w["word"] for w in final["words"]] == ["Go", "forward", "ten", "meters."]
    assert final["words"][0]["start_ms"] >= final["start_ms"]
    assert final["words"][-1]["end_ms"] == final["start_ms"] + 2000


def test_a_recognizer_that_rewrites_committed_words_is_a_fatal_model_error():
    """The session refuses hypotheses that change its committed prefix."""
    d = make()

    class Rogue(ScriptedRecognizer):
        def decode(self, requests):
            answers = super().decode(requests)
            return [
                Hypothesis(words=(Word(" Stop", 0, 100), *a.words[1:])) if r.committed else a
                for r, a in zip(requests, answers, strict=True)
            ]

    d.recognizer = Rogue(SCRIPT)
    d.audio(speech())
    assert d.of("error")[-1]["code"] == "model_error"
    assert d.session.finished


def test_session_update_reaches_the_next_decode():
    """A context set mid-stream is in the next decode request."""
    d = make()
    d.send({"type": "session.update", "context": "cards and meters"})
    assert d.of("session.updated")[-1]["config"]["context"] == "cards and meters"
    d.audio(speech())
    assert d.recognizer.requests[-1].context == "cards and meters"


def test_recognizer_failure_is_reported_as_a_fatal_error():
    """fail() on the request in flight ends the session with model_error."""
    d = make()
    d.answer = False
    d.audio(np.concatenate([silence(0.5), tone(1.5)]))
    assert d.session.next_request() is not None  # a partial decode is due; the model fails it
    d.session.fail(ModelError("boom"))
    d.pump()
    assert d.of("error")[-1]["code"] == "model_error" and d.session.finished


def test_a_length_cut_never_leaves_committed_words_outside_their_segment():
    """A max-length cut at a quiet point before committed words moves to their end.

    Committed words cannot move to the next segment, so a cut before them would put their audio
    in both segments (transcribed twice). The moved cut ends the segment exactly at its committed
    text, which is then its final without another decode; the next segment starts there.
    """
    script = [(f" w{i}", 300 * i) for i in range(1, 40)]
    dip = np.concatenate([tone(2.5), 0.02 * tone(0.09), tone(8.0)])  # the quietest point: 2.5 s
    d = make(script, config=SessionConfig(word_timestamps=True))
    d.send({"type": "session.start", "word_timestamps": True, "endpointing": {"max_segment_s": 4}})
    d.audio(np.concatenate([silence(0.3), dip, silence(1.2)]))
    d.send({"type": "input.end"})
    assert check_events(d.log, input_ended=True) == []  # includes: words inside their segment
    finals = d.of("transcript.final")
    first = finals[0]
    assert first["reason"] == "max_length" and first["words"]
    assert first["end_ms"] == first["words"][-1]["end_ms"]  # cut at the committed end, not 2.5 s
    assert first["end_ms"] - first["start_ms"] > 2_000
    assert finals[1]["start_ms"] == first["end_ms"]
    decodes_of_first = [r for r in d.recognizer.requests if r.final and r.committed]
    assert all(len(r.audio) != (first["end_ms"] - first["start_ms"]) * 16 for r in decodes_of_first)


def test_partials_never_show_punctuation_alone():
    """'. . .' opening a segment is dropped; a lone '.' after a word is not shown as tentative."""
    script = [(" . . .", 400), (" Go", 900), (" on", 1400), (".", 1500)]
    d = make(script)
    d.audio(speech())
    d.send({"type": "input.end"})
    partials = d.of("transcript.partial")
    assert partials
    for partial in partials:
        shown = partial["committed"] + partial["tentative"]
        assert shown.strip() and shown.lstrip()[0].isalnum(), partial
        assert not partial["tentative"] or any(c.isalnum() for c in partial["tentative"])
    assert d.of("transcript.final")[0]["text"] == "Go on."


def test_a_partial_answered_after_its_segment_ended_commits_nothing():
    """A partial decode still running when the segment ends may have heard audio past its end.

    Its words would otherwise be committed (they agree with the previous partial), though the
    final, which decodes exactly the segment's audio, comes next anyway.
    """
    recognizer = ScriptedRecognizer(SCRIPT)
    d = Driver(Session("s1", recognizer.info), recognizer, answer=False)
    d.audio(np.concatenate([silence(0.5), tone(1.4)]))
    first = d.session.next_request()
    assert first is not None and not first.final
    d.session.complete(recognizer.decode([first])[0])
    d.audio(tone(1.0))
    second = d.session.next_request()
    assert second is not None and not second.final
    d.audio(silence(1.2))  # the endpoint arrives while the second partial is "running"
    d.session.complete(recognizer.decode([second])[0])  # agrees with the first
    d.pump()
    assert not [p for p in d.of("transcript.partial") if p["committed"]]
    final_request = d.session.next_request()
    assert final_request is not None and final_request.final and final_request.committed == ()


def test_a_final_does_not_wait_for_the_partial_of_its_ended_segment():
    """The segment ends while its partial decode is still out: the final is due at once, and
    the partial is superseded (its answer could not change anything any more)."""
    recognizer = ScriptedRecognizer(SCRIPT)
    d = Driver(Session("s1", recognizer.info), recognizer, answer=False)
    d.audio(np.concatenate([silence(0.5), tone(2.4)]))
    partial = d.session.next_request()
    assert partial is not None and not partial.final
    assert d.session.next_request() is None  # one at a time while the segment goes on
    d.audio(silence(1.2))  # the endpoint arrives while the partial is out
    final = d.session.next_request()
    assert final is not None and final.final
    assert d.session.next_request() is None  # nothing supersedes a final
    d.session.complete(recognizer.decode([final])[0])
    d.pump()
    assert [f["text"] for f in d.of("transcript.final")] == ["Go forward ten meters."]
    assert check_events(d.log) == []


def test_partials_come_at_the_step_the_caller_asks_for():
    recognizer = ScriptedRecognizer(SCRIPT)
    d = Driver(Session("s1", recognizer.info), recognizer, answer=False)
    d.audio(np.concatenate([silence(0.5), tone(0.45)]))  # with the pre-roll, under 1 s so far
    assert d.session.next_request() is None  # Limits.step_ms: 1 s
    early = d.session.next_request(step_ms=500)
    assert early is not None and not early.final and 500 <= early.duration_ms < 1000
    d.session.complete(recognizer.decode([early])[0])
    d.audio(tone(1.2))
    assert d.session.next_request(step_ms=2000) is None  # a loaded model: not yet
    assert d.session.next_request() is not None


def test_the_early_step_cannot_exceed_the_step():
    with pytest.raises(ValueError, match="early_step_ms"):
        Limits(step_ms=500, early_step_ms=1000)


def heard_driver(script=SCRIPT, *, partial_is_final=True):
    """A session over a recognizer whose partial decodes are its final decodes (Whisper's
    `ModelInfo.partial_is_final`); requests are answered by hand."""
    recognizer = ScriptedRecognizer(script)
    recognizer.info = dataclasses.replace(recognizer.info, partial_is_final=partial_is_final)
    return Driver(Session("s1", recognizer.info), recognizer, answer=False)


def answer(d, step_ms=None):
    request = d.session.next_request(step_ms=step_ms)
    assert request is not None
    d.session.complete(d.recognizer.decode([request])[0])
    d.pump()
    return request


@pytest.mark.parametrize("partial_is_final", [True, False])
def test_a_partial_that_heard_the_whole_segment_is_its_final(partial_is_final):
    """The endpointer ends a segment 0.3 s after its last voiced frame, once 0.6 s are silent.
    A partial decoded in between heard the whole segment and only unvoiced audio after it: the
    final decode would give its words again, so they are the final at once, without a decode.
    A recognizer whose decode depends on `final` (Qwen) still gets its final decode."""
    d = heard_driver(partial_is_final=partial_is_final)
    d.audio(np.concatenate([silence(0.5), tone(2.4)]))
    answer(d, step_ms=500)
    d.audio(silence(0.45))  # past the segment's end (last voiced frame + 0.3 s), not yet ended
    heard = answer(d, step_ms=200)
    assert not d.of("transcript.final")
    d.audio(silence(1.0))  # the endpoint
    finals = d.of("transcript.final")
    if partial_is_final:
        assert [f["text"] for f in finals] == ["Go forward ten meters."]
        assert not [r for r in d.recognizer.requests if r.final]
        assert finals[0]["end_ms"] < 500 + heard.duration_ms  # the partial heard past the end
    else:
        assert not finals
        answer(d)
        assert d.recognizer.requests[-1].final
        assert [f["text"] for f in d.of("transcript.final")] == ["Go forward ten meters."]
    assert check_events(d.log) == []


def test_a_partial_in_flight_that_heard_the_whole_segment_becomes_its_final():
    """Instead of superseding it with a final decode of the same audio, its answer is awaited."""
    d = heard_driver()
    d.audio(np.concatenate([silence(0.5), tone(2.4), silence(0.45)]))
    partial = d.session.next_request(step_ms=200)
    assert partial is not None and not partial.final
    assert not d.session.final_in_flight  # the segment has not ended yet
    d.audio(silence(1.0))  # the endpoint arrives while the partial is out
    assert d.session.next_request() is None  # no final decode: the partial is awaited
    assert d.session.final_in_flight  # ... and its answer is the final (the worker promotes it)
    d.session.complete(d.recognizer.decode([partial])[0])
    d.pump()
    assert [f["text"] for f in d.of("transcript.final")] == ["Go forward ten meters."]
    assert not [r for r in d.recognizer.requests if r.final]
    assert check_events(d.log) == []


def test_a_partial_past_a_length_cut_is_not_the_final():
    """Past a max-length cut the audio is the next segment's speech: a final decode is made."""
    d = heard_driver([(" late", 5200), (" words.", 5600)])
    d.send({"type": "session.start", "endpointing": {"max_segment_s": 4}})
    for chunk in frames(s16(np.concatenate([silence(0.3), tone(4.6)])), FRAME):
        d.session.receive_audio(chunk)
        request = d.session.next_request(step_ms=200)
        if request is not None:
            d.session.complete(d.recognizer.decode([request])[0])
    d.pump()
    first = d.of("transcript.final")[0]
    assert first["reason"] == "max_length"
    finals = [r for r in d.recognizer.requests if r.final]
    assert finals and finals[0].duration_ms == first["end_ms"] - first["start_ms"], first
    length = first["end_ms"] - first["start_ms"]
    before = next(i for i, r in enumerate(d.recognizer.requests) if r is finals[0])
    heard = [r for r in d.recognizer.requests[:before] if r.duration_ms > length]
    assert heard  # a partial did hear past the cut


def test_a_partial_is_not_the_final_once_the_context_changed():
    """A context changed since the partial would change the decode: a final decode is made."""
    d = heard_driver()
    d.audio(np.concatenate([silence(0.5), tone(2.4)]))
    answer(d, step_ms=500)
    d.audio(silence(0.45))
    answer(d, step_ms=200)
    d.send({"type": "session.update", "context": "cards and meters"})
    d.audio(silence(1.0))
    assert not d.of("transcript.final")
    final = answer(d)
    assert final.final and final.context == "cards and meters"
    assert [f["text"] for f in d.of("transcript.final")] == ["Go forward ten meters."]


def test_a_final_from_a_partial_keeps_its_words_inside_the_segment():
    """A word the partial timed into the silence after the segment's end (an alignment stretch)
    is kept, its times clamped to the segment."""
    recognizer = ScriptedRecognizer([(" Go", 500), (" on.", 3200)])
    recognizer.info = dataclasses.replace(recognizer.info, partial_is_final=True)
    d = Driver(Session("s1", recognizer.info, config=SessionConfig(word_timestamps=True)),
               recognizer, answer=False)  # fmt: skip
    d.audio(np.concatenate([silence(0.5), tone(2.4)]))
    answer(d, step_ms=500)
    d.audio(silence(0.5))
    answer(d, step_ms=200)
    d.audio(silence(1.0))
    (final,) = d.of("transcript.final")
    assert final["text"] == "Go on."
    assert final["words"][-1]["end_ms"] == final["end_ms"] < final["start_ms"] + 3200
    assert check_events(d.log) == []


@pytest.mark.parametrize("from_partial", [False, True])
def test_final_words_carry_the_models_probabilities(from_partial):
    """A word's probability reaches the final's `words` as the recognizer gave it, whether the
    final came from a final decode or from a partial that heard the whole segment."""
    recognizer = ScriptedRecognizer(SCRIPT, probability=0.75)
    recognizer.info = dataclasses.replace(recognizer.info, partial_is_final=from_partial)
    session = Session("s1", recognizer.info, config=SessionConfig(word_timestamps=True))
    d = Driver(session, recognizer)
    d.audio(speech())
    d.send({"type": "input.end"})
    assert bool([r for r in recognizer.requests if r.final]) is not from_partial
    (final,) = d.of("transcript.final")
    assert [w["probability"] for w in final["words"]] == [0.75] * 4
    unscored = make(config=SessionConfig(word_timestamps=True))
    unscored.audio(speech())
    assert all("probability" not in w for w in unscored.of("transcript.final")[0]["words"])


def test_a_pause_asks_for_a_partial_that_can_become_the_final():
    """Once a pause reaches the point where the segment would end, a partial is due off its
    step; if the pause becomes the endpoint, that partial is the final, ready when the endpoint
    is decided. While the model is behind (a longer step) no extra partial is asked for."""
    d = heard_driver()
    d.audio(np.concatenate([silence(0.5), tone(2.4)]))
    answer(d)  # the regular 1 s step
    d.audio(silence(0.25))  # (webrtcvad hears the tone until 3.0 s: the end would be 3.3 s)
    assert d.session.next_request() is None  # not yet at the segment's possible end
    d.audio(silence(0.2))
    assert d.session.next_request(step_ms=2000) is None  # a loaded model: no extra partial
    paused = answer(d)  # due now, though not a step's worth of audio since the last partial
    assert not paused.final
    d.audio(silence(1.0))  # the pause becomes the endpoint
    assert [f["text"] for f in d.of("transcript.final")] == ["Go forward ten meters."]
    assert not [r for r in d.recognizer.requests if r.final]
    assert check_events(d.log) == []


def test_a_finalize_in_a_pause_gets_the_pause_partial_as_its_final():
    """A client that finalizes after its own short silence (push-to-talk, a client-side VAD)
    gets the segment an endpoint would have given: it ends where the pause reached its end, so
    the pause's partial, which heard all of it, is the final, with no decode after the
    finalize. A finalize before the pause reaches that point still ends at the audio's end and
    decodes all of it."""
    d = heard_driver()
    d.audio(np.concatenate([silence(0.5), tone(2.4)]))
    answer(d)
    d.audio(silence(0.45))  # webrtcvad hears the tone until 3.0 s: the pause ends at 3.3 s
    paused = answer(d)
    d.audio(silence(0.15))  # more of the pause, short of the 0.6 s that make an endpoint
    assert not d.of("transcript.final")
    d.send({"type": "input.finalize"})
    (final,) = d.of("transcript.final")
    assert final["reason"] == "finalize" and final["text"] == "Go forward ten meters."
    assert not [r for r in d.recognizer.requests if r.final]
    assert final["end_ms"] == 3300 <= final["start_ms"] + paused.duration_ms

    early = heard_driver()
    early.audio(np.concatenate([silence(0.5), tone(2.4)]))
    answer(early)
    early.audio(silence(0.1))
    early.send({"type": "input.finalize"})
    assert not early.of("transcript.final")
    last = answer(early)
    (final,) = early.of("transcript.final")
    assert last.final and final["end_ms"] == final["start_ms"] + last.duration_ms == 3000
    assert check_events(d.log) == [] and check_events(early.log) == []


def test_speech_after_a_pause_goes_on_in_the_same_segment():
    """The pause's partial was an ordinary partial when speech resumes within silence_ms."""
    d = heard_driver([(" Go", 500), (" forward", 1000), (" ten", 2900), (" meters.", 3300)])
    d.audio(np.concatenate([silence(0.5), tone(1.4)]))
    answer(d)
    d.audio(silence(0.5))
    answer(d)  # the pause's partial
    assert not d.of("transcript.final")
    d.answer = True  # from here on every request is answered at once
    d.audio(np.concatenate([tone(1.2), silence(1.2)]))
    d.send({"type": "input.end"})
    assert [f["text"] for f in d.of("transcript.final")] == ["Go forward ten meters."]
    assert check_events(d.log, input_ended=True) == []
