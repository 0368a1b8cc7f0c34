"""The OpenAI audio API face: `POST /v1/audio/transcriptions`, `/translations`, `GET /v1/models`.

Wire shapes follow the OpenAI API as its official SDK sends and parses them
(shared/design/compatible-apis.md): a multipart upload, answers in `json`, `text`, `srt`, `vtt`
or `verbose_json`, server-sent `transcript.text.delta` / `transcript.text.done` events with
`stream=true`, and errors in OpenAI's envelope `{"error": {message, type, param, code}}` with
its status codes (400, 401, 404, 413, 429 with `Retry-After`, 500, 503 while draining).

A file is transcribed the way `asr-stream transcribe --offline` transcribes it
(`streaming.offline.transcribe_file`: Whisper's own long-form pipeline, whole final decodes
for other models), one piece at a time as a job on the model thread, so streaming sessions are
held up by at most one piece. Settings are validated by the session engine's own parsers
(`language`, `prompt` as context), so they fail here as they fail in a session.

Model names: the served model's id (as `/v1/models` lists it), and the aliases `default`,
`whisper-1`, `gpt-4o-transcribe`, `gpt-4o-mini-transcribe`, so that existing clients work
unchanged; anything else is `404 model_not_found`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from client.transcript_files import TranscriptWriter
from streaming.config import _parse_context, parse_language
from streaming.errors import ConfigError, ModelError
from streaming.events import wire_words
from streaming.languages import language_name
from streaming.offline import read_audio, transcribe_file
from streaming.recognizer import OfflineOptions, OfflineSegment
from streaming.server.connection import client_address

if TYPE_CHECKING:
    from streaming.server.service import StreamingServer

ALIASES = frozenset({"default", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"})
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = frozenset({"word", "segment"})
TAIL_BYTES = 4_096  # an epilogue after the closing boundary (RFC 2046) longer than this is refused


class ApiError(Exception):
    """An error answered in OpenAI's envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message, "type": self.kind, "param": self.param, "code": self.code
            }
        }  # fmt: skip

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


@dataclass(frozen=True)
class AudioRequest:
    """A validated transcription or translation request."""

    samples: Any  # 16 kHz mono float32
    options: OfflineOptions
    response_format: str
    granularities: frozenset[str]
    stream: bool


def routes(server: StreamingServer) -> list[Route]:
    api = OpenAiApi(server)
    return [
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.model, methods=["GET"]),
        Route("/v1/audio/transcriptions", api.transcriptions, methods=["POST"]),
        Route("/v1/audio/translations", api.translations, methods=["POST"]),
    ]


