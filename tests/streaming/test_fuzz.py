"""Property-based fuzzing of the native protocol, sans-I/O: whatever a client sends, in any order.

Hypothesis drives one `Session` with random sequences of control messages (known types with
random fields, arbitrary JSON, text that is not JSON, huge strings), audio frames of every size
around the limits (empty, odd byte counts, random bytes, the frame limit plus or minus a
sample), real-looking speech and silence, and decodes answered at random moments. Invariants:
nothing raises out of the session; every text that is not JSON gets `invalid_json`; every error
names a documented code; the event log keeps the protocol's invariants; a session that was not
failed by a fatal error delivers the final of every segment it started once its input ends;
and no decode is left to run afterwards.

`FUZZ_EXAMPLES` sets the number of sequences (default 200, derandomized so CI is repeatable).
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.errors import AudioFormatError
from streaming.invariants import check_events
from streaming.mqtt.audio import HEADER, HEADER_BYTES, VERSION, AudioPacket
from streaming.session import Session
from tests.streaming.fakes import ScriptedRecognizer, silence, tone
from tests.streaming.test_session import SCRIPT, Driver

FRAME_LIMIT_BYTES = 32_000  # Limits.max_frame_ms (1 s) of 16 kHz s16 mono
DOCUMENTED_ERRORS = {
    "invalid_json", "invalid_message", "unknown_message_type", "invalid_audio_frame",
    "frame_too_large", "audio_after_end", "session_ending", "session_already_started",
    "invalid_config", "unsupported_language", "unsupported_encoding", "unsupported_sample_rate",
    "unsupported_channels", "overloaded", "model_error",
}  # fmt: skip
KNOWN_TYPES = ["session.start", "session.update", "input.finalize", "input.end", "keepalive"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
setting_values = st.one_of(
    json_values,
    st.sampled_from([16000, 8000, 48000, 0, -1, "en", "xx", "pcm_s16le", "pcm_f32le", 1, 2, 9]),
)
settings_fields = st.sampled_from(
    ["sample_rate", "encoding", "channels", "language", "context", "hotwords", "partials",
     "word_timestamps", "endpointing", "stability", "bogus"]
)  # fmt: skip
control = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from([*KNOWN_TYPES, "bogus", ""]),
    st.dictionaries(settings_fields, setting_values, max_size=3),
)
actions = st.one_of(
    st.tuples(st.just("speech"), st.floats(0.2, 2.0)),
    st.tuples(st.just("silence"), st.floats(0.1, 1.5)),
    st.tuples(st.just("bytes"), st.binary(max_size=2_000)),
    st.tuples(st.just("frame"), st.sampled_from([0, 1, 3, FRAME_LIMIT_BYTES - 2,
                                                 FRAME_LIMIT_BYTES, FRAME_LIMIT_BYTES + 2])),
    st.tuples(st.just("control"), control),
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("text"), st.text(max_size=60)),
    st.tuples(st.just("huge"), st.integers(50_000, 300_000)),
    st.tuples(st.just("answer"), st.none()),
)  # fmt: skip


class Fuzzed(Driver):
    """A session driven by the fuzzer: its decodes are answered only when the fuzzer says."""

    def __init__(self) -> None:
        recognizer = ScriptedRecognizer(SCRIPT)
        super().__init__(Session("fuzz", recognizer.info), recognizer, answer=False)

    def decode_now(self) -> None:
        self.answer = True
        self.pump()
        self.answer = False

    def apply(self, kind: str, value: Any) -> None:
        if kind == "speech":
            self.audio(tone(value), frame=1280)  # 40 ms frames
        elif kind == "silence":
            self.audio(silence(value), frame=1280)
        elif kind == "bytes":
            self.session.receive_audio(value)
        elif kind == "frame":
            self.session.receive_audio(b"\x01\x00" * (value // 2) + b"\x00" * (value % 2))
        elif kind in ("control", "json"):
            self.session.receive_text(json.dumps(value))
        elif kind == "text":
            self.session.receive_text(value)
        elif kind == "huge":
            self.session.receive_text(
                json.dumps({"type": "session.update", "context": "x" * value})
            )
        elif kind == "answer":
            self.decode_now()


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(actions, max_size=25))
def test_no_input_sequence_breaks_a_session(sequence):
    fuzzed = Fuzzed()
    for kind, value in sequence:
        was_finished, seen = fuzzed.session.finished, len(fuzzed.log)
        fuzzed.apply(kind, value)
        fuzzed.pump()
        emitted = fuzzed.log[seen:]
        if kind == "text" and not is_json(value) and not was_finished:
            assert any(e.get("code") == "invalid_json" for e in emitted), (value, emitted)
    fuzzed.session.receive_text(json.dumps({"type": "input.end"}))
    fuzzed.decode_now()
    errors = [e for e in fuzzed.log if e["type"] == "error"]
    for error in errors:
        assert error["code"] in DOCUMENTED_ERRORS and error["message"], error
    failed = any(e["fatal"] for e in errors)
    assert check_events(fuzzed.log, input_ended=not failed) == [], fuzzed.log
    assert fuzzed.session.finished
    assert fuzzed.session.next_request() is None


def test_the_fuzzer_reaches_speech_and_errors_alike():
    """The strategies are not vacuous: a plain sequence gives finals and documented errors."""
    fuzzed = Fuzzed()
    for kind, value in [
        ("speech", 2.0),
        ("silence", 1.5),
        ("text", "{nope"),
        ("frame", 3),
        ("frame", FRAME_LIMIT_BYTES + 2),
        ("control", {"type": "bogus"}),
    ]:
        fuzzed.apply(kind, value)  # fmt: skip
        fuzzed.decode_now()
    fuzzed.session.receive_text(json.dumps({"type": "input.end"}))
    fuzzed.decode_now()
    codes = [e["code"] for e in fuzzed.log if e["type"] == "error"]
    assert codes == ["invalid_json", "invalid_audio_frame", "frame_too_large",
                     "unknown_message_type"], codes  # fmt: skip
    finals = [e["text"] for e in fuzzed.log if e["type"] == "transcript.final"]
    assert finals == ["Go forward ten meters."]
    assert check_events(fuzzed.log, input_ended=True) == []


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")) * 5, derandomize=True,
          database=None, deadline=None)  # fmt: skip
@given(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda header, audio: header + audio, st.binary(min_size=HEADER_BYTES,
              max_size=HEADER_BYTES), st.binary(max_size=40)),
    st.builds(
        lambda codec, rate, seq, position, audio: HEADER.pack(VERSION, codec, rate, seq, position)
        + audio,
        st.integers(0, 255), st.sampled_from([8000, 16000, 48000, 0, 1, 2**16 - 1]),
        st.integers(0, 2**32 - 1), st.integers(0, 2**63 - 1), st.binary(max_size=40),
    ),
))  # fmt: skip
def test_an_mqtt_audio_header_parses_or_names_what_is_wrong(payload):
    """The call-center taps' binary header: any payload is a packet or a documented error."""
    try:
        packet = AudioPacket.unpack(payload)
    except AudioFormatError as error:
        assert error.code in {
            "invalid_audio_header",
            "unsupported_encoding",
            "unsupported_sample_rate",
            "invalid_audio_frame",
        }, error.code
        assert "dropped" in error.message
    else:
        assert packet.pack() == payload  # what parses is exactly what was sent
        assert packet.samples > 0
