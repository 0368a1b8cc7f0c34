"""The Deepgram face: live transcription on `WS /v1/listen` (a subset of Deepgram's API).

Served as the official `deepgram-sdk` connects (shared/design/compatible-apis.md): settings in
the query (`encoding` linear16, mulaw or alaw; `sample_rate`; `channels`, downmixed; `language`;
`interim_results`; `endpointing`; `utterance_end_ms`; `vad_events`; others accepted and not
used), audio in binary frames, `KeepAlive`, `Finalize` and `CloseStream` as text frames,
`Authorization: Token ...` (or Bearer, or `?token=`).

How the engine's events map:
- a partial is an interim `Results` (`is_final` false) of the segment's text so far, when
  `interim_results=true`;
- a final is a `Results` with `is_final` true, `speech_final` true when the endpointer ended the
  segment (silence of `endpointing` ms), `from_finalize` true when a `Finalize` did; words carry
  start, end and punctuated form when the model aligns words;
- `SpeechStarted` (with `vad_events=true`) when a segment starts, `UtteranceEnd` after an
  endpointed final (with `utterance_end_ms`), `Metadata` before the close of a `CloseStream`;
- an error is an `Error` message; a fatal one is followed by the close (1011 for the model,
  1008 for bad settings, Deepgram's codes).
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket

from streaming import events as ev
from streaming.config import parse_session_start
from streaming.errors import CloseCode, StreamingError
from streaming.server.connection import Face, Reply, client_address, refuse

if TYPE_CHECKING:
    from streaming.server.service import StreamingServer

ENCODINGS = {"linear16": "pcm_s16le", "mulaw": "pcm_mulaw", "alaw": "pcm_alaw"}
WIDTH = {"pcm_s16le": 2, "pcm_mulaw": 1, "pcm_alaw": 1}
DEFAULT_ENDPOINTING_MS = 600  # the engine's default (Deepgram's own is 10 ms, too eager here)
FRAME_MS = 500  # large Deepgram frames reach the engine in pieces under its 1 s limit
POLICY_VIOLATION = 1008


class DeepgramSettingsError(ValueError):
    """A query parameter this face cannot serve."""


async def handle(server: StreamingServer, websocket: WebSocket) -> None:
    """One Deepgram live connection, from upgrade to close."""
    query = dict(websocket.query_params)
    refusal = server.refusal(websocket.headers, query, client_address(websocket))
    if refusal is not None:
        server.count_refusal("deepgram", refusal)
        body = _error(refusal.message, refusal.code)
        code = POLICY_VIOLATION if refusal.code == "unauthorized" else refusal.close_code
        await refuse(websocket, json.dumps(body), code, refusal.code)
        return
    try:
        options = _settings(query)
        config, _ = parse_session_start(
            options["start"], server.config.session_defaults,
            languages=server.recognizer.info.languages,
            max_segment_s=server.recognizer.info.max_segment_s,
        )  # fmt: skip
    except (DeepgramSettingsError, StreamingError) as exc:
        message = exc.message if isinstance(exc, StreamingError) else str(exc)
        await refuse(websocket, json.dumps(_error(message, "invalid_query")),
                     POLICY_VIOLATION, "invalid_query")  # fmt: skip
        return
    await websocket.accept()
    face = DeepgramFace(server.new_session(config=config), server, options)
    await server.run_face(websocket, face)


def _settings(query: dict[str, str]) -> dict[str, Any]:
    """The face's options for a query string, the engine's session.start among them."""
    encoding = query.get("encoding", "linear16").lower()
    if encoding not in ENCODINGS:
        raise DeepgramSettingsError(f"encoding {encoding!r} is not supported; use linear16, "
                                    "mulaw or alaw")  # fmt: skip
    try:
        rate = int(query.get("sample_rate", "16000"))
        channels = int(query.get("channels", "1"))
        endpointing = query.get("endpointing", str(DEFAULT_ENDPOINTING_MS)).lower()
        silence_ms = DEFAULT_ENDPOINTING_MS if endpointing in ("true", "false") else max(
            100, int(endpointing))  # fmt: skip
        utterance_end_ms = int(query["utterance_end_ms"]) if "utterance_end_ms" in query else None
    except ValueError as exc:
        raise DeepgramSettingsError(f"a number in the query does not parse: {exc}") from None
    language = query.get("language", "en").split("-")[0]
    start = {
        "type": "session.start",
        "audio": {"encoding": ENCODINGS[encoding], "sample_rate": rate, "channels": channels},
        "language": "auto" if language == "multi" else language,
        "partials": True,
        "word_timestamps": True,
        "endpointing": {"silence_ms": min(silence_ms, 10_000)},
    }
    options = {
        "start": start,
        "interim_results": query.get("interim_results", "false").lower() == "true",
        "vad_events": query.get("vad_events", "false").lower() == "true",
        "utterance_end_ms": utterance_end_ms,
        "endpointing": endpointing != "false",
        "model": query.get("model", "default"),
        "channels": channels,
        "frame_bytes": WIDTH[ENCODINGS[encoding]] * channels,
        "rate": rate,
    }
    return options


class DeepgramFace(Face):
    """Translates between Deepgram live messages and one engine session."""

    name = "deepgram"

    def __init__(self, session: Any, server: StreamingServer, options: dict[str, Any]) -> None:
        super().__init__(session)
        self.server = server
        self.options = options
        self.request_id = str(uuid.uuid4())
        self.model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, server.model_name))
        self._started = False
        self._closing = False  # CloseStream received: Metadata goes out before the close
        self._segment_start_ms: dict[int, int] = {}

    # --------------------------------------------------------------- client

    def receive_bytes(self, data: bytes) -> None:
        step = self.options["rate"] * self.options["frame_bytes"] * FRAME_MS // 1000
        for start in range(0, len(data), step):
            self.runner.receive_audio(data[start : start + step])

    def receive_text(self, text: str) -> None:
        try:
            message = json.loads(text)
            kind = message.get("type") if isinstance(message, dict) else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            kind = None
        if kind == "KeepAlive":
            self.runner.receive_text('{"type": "keepalive"}')
        elif kind == "Finalize":
            self.runner.receive_text('{"type": "input.finalize"}')
        elif kind == "CloseStream":
            self._closing = True
            self.runner.receive_text('{"type": "input.end"}')
        elif kind == "Configure":
            self.reply({"type": "ConfigureFailure", "request_id": self.request_id,
                        "description": "Configure is not supported by this server"})  # fmt: skip
        else:
            self.reply(_error(f"unknown control message {text[:60]!r}; expected KeepAlive, "
                              "Finalize or CloseStream", "invalid_message"))  # fmt: skip

    # --------------------------------------------------------------- server

    def render(self, event: ev.Event, seq: int) -> list[str]:
        return [json.dumps(m, ensure_ascii=False) for m in self._translate(event)]

    def _translate(self, event: ev.Event) -> list[dict[str, Any]]:
        if isinstance(event, Reply):
            return [event.payload]
        if isinstance(event, ev.SpeechStarted):
            self._segment_start_ms[event.segment_id] = event.audio_ms
            if self.options["vad_events"]:
                return [{"type": "SpeechStarted", "channel": [0, 1],
                         "timestamp": event.audio_ms / 1000}]  # fmt: skip
            return []
        if isinstance(event, ev.TranscriptPartial):
            if not self.options["interim_results"]:
                return []
            start = self._segment_start_ms.get(event.segment_id, 0)
            text = " ".join(t for t in (event.committed, event.tentative.strip()) if t)
            return [self._results(text, start, event.audio_ms, [], final=False)]
        if isinstance(event, ev.TranscriptFinal):
            return self._final(event)
        if isinstance(event, ev.Warning) and event.code == "nothing_to_finalize":
            # Deepgram answers every Finalize; with nothing open, the answer is empty
            end = self.session.received_ms
            return [self._results("", end, end, [], final=True, from_finalize=True)]
        if isinstance(event, ev.Error):
            return [_error(event.message, event.code)]
        if isinstance(event, ev.SessionClosed):
            return [self._metadata()]
        return []

    def _final(self, event: ev.TranscriptFinal) -> list[dict[str, Any]]:
        self._segment_start_ms.pop(event.segment_id, None)
        words = [
            {"word": _plain(w["word"]), "start": w["start_ms"] / 1000, "end": w["end_ms"] / 1000,
             "confidence": w.get("probability", 1.0), "punctuated_word": w["word"]}
            for w in event.words or ()
        ]  # fmt: skip
        speech_final = event.reason == "endpoint" and self.options["endpointing"]
        out = [self._results(event.text, event.start_ms, event.end_ms, words, final=True,
                             speech_final=speech_final,
                             from_finalize=event.reason == "finalize")]  # fmt: skip
        if event.reason == "endpoint" and self.options["utterance_end_ms"] is not None:
            last = words[-1]["end"] if words else event.end_ms / 1000
            out.append({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last})
        return out

    def _results(
        self, text: str, start_ms: int, end_ms: int, words: list[dict[str, Any]], *,
        final: bool, speech_final: bool = False, from_finalize: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": max(0, end_ms - start_ms) / 1000,
            "start": start_ms / 1000,
            "is_final": final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {"transcript": text, "confidence": _confidence(text, words), "words": words}
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": {"name": self.server.model_name, "version": "1", "arch": "asr"},
                "model_uuid": self.model_uuid,
            },
        }

    def _metadata(self) -> dict[str, Any]:
        created = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        return {
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
            "sha256": "", "created": created.replace("+00:00", "Z"),
            "duration": self.session.received_ms / 1000, "channels": self.options["channels"],
            "models": [self.model_uuid],
            "model_info": {self.model_uuid: {"name": self.server.model_name, "version": "1",
                                             "arch": "asr"}},
        }  # fmt: skip

    def close_code(self) -> tuple[int, str]:
        fatal = self.session.fatal
        if fatal is not None:
            code = POLICY_VIOLATION if fatal.close_code == CloseCode.BAD_CONFIG else 1011
            return code, fatal.code
        return super().close_code()


def _confidence(text: str, words: list[dict[str, Any]]) -> float:
    """The transcript's confidence: the mean of its words' (each the model's probability of
    the word, or 1.0 where the model gives none); 1.0 for text without words (a partial) and
    0.0 for no text, as before word confidences existed."""
    if not text:
        return 0.0
    if not words:
        return 1.0
    return round(sum(w["confidence"] for w in words) / len(words), 4)


def _plain(word: str) -> str:
    """Deepgram's `word`: lower case, no punctuation (`punctuated_word` keeps them)."""
    return "".join(c for c in word.lower() if c.isalnum() or c == "'")


def _error(message: str, code: str) -> dict[str, Any]:
    return {"type": "Error", "variant": code, "description": message, "code": code,
            "message": message}  # fmt: skip
