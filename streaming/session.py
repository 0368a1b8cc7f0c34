"""The session engine: one audio stream's protocol state machine, without any I/O.

A transport feeds it what the client sent (`receive_text`, `receive_audio`), runs the decode
requests it asks for (`next_request` -> recognizer -> `complete`), and sends the events it emits
(`events_to_send`). It never touches a socket, a thread or a clock, so it is tested directly.

Guarantees (protocol v1 invariants):
- per segment: one `speech.started`, then partials whose `committed` only grows, then one
  `speech.stopped` immediately followed by one `transcript.final` whose text starts with the
  last `committed`;
- segments never interleave: events of a segment that starts while an earlier one still waits
  for its final are held back until that final is out;
- `input.end` (or a server-side close) yields the finals of all audio received, then
  `session.closed`;
- bad input is answered with an `error` naming what was wrong; nothing is dropped silently.

Bounded memory: the session holds only audio that an unfinished segment still needs, plus a
VAD look-back. If that exceeds `Limits.max_buffer_ms` (the recognizer cannot keep up), the
session says so with a `warning` first and a fatal `error` after (`overloaded`).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streaming import events as ev
from streaming.audio import SAMPLE_RATE, AudioConverter
from streaming.config import (
    SessionConfig,
    config_from_query,
    parse_session_start,
    parse_session_update,
)
from streaming.errors import (
    ConfigError,
    ModelError,
    OverloadError,
    ProtocolError,
    StreamingError,
)
from streaming.recognizer import DecodeRequest, Hypothesis, ModelInfo, Word, join_words
from streaming.stabilizer import Stabilizer
from streaming.vad import FRAME, Endpointer, SpeechEnd, SpeechStart, VadConfig

PREVIOUS_TEXT_CHARS = 200  # how much earlier text is carried into the next segment's prompt
ACK_INTERVAL_MS = 250  # audio.ack cadence, in received audio


@dataclass(frozen=True)
class Limits:
    """Per-session bounds, chosen by the server operator and announced in session.created."""

    # longest session, seconds of audio; at the limit the session ends like input.end
    max_session_s: float = 4 * 3600.0
    # longest accepted binary frame, ms
    max_frame_ms: int = 1_000
    # most audio held for unfinished segments before the session fails as overloaded, ms
    max_buffer_ms: int = 90_000
    # backlog that triggers a `lagging` warning, ms
    lag_warning_ms: int = 5_000
    # new segment audio between two partial decodes, ms (the runner adapts it to the model's
    # load: `ModelWorker.partial_step_ms`)
    step_ms: int = 1_000
    # ... or this much, when the model has a lane to spare: an idle machine shows words
    # sooner. Replayed at fixed steps, 0.5 s, 1 s and 2 s steps give the same WER within noise
    # (BENCHMARKS.md, "Model lanes"), so the step is a matter of latency and load only.
    early_step_ms: int = 500

    def __post_init__(self) -> None:
        if not 0 < self.early_step_ms <= self.step_ms:
            raise ValueError(
                f"early_step_ms must be between 1 and step_ms ({self.step_ms}), "
                f"got {self.early_step_ms!r}"
            )

    def announce(self) -> dict[str, Any]:
        """The subset clients see in session.created."""
        return {
            "max_session_s": self.max_session_s,
            "max_frame_ms": self.max_frame_ms,
            "max_buffer_ms": self.max_buffer_ms,
        }


class State(enum.Enum):
    OPEN = "open"  # taking audio
    DRAINING = "draining"  # input ended; finishing the last finals
    CLOSED = "closed"  # session.closed emitted
    FAILED = "failed"  # a fatal error was emitted


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


def _samples(ms: float) -> int:
    return int(ms * SAMPLE_RATE // 1000)


def _has_word_character(text: str) -> bool:
    return any(c.isalnum() for c in text)


def _spoken(words: Sequence[Word], *, first: bool) -> list[Word]:
    """A hypothesis' new words without empty ones, and without punctuation opening a segment.

    Whisper answers near-silence with ". . ." and recognizers may return whitespace-only pieces;
    neither is speech. Punctuation after a word is kept (it belongs to that word's sentence).
    """
    spoken = [w for w in words if w.text.strip()]
    if first:
        while spoken and not _has_word_character(spoken[0].text):
            spoken.pop(0)
    return spoken


class _Timeline:
    """The 16 kHz audio a session still needs, addressed by absolute sample position.

    Discarding only moves `base`; the storage is compacted once the dead part outweighs the
    live part, so a long segment is not copied on every frame.
    """

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE * 4, np.float32)
        self._offset = 0  # index of `base` in _data
        self.base = 0  # absolute position of the oldest sample held
        self.end = 0  # absolute position after the newest sample

    def append(self, samples: np.ndarray) -> None:
        stop = self._offset + self.held
        if stop + len(samples) > len(self._data):
            live = self._data[self._offset : stop]
            size = max(len(self._data), 2 * (len(live) + len(samples)))
            self._data = np.zeros(size, np.float32)
            self._data[: len(live)] = live
            self._offset, stop = 0, len(live)
        self._data[stop : stop + len(samples)] = samples
        self.end += len(samples)

    def copy(self, start: int, end: int) -> np.ndarray:
        assert self.base <= start <= end <= self.end, (self.base, start, end, self.end)
        first = self._offset + start - self.base
        return self._data[first : first + end - start].copy()

    def discard_before(self, position: int) -> None:
        position = min(max(position, self.base), self.end)
        self._offset += position - self.base
        self.base = position
        if self._offset > self.held and len(self._data) > 8 * SAMPLE_RATE:
            live = self._data[self._offset : self._offset + self.held].copy()
            self._data = np.zeros(max(4 * SAMPLE_RATE, 2 * len(live)), np.float32)
            self._data[: len(live)] = live
            self._offset = 0

    @property
    def held(self) -> int:
        return self.end - self.base


@dataclass
class _Segment:
    id: int
    start: int
    stabilizer: Stabilizer
    end: int | None = None
    reason: str | None = None
    committed: list[Word] = field(default_factory=list)
    decoded_until: int = 0
    state: object | None = None
    last_partial: tuple[str, str] = ("", "")
    held: list[ev.Event] = field(default_factory=list)
    # the language of the latest hypothesis
    language: str | None = None
    # cut at the end of its committed words: the committed text is its final text
    covered: bool = False
    # the latest partial answer, kept where a partial can be the final (`_Heard`)
    heard: _Heard | None = None


@dataclass(frozen=True)
class _Heard:
    """A partial decode's answer, kept in case it turns out to be the segment's final decode.

    With `ModelInfo.partial_is_final` a partial's answer is as good as a final decode's; so when
    a segment ends inside audio that its latest partial already heard (the silence the
    endpointer waits for), decoding the segment again would give no better words, up to 0.6 s
    later. The audio
    between the segment's end and `until` is unvoiced by the endpointer's own measure, so the
    partial heard no speech the final would not hear.
    """

    until: int  # timeline position the partial's audio reached
    words: tuple[Word, ...]  # committed + tail, as a final would take them
    language: str | None
    settings: tuple[object, ...]  # context, hotwords, language of its request


class Session:
    """Protocol state of one stream. See the module docstring for its guarantees."""

    def __init__(
        self,
        session_id: str,
        model: ModelInfo,
        *,
        limits: Limits | None = None,
        config: SessionConfig | None = None,
        query: dict[str, str] | None = None,
        vad: VadConfig | None = None,
    ):
        """Creates the session and emits `session.created`.

        Args:
            session_id: the id stamped on every event.
            model: what the recognizer can do (languages, segment length, word timing).
            limits: the operator's bounds.
            config: defaults for this session (before query parameters and session.start).
            query: the connection URL's query parameters, applied like a session.start.
            vad: voice-activity detector settings.

        A bad query makes the session fail at once: `events_to_send()` then holds `session.created`
        and the fatal `error`.
        """
        self.session_id = session_id
        self.model = model
        self.limits = limits or Limits()
        self.vad_config = vad or VadConfig()
        self.config = config or SessionConfig()
        self.state = State.OPEN
        self.fatal: StreamingError | None = None
        self._outbox: collections.deque[ev.Event] = collections.deque()
        self._segments: collections.deque[_Segment] = collections.deque()
        self._next_segment_id = 0
        self._finals = 0
        self._timeline = _Timeline()
        self._received_samples = 0  # at the client's rate
        self._last_ack_ms = -ACK_INTERVAL_MS
        self._lag_warned_ms = 0
        self._warned: set[str] = set()  # recognizer warning codes already sent
        self._previous_text = ""
        self._last_segment_end = 0  # where the latest closed segment ended
        self._in_flight: tuple[_Segment, DecodeRequest] | None = None
        self._close_reason = "input_end"
        self._configure(self.config)
        # The query is applied before session.created so that it announces the real settings;
        # what the query got wrong is reported right after it.
        problems: list[ev.Event] = []
        if query:
            try:
                message = config_from_query(query, self.config)
                if message:
                    self._start(message, announce=False)
            except StreamingError as exc:
                self._report(exc)
            problems, self._outbox = list(self._outbox), collections.deque()
        self._outbox.append(
            ev.SessionCreated(
                audio_ms=0,
                model=model.name,
                sample_rate=self.config.audio.sample_rate,
                limits=self.limits.announce(),
                config=self.config.to_dict(),
            )
        )
        self._outbox.extend(problems)

    # ------------------------------------------------------------------ inputs

    def receive_text(self, text: str) -> None:
        """Handles one JSON control message from the client.

        Once the session has closed or failed, input is ignored: `session.closed` or the fatal
        error already told the client, and the transport is closing the connection.
        """
        if self.finished:
            return
        try:
            self._dispatch(text)
        except StreamingError as exc:
            self._report(exc)

    def receive_audio(self, data: bytes) -> None:
        """Handles one binary audio frame from the client (ignored once finished, as above)."""
        if self.finished:
            return
        try:
            self._accept_audio(data)
        except StreamingError as exc:
            self._report(exc)

    def close(self, reason: str) -> None:
        """Ends the input on the server's initiative (shutdown, idle timeout): finals still come."""
        if self.state is State.OPEN:
            self._end_input(reason)

    # ----------------------------------------------------------------- outputs

    def events_to_send(self) -> list[ev.Event]:
        """Takes the events emitted since the last call, in order."""
        out = list(self._outbox)
        self._outbox.clear()
        return out

    def next_request(self, *, step_ms: int | None = None) -> DecodeRequest | None:
        """The decode the session needs now, if any (at most one is in flight at a time).

        A partial decode is due after `step_ms` of new segment audio (`Limits.step_ms` unless
        the caller, who knows the model's load, says otherwise). The caller must answer the
        request with `complete` or `fail`. A request returned while another
        is in flight supersedes it: the earlier one (a partial of a segment that has ended since)
        must be dropped unanswered, as its answer would be taken for the new one's.
        """
        if self.state in (State.CLOSED, State.FAILED) or not self._segments:
            return None
        segment = self._segments[0]
        final = segment.end is not None
        if self._in_flight is not None:
            if self._in_flight[1].final or not final or segment.covered:
                return None  # (a covered segment's final needs no decode: `complete` emits it)
            if self.final_in_flight:
                return None  # the partial in flight is the final (`complete` emits it)
            # The segment ended while its partial decode waits or runs: that answer can no
            # longer change anything (nothing of a partial that ran past the end is committed,
            # see `complete`), so the final goes now instead of queueing behind it; the caller
            # drops the partial. Otherwise a final waits up to a whole partial decode for nothing.
            self._in_flight = None
        end = segment.end if final else self._timeline.end
        assert end is not None
        if not final:
            if not self.config.partials:
                return None
            step = self.limits.step_ms if step_ms is None else step_ms
            if end - segment.decoded_until < _samples(step) and not self._pause_due(segment, step):
                return None
        request = DecodeRequest(
            audio=self._timeline.copy(segment.start, end),
            committed=tuple(segment.committed),
            context=self.config.context,
            hotwords=self.config.hotwords,
            previous_text=self._previous_text,
            language=self.config.language,
            final=final,
            state=segment.state,
            align=final and self.config.word_timestamps,
        )
        self._in_flight = (segment, request)
        return request

    def complete(self, hypothesis: Hypothesis) -> None:
        """Takes the recognizer's answer to the request in flight."""
        assert self._in_flight is not None, "complete() without a request in flight"
        segment, request = self._in_flight
        self._in_flight = None
        if self.state is State.FAILED:
            return
        n = len(request.committed)
        if tuple(hypothesis.words[:n]) != request.committed:
            self._report(ModelError("recognizer changed the committed prefix of a segment"))
            return
        segment.state = hypothesis.state
        segment.language = hypothesis.language or segment.language
        segment.decoded_until = segment.start + len(request.audio)
        tail = _spoken(hypothesis.words[n:], first=not request.committed)
        if hypothesis.warning is not None and hypothesis.warning[0] not in self._warned:
            self._warned.add(hypothesis.warning[0])  # once per session: finals keep coming
            self._warn(*hypothesis.warning)
        words = request.committed + tuple(tail)
        heard = self._heard_by(segment, request, hypothesis.language, words)
        if request.final:
            self._finish(segment, words, hypothesis.language, hypothesis.aligned)
        elif heard is not None and self._heard_whole(segment, heard):
            self._finish_heard(segment, heard)
        elif segment.end is None:
            self._stabilize(segment, tail, request.duration_ms)
            segment.heard = heard  # (None where a partial can never be the final)
        # else: the segment ended while this partial ran and it heard audio past the end that
        # may be the next segment's, so nothing of it is committed: the final decode comes next
        self._finish_covered()
        self._maybe_ack(force=True)

    def fail(self, error: StreamingError) -> None:
        """Takes a recognizer failure for the request in flight; the session cannot go on."""
        self._in_flight = None
        self._report(error)

    @property
    def final_in_flight(self) -> bool:
        """Whether the answer to the request in flight will be a final: a final request, or a
        partial that heard the whole of its ended segment (`_heard_whole`). A caller that queues
        requests by kind can then give it a final's priority."""
        if self._in_flight is None:
            return False
        segment, request = self._in_flight
        return request.final or self._heard_whole(segment, self._heard_by(segment, request, None))

    @property
    def finished(self) -> bool:
        """True once the session has closed or failed: the transport should close the stream."""
        return self.state in (State.CLOSED, State.FAILED)

    @property
    def close_reason(self) -> str:
        """Why the input ended (session.closed's reason): input_end, server_shutdown, ..."""
        return self._close_reason

    @property
    def segments_started(self) -> int:
        """Segments opened so far (segment ids run from 0 to this minus one)."""
        return self._next_segment_id

    @property
    def received_ms(self) -> int:
        return self._received_samples * 1000 // self.config.audio.sample_rate

    @property
    def processed_ms(self) -> int:
        """Audio position up to which the server has dealt with everything received."""
        unfinished = [s.decoded_until for s in self._segments]
        vad_position = min(self._endpointer.position, self._timeline.end)
        return _ms(min([vad_position, *unfinished]))

    # ---------------------------------------------------------------- messages

    def _dispatch(self, text: str) -> None:
        try:
            message = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ProtocolError(
                "text frames must be JSON control messages (audio goes in binary frames); "
                f"could not parse {text[:60]!r}",
                code="invalid_json",
            ) from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError('a control message must be a JSON object with a string "type"')
        kind = message["type"]
        if kind == "keepalive":
            return
        if self.state is not State.OPEN:
            raise ProtocolError(
                f"{kind} after input.end is not allowed; the session is closing",
                code="session_ending",
            )
        if kind == "session.start":
            self._start(message, announce=True)
        elif kind == "session.update":
            self._update(message)
        elif kind == "input.finalize":
            self._finalize()
        elif kind == "input.end":
            self._end_input("input_end")
        else:
            raise ProtocolError(
                f"unknown message type {kind!r}; expected session.start, session.update, "
                "input.finalize, input.end or keepalive",
                code="unknown_message_type",
            )

    def _start(self, message: dict[str, Any], *, announce: bool) -> None:
        if self._received_samples:
            raise ProtocolError(
                "session.start must come before the first audio frame (ignored)",
                code="session_already_started",
            )
        config, ignored = parse_session_start(
            message,
            self.config,
            languages=self.model.languages,
            max_segment_s=self.model.max_segment_s,
        )
        self._configure(config)
        if ignored:
            self._warn("unknown_field", f"ignored unknown settings: {', '.join(ignored)}")
        if config.word_timestamps and not self.model.word_timestamps:
            self._warn(
                "word_timestamps_unavailable",
                f"model {self.model.name} cannot align words; finals will carry no words",
            )
        if announce:
            self._outbox.append(ev.SessionUpdated(self.received_ms, config.to_dict()))

    def _update(self, message: dict[str, Any]) -> None:
        try:
            config = parse_session_update(message, self.config, languages=self.model.languages)
        except ConfigError as exc:
            raise ConfigError(exc.message, code=exc.code, fatal=False) from exc
        self.config = config
        self._outbox.append(ev.SessionUpdated(self.received_ms, config.to_dict()))

    def _configure(self, config: SessionConfig) -> None:
        self.config = config
        self._converter = AudioConverter(config.audio, self.limits.max_frame_ms)
        max_segment_s = min(config.endpointing.max_segment_s, self.model.max_segment_s)
        if config.endpointing.preroll_ms is not None:
            self.vad_config = dataclasses.replace(
                self.vad_config, preroll_ms=config.endpointing.preroll_ms
            )
        self._endpointer = Endpointer(
            config.endpointing.silence_ms, int(max_segment_s * 1000), self.vad_config
        )

    def _finalize(self) -> None:
        self._ingest(self._converter.flush())
        end = self._endpointer.end_segment(self._timeline.end)
        if end is None:
            self._warn("nothing_to_finalize", "input.finalize: no speech segment is open")
            return
        self._close_segment(end.position, "finalize")
        self._finish_covered()

    def _end_input(self, reason: str) -> None:
        self._ingest(self._converter.flush())
        end = self._endpointer.end_segment(self._timeline.end)
        self.state = State.DRAINING
        self._close_reason = reason
        if end is not None:
            self._close_segment(end.position, "end")
            self._finish_covered()
        self._maybe_close()

    # ------------------------------------------------------------------- audio

    def _accept_audio(self, data: bytes) -> None:
        if self.state is not State.OPEN:
            raise ProtocolError(
                f"audio after input.end is not accepted ({len(data)} bytes rejected)",
                code="audio_after_end",
            )
        samples = self._converter.convert(data)
        self._received_samples += len(data) // self.config.audio.frame_bytes
        self._ingest(samples)
        self._maybe_ack()
        self._check_backlog()
        if self.state is State.OPEN and self.received_ms >= self.limits.max_session_s * 1000:
            self._warn(
                "session_limit",
                f"the session reached its limit of {self.limits.max_session_s:g} s of audio",
            )
            self._end_input("max_session")

    def _ingest(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        self._timeline.append(samples)
        for boundary in self._endpointer.accept(samples):
            if isinstance(boundary, SpeechStart):
                self._open_segment(boundary.position)
            elif isinstance(boundary, SpeechEnd):
                position = boundary.position
                if boundary.reason == "max_length":
                    position = self._cut_after_committed(position)
                self._close_segment(position, boundary.reason)
        self._finish_covered()
        self._discard_unneeded_audio()

    def _open_segment(self, position: int) -> None:
        # segments never overlap: a max-length cut may have moved the previous end forward
        start = max(position, self._timeline.base, self._last_segment_end)
        segment = _Segment(
            id=self._next_segment_id,
            start=start,
            stabilizer=Stabilizer(self.config.stability),
            decoded_until=start,
        )
        self._next_segment_id += 1
        self._segments.append(segment)
        self._emit(segment, ev.SpeechStarted(_ms(segment.start), segment.id))

    def _close_segment(self, position: int, reason: str) -> None:
        segment = self._segments[-1]
        assert segment.end is None, "closing a segment twice"
        segment.end = max(position, segment.start)
        segment.reason = reason
        self._last_segment_end = segment.end

    def _finish_covered(self) -> None:
        """Emits the finals at the head of the queue that need no decode: covered segments,
        and ended segments whose latest partial heard all of them (`_Heard`)."""
        while self._segments and self._in_flight is None:
            segment = self._segments[0]
            if segment.covered:
                self._finish(segment, tuple(segment.committed), segment.language)
            elif segment.heard is not None and self._heard_whole(segment, segment.heard):
                self._finish_heard(segment, segment.heard)
            else:
                return

    def _finish_heard(self, segment: _Segment, heard: _Heard) -> None:
        """The final from a partial that heard the whole segment (`_Heard`). Its word times
        may reach into the unvoiced audio after the segment's end (alignment stretches a last
        word over the silence after it); they are clamped to the segment, as the protocol
        keeps a final's words inside it."""
        assert segment.end is not None
        length = _ms(segment.end - segment.start)
        words = tuple(
            dataclasses.replace(w, start_ms=min(w.start_ms, length), end_ms=min(w.end_ms, length))
            for w in heard.words
        )
        self._finish(segment, words, heard.language)

    def _pause_due(self, segment: _Segment, step_ms: int) -> bool:
        """Whether a partial is due now, off its step, because a pause began: one that hears up
        to where the segment would end (`Endpointer.pause_end`) is its final if the pause
        becomes the endpoint (`_Heard`), ready when the endpoint is decided instead of starting
        then; if speech resumes it was an ordinary partial. Not while the model is behind (a
        step longer than `Limits.step_ms`), where every extra decode delays the others."""
        if not self.model.partial_is_final or step_ms > self.limits.step_ms:
            return False
        pause_end = self._endpointer.pause_end
        return pause_end is not None and segment.decoded_until < pause_end

    def _heard_by(
        self,
        segment: _Segment,
        request: DecodeRequest,
        language: str | None,
        words: tuple[Word, ...] = (),
    ) -> _Heard | None:
        """What a partial request heard, if its answer could be its segment's final."""
        if request.final or not self.model.partial_is_final:
            return None
        return _Heard(
            segment.start + len(request.audio), words, language,
            (request.context, request.hotwords, request.language),
        )  # fmt: skip

    def _heard_whole(self, segment: _Segment, heard: _Heard | None) -> bool:
        """Whether a partial's answer is this ended segment's final: it heard the whole segment,
        past its end only what the endpointer found unvoiced (not the next segment's speech, as
        after a max-length cut), with the settings a final decode would use now."""
        if heard is None or segment.end is None:
            return False
        settings = (self.config.context, self.config.hotwords, self.config.language)
        if heard.settings != settings:
            return False
        if segment.reason == "max_length":
            return heard.until == segment.end
        return heard.until >= segment.end

    def _cut_after_committed(self, position: int) -> int:
        """Where a segment cut for its length really ends: never before its committed words.

        The endpointer picks the quietest recent frame, which can lie before words that partial
        decodes have already committed. Committed words cannot move to the next segment (they
        were shown as final), and a cut before them would transcribe their audio twice: once in
        this segment's committed text, once in the next segment. The cut then moves to the end
        of the last committed word, which leaves this segment fully covered by its committed
        text (`_Segment.covered`: its final needs no decode).
        """
        segment = self._segments[-1]
        if not segment.committed:
            return position
        covered_end = segment.start + _samples(segment.committed[-1].end_ms)
        if covered_end < position:
            return position
        segment.covered = True
        return min(covered_end, self._timeline.end)

    def _discard_unneeded_audio(self) -> None:
        lookback = self._endpointer.position - (self.vad_config.start_window + 1) * FRAME
        keep_from = lookback - _samples(self.vad_config.preroll_ms)
        if self._segments:
            keep_from = min(keep_from, self._segments[0].start)
        self._timeline.discard_before(keep_from)

    def _check_backlog(self) -> None:
        held_ms = _ms(self._timeline.held)
        if held_ms > self.limits.max_buffer_ms:
            self._report(
                OverloadError(
                    f"the server fell {held_ms / 1000:.1f} s behind this stream "
                    f"(limit {self.limits.max_buffer_ms / 1000:.0f} s) and cannot catch up; "
                    "audio from here on cannot be transcribed"
                )
            )
            return
        backlog = self._backlog_ms()
        if backlog >= self.limits.lag_warning_ms and backlog >= 2 * self._lag_warned_ms:
            self._lag_warned_ms = backlog
            self._warn(
                "lagging",
                f"transcription is {backlog / 1000:.1f} s behind the audio received; "
                f"the session fails at {self.limits.max_buffer_ms / 1000:.0f} s",
            )
        elif backlog < self.limits.lag_warning_ms // 2:
            self._lag_warned_ms = 0

    def _backlog_ms(self) -> int:
        """How far work that is due has fallen behind the audio received."""
        if self.config.partials:
            return self.received_ms - self.processed_ms
        waiting = [s for s in self._segments if s.end is not None]
        return self.received_ms - _ms(waiting[0].end or 0) if waiting else 0

    # ------------------------------------------------------------- hypotheses

    def _stabilize(self, segment: _Segment, tail: list[Word], live_edge_ms: int) -> None:
        new, tentative = segment.stabilizer.update(tail, live_edge_ms)
        segment.committed.extend(new)
        committed_text = join_words(segment.committed)
        tentative_text = "".join(w.text for w in tentative)
        tentative_text = tentative_text if committed_text else tentative_text.lstrip()
        if not _has_word_character(tentative_text):
            tentative_text = ""  # a lone "." or "..." is no text to show yet
        if (committed_text, tentative_text) == segment.last_partial:
            return
        segment.last_partial = (committed_text, tentative_text)
        self._emit(
            segment,
            ev.TranscriptPartial(
                _ms(segment.decoded_until), segment.id, committed_text, tentative_text.rstrip()
            ),
        )

    def _finish(
        self,
        segment: _Segment,
        words: tuple[Word, ...],
        language: str | None,
        aligned: tuple[Word, ...] | None = None,
    ) -> None:
        assert segment.end is not None and segment.reason is not None
        text = join_words(words)
        committed = join_words(segment.committed)
        assert text.startswith(committed), (text, committed)
        timed = None
        if self.config.word_timestamps and self.model.word_timestamps:
            timed = ev.wire_words(words if aligned is None else aligned, _ms(segment.start))
        end_ms = _ms(segment.end)
        self._emit(segment, ev.SpeechStopped(end_ms, segment.id))
        self._emit(
            segment,
            ev.TranscriptFinal(
                audio_ms=end_ms,
                segment_id=segment.id,
                text=text,
                language=language or self.config.language,
                start_ms=_ms(segment.start),
                end_ms=end_ms,
                reason=segment.reason,
                words=timed,
            ),
        )
        self._finals += 1
        self._segments.popleft()
        if text:
            self._previous_text = (self._previous_text + " " + text)[-PREVIOUS_TEXT_CHARS:]
        if self._segments:  # the next segment may have been waiting for this final
            self._outbox.extend(self._segments[0].held)
            self._segments[0].held.clear()
        self._discard_unneeded_audio()
        self._maybe_close()

    # ------------------------------------------------------------------ events

    def _emit(self, segment: _Segment, event: ev.Event) -> None:
        if self._segments and self._segments[0] is not segment:
            segment.held.append(event)
        else:
            self._outbox.append(event)

    def _warn(self, code: str, message: str) -> None:
        self._outbox.append(ev.Warning(self.received_ms, code, message))

    def _report(self, error: StreamingError) -> None:
        if self.state is State.FAILED:
            return
        self._outbox.append(ev.Error(self.received_ms, error.code, error.message, error.fatal))
        if error.fatal:
            self.state = State.FAILED
            self.fatal = error

    def _maybe_ack(self, force: bool = False) -> None:
        if self.finished:
            return
        received = self.received_ms
        if not force and received - self._last_ack_ms < ACK_INTERVAL_MS:
            return
        self._last_ack_ms = received
        processed = self.processed_ms
        self._outbox.append(
            ev.AudioAck(received, received, processed, max(0, received - processed))
        )

    def _maybe_close(self) -> None:
        if self.state is State.DRAINING and not self._segments:
            self.state = State.CLOSED
            self._outbox.append(
                ev.SessionClosed(self.received_ms, self._close_reason, self._finals)
            )
