"""Errors of the streaming service, and the wire codes they map to.

Hierarchy::

    StreamingError                 base: has a wire `code`, a message, and whether it is fatal
    ├── ProtocolError              the client broke the protocol (bad JSON, unknown type, ...)
    │   └── AudioFormatError       audio that cannot be decoded as announced (odd byte count, ...)
    ├── ConfigError                a session setting is invalid or unsupported (rate, encoding, ...)
    ├── CapacityError              the server cannot take the session (full)
    │   └── OverloadError          ... or cannot keep up with it any more
    └── ModelError                 the recognizer failed on a request

Every error reaches the client as an `error` event `{code, message, fatal}`. A fatal error is
followed by a WebSocket close with the 4xxx code from `CLOSE_CODES` (or a standard code where one
fits: 1013 "try again later" for a full server). Non-fatal errors leave the session running: the
offending frame or message is rejected and the client is told so, never silently dropped.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes used by the server (RFC 6455 §7.4 and the 4000-4999 private range)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutdown
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # server full
    BAD_CONFIG = 4001  # session.start / query parameters cannot be served
    PROTOCOL_VIOLATION = 4002  # repeated or unrecoverable protocol misuse
    OVERLOADED = 4003  # the server fell too far behind this session's audio
    SLOW_CLIENT = 4004  # the client does not read its events
    IDLE_TIMEOUT = 4005  # no audio or keepalive for too long
    SESSION_LIMIT = 4006  # max_session_s reached
    UNAUTHORIZED = 4008  # missing or wrong token
    FORBIDDEN_ORIGIN = 4009  # a browser page of an origin not allowed


class StreamingError(Exception):
    """Base of all errors that are reported to a client as an `error` event."""

    code: str = "internal_error"
    fatal: bool = False
    close_code: CloseCode = CloseCode.INTERNAL_ERROR

    def __init__(self, message: str, *, code: str | None = None, fatal: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if fatal is not None:
            self.fatal = fatal


class ProtocolError(StreamingError):
    """A message the protocol does not allow; the message is rejected, the session goes on."""

    code = "invalid_message"
    close_code = CloseCode.PROTOCOL_VIOLATION


class AudioFormatError(ProtocolError):
    """An audio frame that does not match the announced format; the frame is rejected."""

    code = "invalid_audio_frame"


class ConfigError(StreamingError):
    """A session setting that is invalid or that this server cannot serve."""

    code = "invalid_config"
    fatal = True
    close_code = CloseCode.BAD_CONFIG


class CapacityError(StreamingError):
    """The server cannot take or keep this session."""

    code = "server_full"
    fatal = True
    close_code = CloseCode.TRY_AGAIN_LATER


class OverloadError(CapacityError):
    """The server fell so far behind a session's audio that it must give the session up."""

    code = "overloaded"
    close_code = CloseCode.OVERLOADED


class ModelError(StreamingError):
    """The recognizer failed on a request."""

    code = "model_error"
    fatal = True
    close_code = CloseCode.INTERNAL_ERROR
