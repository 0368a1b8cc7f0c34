"""The OpenAI Realtime face: transcription sessions on `WS /v1/realtime?intent=transcription`.

Both shapes the official SDK speaks are served (shared/design/compatible-apis.md): the GA one
(`session.update` with `session.type = "transcription"`, `audio.input.format` audio/pcm,
audio/pcmu, audio/pcma) and the beta one (`transcription_session.update` with
`input_audio_format` pcm16, g711_ulaw, g711_alaw), chosen by the `OpenAI-Beta: realtime=v1`
header the beta client sends, and by the first update's type.

How it maps onto the session engine:
- `turn_detection: server_vad` is the engine's endpointer: `silence_duration_ms` is its
  `endpointing.silence_ms`, `prefix_padding_ms` its `endpointing.preroll_ms`; `threshold` is
  accepted and not used (webrtcvad has levels, not a threshold). `semantic_vad` is accepted and
  served by the same endpointer, its `eagerness` choosing the silence (low 1000 ms, medium and
  auto 700 ms, high 400 ms). Each engine segment is one conversation item: speech_started,
  speech_stopped, committed, conversation.item.created, then .completed with its transcript.
- `turn_detection: null` (manual): the item is everything between two
  `input_audio_buffer.commit`s (the engine may split it at pauses; the texts are joined).
- Beyond OpenAI, which sends no transcript until the turn ends: committed words arrive as
  append-only `conversation.item.input_audio_transcription.delta`s while the user is still
  speaking, so a caption built from deltas never needs a correction; the deltas of an item
  concatenate to its `transcript`.
- `input_audio_buffer.clear` drops the audio not yet committed: the open segment (server VAD)
  or the whole uncommitted turn (manual) ends and its text is never sent.
- Errors are `error` events in OpenAI's shape; a fatal one closes the connection with the
  engine's close code.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket

from streaming import events as ev
from streaming.config import parse_session_start
from streaming.server.connection import Face, Reply, client_address, refuse

if TYPE_CHECKING:
    from streaming.server.service import StreamingServer

FORMATS = {  # wire name -> (engine encoding, sample rate)
    "audio/pcm": ("pcm_s16le", 24_000),
    "audio/pcmu": ("pcm_mulaw", 8_000),
    "audio/pcma": ("pcm_alaw", 8_000),
    "pcm16": ("pcm_s16le", 24_000),
    "g711_ulaw": ("pcm_mulaw", 8_000),
    "g711_alaw": ("pcm_alaw", 8_000),
}
BETA_FORMATS = {v: k for k, v in FORMATS.items() if "/" not in k}
SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 700, "auto": 700, "high": 400}
DEFAULT_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
               "silence_duration_ms": 500}  # fmt: skip
FRAME_MS = 500  # appended audio reaches the engine in pieces under its 1 s frame limit
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less audio


class RealtimeError(Exception):
    """A client event the face cannot take (answered with an `error` event)."""

    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


@dataclass
class Settings:
    """The transcription session as the client configured it."""

    encoding: str = "pcm_s16le"
    sample_rate: int = 24_000
    model: str = "default"
    language: str | None = None
    prompt: str = ""
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_VAD))


@dataclass
class Turn:
    """One conversation item being transcribed."""

    item_id: str
    texts: list[str] = field(default_factory=list)  # finals of its segments, in order
    sent: str = ""  # what its deltas have carried so far
    segments: int = 0  # engine segments started in it
    finals: int = 0  # ... and finished
    committed: bool = False
    audio_start_ms: int = 0

    @property
    def transcript(self) -> str:
        return " ".join(t for t in self.texts if t)


async def handle(server: StreamingServer, websocket: WebSocket) -> None:
    """One realtime connection, from upgrade to close."""
    query = dict(websocket.query_params)
    beta = websocket.headers.get("openai-beta", "").startswith("realtime")
    refusal = server.refusal(websocket.headers, query, client_address(websocket))
    if refusal is not None:
        server.count_refusal("realtime", refusal)
        kind = "invalid_request_error" if refusal.code == "unauthorized" else "server_error"
        body = _error_body(refusal.message, refusal.code, kind=kind)
        await refuse(websocket, json.dumps(body), refusal.close_code, refusal.code)
        return
    if query.get("intent", "transcription") != "transcription":
        await refuse(websocket, json.dumps(_error_body(
            "this server serves transcription sessions only (intent=transcription)",
            "unsupported_intent")), 4001, "unsupported_intent")  # fmt: skip
        return
    await websocket.accept()
    settings = Settings()
    config, ignored = parse_session_start(
        _engine_start(settings), server.config.session_defaults,
        languages=server.recognizer.info.languages,
        max_segment_s=server.recognizer.info.max_segment_s,
    )  # fmt: skip
    assert not ignored
    face = RealtimeFace(server.new_session(config=config), server, beta=beta, settings=settings)
    await server.run_face(websocket, face)


class RealtimeFace(Face):
    """Translates between OpenAI Realtime transcription events and one engine session."""

    name = "realtime"

    def __init__(
        self, session: Any, server: StreamingServer, *, beta: bool, settings: Settings
    ) -> None:
        super().__init__(session)
        self.server = server
        self.beta = beta
        self.settings = settings
        self.session_id = "sess_" + session.session_id
        self._turns: dict[int, Turn] = {}  # engine segment -> its turn (server VAD)
        self._manual: Turn | None = None  # the turn being built (manual commit)
        # committed turns still waiting for finals, with the last engine segment each holds
        self._pending: list[tuple[Turn, int]] = []
        self._last_final = -1  # the latest engine segment whose final was rendered
        self._suppressed: set[int] = set()  # segments whose text was cleared
        self._open_segment: int | None = None
        self._previous_item: str | None = None
        self._audio_since_commit_ms = 0.0
        self._audio_started = False

    # --------------------------------------------------------------- client

    def receive_bytes(self, data: bytes) -> None:
        self._error("binary frames are not part of the Realtime API; send "
                    "input_audio_buffer.append events", "invalid_request")  # fmt: skip

    def receive_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error(f"could not parse the event as JSON: {text[:60]!r}", "invalid_json")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._error("an event must be a JSON object with a string type", "invalid_event")
            return
        kind = message["type"]
        try:
            if kind in ("session.update", "transcription_session.update"):
                self.beta = self.beta or kind == "transcription_session.update"
                self._update(message.get("session"))
            elif kind == "input_audio_buffer.append":
                self._append(message.get("audio"))
            elif kind == "input_audio_buffer.commit":
                self._commit()
            elif kind == "input_audio_buffer.clear":
                self.runner.receive_text('{"type": "input.finalize"}')
                self.reply({"type": "_clear"})
            else:
                raise RealtimeError(
                    f"{kind!r} is not supported by a transcription session; use "
                    "session.update, input_audio_buffer.append, .commit or .clear",
                    "unsupported_event", "type",
                )  # fmt: skip
        except RealtimeError as error:
            self._error(error.message, error.code, error.param, message.get("event_id"))

    def _update(self, session: Any) -> None:
        if not isinstance(session, dict):
            raise RealtimeError("session.update needs a session object", "invalid_value", "session")
        new = Settings(**vars(self.settings))
        if self.beta:
            self._read_beta(session, new)
        else:
            self._read_ga(session, new)
        fixed = (new.encoding, new.sample_rate, new.turn_detection)
        before = (self.settings.encoding, self.settings.sample_rate, self.settings.turn_detection)
        if self._audio_started and fixed != before:
            raise RealtimeError("the audio format and turn detection cannot change once audio "
                                "was appended", "invalid_value", "session")  # fmt: skip
        self.settings = new
        if not self._audio_started:
            start = {"type": "session.start", **_engine_start(new)}
            self.runner.receive_text(json.dumps(start))
        else:
            update = {"type": "session.update", "language": new.language or "auto",
                      "context": new.prompt}  # fmt: skip
            self.runner.receive_text(json.dumps(update))

    def _read_ga(self, session: dict[str, Any], new: Settings) -> None:
        if session.get("type", "transcription") != "transcription":
            raise RealtimeError("this endpoint serves transcription sessions: session.type must "
                                "be 'transcription'", "invalid_value", "session.type")  # fmt: skip
        audio = _object(session.get("audio"), "session.audio")
        audio_input = _object(audio.get("input"), "session.audio.input")
        if "format" in audio_input:
            fmt = _object(audio_input["format"], "session.audio.input.format")
            name = fmt.get("type")
            if name not in ("audio/pcm", "audio/pcmu", "audio/pcma"):
                raise RealtimeError(f"audio format {name!r} is not supported; use audio/pcm, "
                                    "audio/pcmu or audio/pcma", "invalid_value",
                                    "session.audio.input.format")  # fmt: skip
            new.encoding, new.sample_rate = FORMATS[name]
            if name == "audio/pcm" and "rate" in fmt:
                new.sample_rate = _rate(fmt["rate"])
        if "transcription" in audio_input:
            transcription = audio_input["transcription"]
            self._read_transcription(
                _object(transcription, "session.audio.input.transcription"), new
            )
        if "turn_detection" in audio_input:
            new.turn_detection = _turn_detection(audio_input["turn_detection"])

    def _read_beta(self, session: dict[str, Any], new: Settings) -> None:
        if "input_audio_format" in session:
            name = session["input_audio_format"]
            if name not in ("pcm16", "g711_ulaw", "g711_alaw"):
                raise RealtimeError(f"input_audio_format {name!r} is not supported; use pcm16, "
                                    "g711_ulaw or g711_alaw", "invalid_value",
                                    "session.input_audio_format")  # fmt: skip
            new.encoding, new.sample_rate = FORMATS[name]
        if "input_audio_transcription" in session:
            transcription = session["input_audio_transcription"]
            self._read_transcription(
                _object(transcription, "session.input_audio_transcription"), new
            )
        if "turn_detection" in session:
            new.turn_detection = _turn_detection(session["turn_detection"])

    def _read_transcription(self, transcription: dict[str, Any], new: Settings) -> None:
        model = _string(transcription.get("model"), "transcription.model")
        if model:
            if model != self.server.model_name and model not in _aliases():
                raise RealtimeError(f"The model '{model}' does not exist; this server serves "
                                    f"'{self.server.model_name}'", "model_not_found",
                                    "session.audio.input.transcription.model")  # fmt: skip
            new.model = model
        if "language" in transcription:
            new.language = _string(transcription["language"], "transcription.language") or None
        if "prompt" in transcription:
            new.prompt = _string(transcription["prompt"], "transcription.prompt")

    def _append(self, audio: Any) -> None:
        if not isinstance(audio, str):
            raise RealtimeError("input_audio_buffer.append needs base64 audio", "invalid_value",
                                "audio")  # fmt: skip
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("audio is not valid base64", "invalid_value", "audio") from None
        if not pcm:
            return
        self._audio_started = True
        width = 2 if self.settings.encoding == "pcm_s16le" else 1
        step = self.settings.sample_rate * width * FRAME_MS // 1000
        for start in range(0, len(pcm), step):
            self.runner.receive_audio(pcm[start : start + step])
        self._audio_since_commit_ms += 1000 * len(pcm) / (width * self.settings.sample_rate)

    def _commit(self) -> None:
        if self._audio_since_commit_ms < MIN_COMMIT_MS:
            raise RealtimeError(
                f"buffer too small: {self._audio_since_commit_ms:.0f} ms of audio since the last "
                f"commit, at least {MIN_COMMIT_MS} ms are needed",
                "input_audio_buffer_commit_empty",
            )  # fmt: skip
        self._audio_since_commit_ms = 0
        if self.settings.turn_detection is None:
            self.runner.receive_text('{"type": "input.finalize"}')
            # every segment up to here belongs to the committed turn, even those whose events
            # the engine still holds back behind an earlier final
            self.reply({"type": "_commit", "last_segment": self.session.segments_started - 1})
        else:  # server VAD commits by itself; an explicit commit ends the open segment now
            self.runner.receive_text('{"type": "input.finalize"}')

    # --------------------------------------------------------------- server

    def render(self, event: ev.Event, seq: int) -> list[str]:
        out = [json.dumps({"event_id": f"event_{seq}", **m}) for m in self._translate(event)]
        return out

    def _translate(self, event: ev.Event) -> list[dict[str, Any]]:
        if isinstance(event, Reply):
            return self._reply(event.payload)
        if isinstance(event, ev.SessionCreated):
            kind = "transcription_session.created" if self.beta else "session.created"
            return [{"type": kind, "session": self._session_object()}]
        if isinstance(event, ev.SessionUpdated):
            kind = "transcription_session.updated" if self.beta else "session.updated"
            return [{"type": kind, "session": self._session_object()}]
        if isinstance(event, ev.SpeechStarted):
            return self._speech_started(event)
        if isinstance(event, ev.TranscriptPartial):
            return self._delta(event.segment_id, event.committed)
        if isinstance(event, ev.SpeechStopped):
            return self._speech_stopped(event)
        if isinstance(event, ev.TranscriptFinal):
            return self._final(event)
        if isinstance(event, ev.Error):
            kind = "server_error" if event.code in ("model_error", "overloaded") else (
                "invalid_request_error")  # fmt: skip
            return [_error_body(event.message, event.code, kind=kind)]
        return []  # acks, warnings, session.closed: no Realtime counterpart

    def _manual_mode(self) -> bool:
        return self.settings.turn_detection is None

    def _turn_of(self, segment: int) -> Turn | None:
        return self._turns.get(segment)

    def _speech_started(self, event: ev.SpeechStarted) -> list[dict[str, Any]]:
        self._open_segment = event.segment_id
        if self._manual_mode():
            turn = next((t for t, last in self._pending if event.segment_id <= last), None)
            if turn is None:
                if self._manual is None:
                    self._manual = _new_turn(event.audio_ms)
                turn = self._manual
            turn.segments += 1
            self._turns[event.segment_id] = turn
            return []
        turn = _new_turn(event.audio_ms)
        turn.segments = 1
        self._turns[event.segment_id] = turn
        return [{"type": "input_audio_buffer.speech_started", "item_id": turn.item_id,
                 "audio_start_ms": event.audio_ms}]  # fmt: skip

    def _delta(self, segment: int, segment_text: str) -> list[dict[str, Any]]:
        """The part of a turn's text not sent yet, as one delta (its words are final)."""
        turn = self._turn_of(segment)
        if turn is None or segment in self._suppressed:
            return []
        return self._text_delta(turn, segment_text)

    def _speech_stopped(self, event: ev.SpeechStopped) -> list[dict[str, Any]]:
        turn = self._turn_of(event.segment_id)
        if turn is None or self._manual_mode() or event.segment_id in self._suppressed:
            return []
        return [
            {"type": "input_audio_buffer.speech_stopped", "item_id": turn.item_id,
             "audio_end_ms": event.audio_ms},
            *self._committed(turn),
        ]  # fmt: skip

    def _committed(self, turn: Turn) -> list[dict[str, Any]]:
        turn.committed = True
        previous, self._previous_item = self._previous_item, turn.item_id
        item = {"id": turn.item_id, "object": "realtime.item", "type": "message",
                "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}  # fmt: skip
        return [
            {"type": "input_audio_buffer.committed", "item_id": turn.item_id,
             "previous_item_id": previous},
            {"type": "conversation.item.created", "previous_item_id": previous, "item": item},
        ]  # fmt: skip

    def _final(self, event: ev.TranscriptFinal) -> list[dict[str, Any]]:
        self._open_segment = None
        self._last_final = event.segment_id
        turn = self._turns.pop(event.segment_id, None)
        if turn is None or event.segment_id in self._suppressed:
            self._suppressed.discard(event.segment_id)
            return []
        out = self._text_delta(turn, event.text)
        turn.texts.append(event.text)
        turn.finals += 1
        duration = max(0, event.end_ms - turn.audio_start_ms) / 1000
        if not self._manual_mode():
            return [*out, self._completed(turn, duration)]
        if (turn, event.segment_id) in self._pending:  # the last segment of a committed turn
            self._pending.remove((turn, event.segment_id))
            out.append(self._completed(turn, duration))
        return out

    def _text_delta(self, turn: Turn, text: str) -> list[dict[str, Any]]:
        """The delta that extends what the turn has sent to its texts plus `text`, if any."""
        full = " ".join(t for t in [*turn.texts, text] if t)
        if not full.startswith(turn.sent) or len(full) == len(turn.sent):
            return []
        delta = full[len(turn.sent) :]
        turn.sent = full
        return [{"type": "conversation.item.input_audio_transcription.delta",
                 "item_id": turn.item_id, "content_index": 0, "delta": delta}]  # fmt: skip

    def _completed(self, turn: Turn, seconds: float) -> dict[str, Any]:
        return {"type": "conversation.item.input_audio_transcription.completed",
                "item_id": turn.item_id, "content_index": 0, "transcript": turn.transcript,
                "usage": {"type": "duration", "seconds": round(seconds, 3)}}  # fmt: skip

    def _reply(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        kind = payload["type"]
        if kind == "_commit":  # manual mode: the turn is committed now; later speech is the next
            turn = self._manual or _new_turn(self.session.received_ms)
            self._manual = None
            out = self._committed(turn)
            if payload["last_segment"] <= self._last_final:  # nothing left to decode
                out.append(self._completed(turn, 0.0))
            else:
                self._pending.append((turn, payload["last_segment"]))
            return out
        if kind == "_clear":
            if self._manual_mode() and self._manual is not None:
                for segment, turn in self._turns.items():
                    if turn is self._manual:
                        self._suppressed.add(segment)
                self._manual = None
            elif self._open_segment is not None:
                self._suppressed.add(self._open_segment)
            self._audio_since_commit_ms = 0
            return [{"type": "input_audio_buffer.cleared"}]
        return [payload]

    def _session_object(self) -> dict[str, Any]:
        s = self.settings
        transcription = {"model": s.model, "language": s.language, "prompt": s.prompt}
        if self.beta:
            return {
                "id": self.session_id, "object": "realtime.transcription_session",
                "modalities": ["text"],
                "input_audio_format": BETA_FORMATS.get((s.encoding, s.sample_rate), "pcm16"),
                "input_audio_transcription": transcription,
                "turn_detection": s.turn_detection, "input_audio_noise_reduction": None,
                "include": None,
            }  # fmt: skip
        fmt: dict[str, Any] = {"type": {"pcm_s16le": "audio/pcm", "pcm_mulaw": "audio/pcmu",
                                        "pcm_alaw": "audio/pcma"}[s.encoding]}  # fmt: skip
        if s.encoding == "pcm_s16le":
            fmt["rate"] = s.sample_rate
        return {
            "id": self.session_id, "object": "realtime.transcription_session",
            "type": "transcription",
            "audio": {"input": {"format": fmt, "transcription": transcription,
                                "turn_detection": s.turn_detection, "noise_reduction": None}},
            "include": None,
        }  # fmt: skip

    def _error(
        self, message: str, code: str, param: str | None = None, event_id: str | None = None
    ) -> None:
        self.reply(_error_body(message, code, param=param, event_id=event_id))


def _new_turn(audio_ms: int) -> Turn:
    return Turn("item_" + uuid.uuid4().hex[:20], audio_start_ms=audio_ms)


def _aliases() -> frozenset[str]:
    from streaming.server.openai_http import ALIASES

    return ALIASES


def _object(value: Any, param: str) -> dict[str, Any]:
    """A nested settings object; null or absent reads as empty, anything else is refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RealtimeError(f"{param} must be an object, got {value!r:.60}", "invalid_value", param)
    return value


def _string(value: Any, param: str) -> str:
    """A settings string; null reads as empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RealtimeError(f"{param} must be a string, got {value!r:.60}", "invalid_value", param)
    return value


def _rate(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 8_000 <= value <= 48_000:
        raise RealtimeError(f"audio/pcm rate must be an integer from 8000 to 48000 Hz (OpenAI "
                            f"sends 24000), got {value!r}", "invalid_value",
                            "session.audio.input.format.rate")  # fmt: skip
    return value


def _turn_detection(value: Any) -> dict[str, Any] | None:
    """The turn detection setting, validated, with the engine's defaults filled in."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("server_vad", "semantic_vad"):
        raise RealtimeError("turn_detection must be null, server_vad or semantic_vad",
                            "invalid_value", "turn_detection")  # fmt: skip
    if value["type"] == "semantic_vad":
        eagerness = value.get("eagerness", "auto")
        if not isinstance(eagerness, str) or eagerness not in SEMANTIC_SILENCE_MS:
            raise RealtimeError("semantic_vad eagerness must be low, medium, high or auto",
                                "invalid_value", "turn_detection.eagerness")  # fmt: skip
        return {"type": "semantic_vad", "eagerness": eagerness}
    out = {**DEFAULT_VAD, **{k: v for k, v in value.items() if v is not None}}
    for name, low, high in (("silence_duration_ms", 100, 10_000), ("prefix_padding_ms", 0, 2_000)):
        number = out[name]
        if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
            raise RealtimeError(f"turn_detection.{name} must be an integer from {low} to "
                                f"{high}, got {number!r}", "invalid_value",
                                f"turn_detection.{name}")  # fmt: skip
    return out


def _engine_start(settings: Settings) -> dict[str, Any]:
    """The engine's session.start fields for these settings."""
    start: dict[str, Any] = {
        "audio": {"encoding": settings.encoding, "sample_rate": settings.sample_rate,
                  "channels": 1},
        "language": settings.language or "auto",
        "context": settings.prompt,
        "partials": True,
    }  # fmt: skip
    detection = settings.turn_detection
    if detection is not None and detection["type"] == "server_vad":
        start["endpointing"] = {"silence_ms": detection["silence_duration_ms"],
                                "preroll_ms": detection["prefix_padding_ms"]}  # fmt: skip
    elif detection is not None:
        start["endpointing"] = {"silence_ms": SEMANTIC_SILENCE_MS[detection["eagerness"]]}
    return start


def _error_body(
    message: str,
    code: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "code": code, "message": message,
                                       "param": param, "event_id": event_id}}  # fmt: skip