class OpenAiApi:
    """Handlers of the OpenAI audio endpoints for one server."""

    def __init__(self, server: StreamingServer):
        self.server = server

    # ---------------------------------------------------------------- models

    def _model_object(self) -> dict[str, Any]:
        return {
            "id": self.server.model_name, "object": "model", "created": self.server.created,
            "owned_by": "qwen3-asr-stream",
        }  # fmt: skip

    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except ApiError as error:
            return error.response()
        return JSONResponse({"object": "list", "data": [self._model_object()]})

    async def model(self, request: Request) -> Response:
        try:
            self._authorize(request)
            self._check_model(request.path_params["model"])
        except ApiError as error:
            return error.response()
        return JSONResponse(self._model_object())

    # ----------------------------------------------------------- transcribe

    async def transcriptions(self, request: Request) -> Response:
        return await self._audio(request, "transcribe")

    async def translations(self, request: Request) -> Response:
        return await self._audio(request, "translate")

    async def _audio(self, request: Request, task: str) -> Response:
        try:
            # admission first, as on the WebSocket faces: a refused request must not spend a
            # single-use grant
            client = client_address(request)
            self._admit(client)
            self._authorize(request)
            form = await self._form(request)
            try:
                parsed = await self._parse(form, task)
            finally:
                await form.close()  # the upload's spooled file
        except ApiError as error:
            return error.response()
        if parsed.stream:
            return StreamingResponse(self._events(parsed, client), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store"})  # fmt: skip
        try:
            async with self.server.http_session(client):
                segments = [s async for s in self._segments(parsed)]
        except ApiError as error:
            return error.response()
        return self._render(parsed, segments, task)

    def _authorize(self, request: Request) -> None:
        if not self.server.authorized(request.headers, request.query_params):
            raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")

    def _admit(self, client: str) -> None:
        """The WebSocket faces' admission rules (server full, per-client sessions and rate)."""
        if self.server.stopping:
            raise ApiError(503, "the server is shutting down", kind="server_error",
                           code="server_shutting_down")  # fmt: skip
        refusal = self.server.admission_refusal(client)
        if refusal is not None:
            retry = self.server.retry_after_s(client) if refusal.code == "rate_limited" else 1
            raise ApiError(429, refusal.message, kind="rate_limit_error", code=refusal.code,
                           headers={"Retry-After": str(retry)})  # fmt: skip

    def _check_model(self, model: str) -> None:
        if model != self.server.model_name and model not in ALIASES:
            raise ApiError(404, f"The model '{model}' does not exist; this server serves "
                           f"'{self.server.model_name}'", param="model",
                           code="model_not_found")  # fmt: skip

    async def _form(self, request: Request) -> FormData:
        limit = self.server.config.max_upload_bytes
        too_large = ApiError(413, f"the request is larger than {limit} bytes", param="file",
                             code="file_too_large")  # fmt: skip
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(400, "expected a multipart/form-data body with a file",
                           code="invalid_request")  # fmt: skip
        boundary = parse_options_header(content_type)[1].get(b"boundary", b"")
        close_delimiter = b"--" + boundary + b"--"
        received = 0
        tail = b""  # the body's last bytes: where the closing boundary must be
        receive = request.receive

        async def counted() -> Any:  # bounds a body sent without Content-Length too
            nonlocal received, tail
            message = await receive()
            body = message.get("body", b"")
            received += len(body)
            if received > limit:
                raise too_large
            tail = (tail + body)[-(len(close_delimiter) + TAIL_BYTES) :]
            ended = message["type"] == "http.request" and not message.get("more_body", False)
            # The multipart parser takes a body cut short for a complete one, without its last
            # part (and leaves that part's spooled file open): refused here instead.
            if ended and boundary and close_delimiter not in tail:
                raise ApiError(400, "the multipart body ends before its closing boundary "
                               "(a truncated upload?)", code="invalid_request")  # fmt: skip
            return message

        bounded = Request(request.scope, counted)
        try:
            return await bounded.form(max_files=1, max_fields=64)
        except ClientDisconnect:
            raise ApiError(400, "the client went away before the upload ended") from None
        except ApiError:
            raise
        except Exception as exc:  # python-multipart's parse errors have no common base
            raise ApiError(400, f"could not read the multipart body: {exc}") from None

    async def _parse(self, form: FormData, task: str) -> AudioRequest:
        info = self.server.recognizer.info
        model = _text(form, "model")
        if not model:
            raise ApiError(400, "you must provide a model parameter", param="model",
                           code="missing_required_parameter")  # fmt: skip
        self._check_model(model)
        if task == "translate" and not info.translates:
            raise ApiError(400, f"model {info.name} cannot translate; serve a multilingual "
                           "model (e.g. --model base)", param="model",
                           code="unsupported_model")  # fmt: skip
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "you must provide a file", param="file",
                           code="missing_required_parameter")  # fmt: skip
        response_format = _text(form, "response_format") or "json"
        if response_format not in FORMATS:
            raise ApiError(400, f"response_format {response_format!r} is not supported; use one "
                           f"of {', '.join(FORMATS)}", param="response_format",
                           code="invalid_value")  # fmt: skip
        granularities = frozenset(_values(form, "timestamp_granularities[]"))
        if granularities - GRANULARITIES:
            raise ApiError(400, f"timestamp_granularities must be word or segment, got "
                           f"{sorted(granularities - GRANULARITIES)}",
                           param="timestamp_granularities", code="invalid_value")  # fmt: skip
        if granularities and response_format != "verbose_json":
            raise ApiError(400, "timestamp_granularities requires response_format=verbose_json",
                           param="timestamp_granularities", code="invalid_value")  # fmt: skip
        if "word" in granularities and not info.word_timestamps:
            raise ApiError(400, f"model {info.name} does not time words",
                           param="timestamp_granularities", code="invalid_value")  # fmt: skip
        stream = (_text(form, "stream") or "false").lower() == "true"
        if stream and response_format not in ("json", "text"):
            raise ApiError(400, "stream=true answers with events; use response_format json or "
                           "text", param="stream", code="invalid_value")  # fmt: skip
        temperature = _text(form, "temperature") or "0"
        try:
            if not 0 <= float(temperature) <= 1:
                raise ValueError
        except ValueError:
            raise ApiError(400, f"temperature must be a number from 0 to 1, got {temperature!r}",
                           param="temperature", code="invalid_value") from None  # fmt: skip
        try:
            language = parse_language(_text(form, "language") or "auto", info.languages)
        except ConfigError as exc:
            raise ApiError(400, exc.message, param="language", code=exc.code) from None
        try:
            context = _parse_context(_text(form, "prompt") or "")
        except ConfigError as exc:
            raise ApiError(400, exc.message, param="prompt", code="invalid_value") from None
        try:
            samples = read_audio(io.BytesIO(await upload.read()))
        except ValueError as exc:
            raise ApiError(400, f"could not decode the audio file: {exc}", param="file",
                           code="invalid_value") from None  # fmt: skip
        options = OfflineOptions(
            language=None if task == "translate" else language, context=context, task=task,
            word_timestamps="word" in granularities,
        )  # fmt: skip
        return AudioRequest(samples, options, response_format, granularities, stream)

    async def _segments(self, parsed: AudioRequest) -> AsyncIterator[OfflineSegment]:
        """The transcript's segments, each computed as one job on the model thread."""
        recognizer = self.server.recognizer
        try:
            pieces: Iterator[OfflineSegment] = transcribe_file(
                recognizer, parsed.samples, parsed.options
            )
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        done = object()
        while True:
            try:
                piece = await self.server.worker.run(lambda: next(pieces, done))
            except ModelError as exc:
                raise ApiError(500, str(exc), kind="server_error", code="model_error") from None
            if piece is done:
                return
            assert isinstance(piece, OfflineSegment)
            yield piece

    async def _events(self, parsed: AudioRequest, client: str) -> AsyncIterator[bytes]:
        """Server-sent events: a delta per segment as it is decoded, then the whole text."""
        texts: list[str] = []
        try:
            async with self.server.http_session(client):
                async for segment in self._segments(parsed):
                    if not segment.text:
                        continue
                    delta = segment.text if not texts else " " + segment.text
                    texts.append(segment.text)
                    yield _sse({"type": "transcript.text.delta", "delta": delta})
        except ApiError as error:
            yield _sse(error.body())
            return
        usage = {"type": "duration", "seconds": _seconds(parsed)}
        yield _sse({"type": "transcript.text.done", "text": " ".join(texts), "usage": usage})
        yield b"data: [DONE]\n\n"

    def _render(self, parsed: AudioRequest, segments: list[OfflineSegment], task: str) -> Response:
        text = " ".join(s.text for s in segments if s.text)
        fmt = parsed.response_format
        if fmt == "text":
            return PlainTextResponse(text + "\n")
        if fmt in ("srt", "vtt"):
            out = io.StringIO()
            writer = TranscriptWriter(out, fmt)
            for segment in segments:
                writer.write(_final(segment))
            media = "text/vtt" if fmt == "vtt" else "text/plain"
            return Response(out.getvalue(), media_type=media)
        usage = {"type": "duration", "seconds": _seconds(parsed)}
        if fmt == "json":
            return JSONResponse({"text": text, "usage": usage})
        duration = len(parsed.samples) / 16_000
        language = segments[0].language if segments else parsed.options.language
        body: dict[str, Any] = {
            "task": task,
            "language": language_name(language).lower() if language else "unknown",
            "duration": round(duration, 3),
            "text": text,
            "segments": None,
            "words": None,
            "usage": usage,
        }
        if not parsed.granularities or "segment" in parsed.granularities:
            body["segments"] = [_segment(i, s) for i, s in enumerate(segments)]
        if "word" in parsed.granularities:
            body["words"] = _words(segments, duration)
        return JSONResponse(body)


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else None


def _values(form: FormData, name: str) -> list[str]:
    values = [v for v in form.getlist(name) if isinstance(v, str)]
    if not values and isinstance(form.get(name.rstrip("[]")), str):
        values = [str(form.get(name.rstrip("[]")))]
    return [v.strip() for v in values if v.strip()]


def _seconds(parsed: AudioRequest) -> int:
    return max(1, math.ceil(len(parsed.samples) / 16_000))


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def _final(segment: OfflineSegment) -> dict[str, Any]:
    """A segment in the shape of a transcript.final, for the subtitle writer."""
    final: dict[str, Any] = {
        "text": segment.text, "start_ms": segment.start_ms, "end_ms": segment.end_ms,
    }  # fmt: skip
    words = wire_words(segment.words)
    if words:
        final["words"] = words
    return final


def _segment(index: int, segment: OfflineSegment) -> dict[str, Any]:
    return {
        "id": index,
        "seek": segment.start_ms // 10,  # in 10 ms frames, as Whisper counts it
        "start": segment.start_ms / 1000,
        "end": segment.end_ms / 1000,
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def _words(segments: list[OfflineSegment], duration: float) -> list[dict[str, Any]]:
    """Timed words in order, each inside [0, duration] and never before the one before it."""
    out: list[dict[str, Any]] = []
    last = 0.0
    for segment in segments:
        for word in segment.words:
            if not word.text.strip():
                continue
            start = min(max(word.start_ms / 1000, last), duration)
            end = min(max(word.end_ms / 1000, start), duration)
            out.append({"word": word.text.strip(), "start": start, "end": end})
            last = start
    return out
