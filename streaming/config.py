"""Session settings and server limits, parsed and validated from the wire.

`session.start` (or the WebSocket URL's query parameters) sets a `SessionConfig`; `session.update`
changes its `context`, `hotwords` and `language` mid-stream. Anything out of range raises a
`ConfigError` that names the field and the value received.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streaming.audio import AudioFormat
from streaming.errors import ConfigError
from streaming.languages import normalize_language

MAX_CONTEXT_CHARS = 2_000  # longer context only dilutes the prompt and slows every decode
MAX_HOTWORDS = 100
MAX_HOTWORD_CHARS = 100


@dataclass(frozen=True)
class Endpointing:
    """When a segment of speech ends."""

    # trailing silence that ends a segment, ms
    silence_ms: int = 600
    # a segment longer than this is cut (at the quietest recent point) and finalized, seconds
    max_segment_s: float = 30.0
    # audio kept before the first voiced frame of a segment, ms (None: the server's setting)
    preroll_ms: int | None = None


@dataclass(frozen=True)
class Stability:
    """When tentative words become committed (never revised)."""

    # an agreed word is committed only once it ends this long before the live edge, ms
    holdback_ms: int = 250
    # a word whose end is older than this is committed even without agreement, ms
    max_delay_ms: int = 2_000


@dataclass(frozen=True)
class SessionConfig:
    """Everything a client can choose about its session."""

    audio: AudioFormat = field(default_factory=AudioFormat)
    # ISO code, or None to let the model detect it
    language: str | None = None
    # free text that biases recognition: names, jargon, topic
    context: str = ""
    # words to favour; joined into the recognizer's prompt
    hotwords: tuple[str, ...] = ()
    # send transcript.partial events (off: finals only, and no intermediate decoding)
    partials: bool = True
    # attach word timings to finals (only where the model aligns words for real)
    word_timestamps: bool = False
    endpointing: Endpointing = field(default_factory=Endpointing)
    stability: Stability = field(default_factory=Stability)

    def to_dict(self) -> dict[str, Any]:
        """The effective settings, in the shape of `session.start`."""
        out = dataclasses.asdict(self)
        out["language"] = self.language or "auto"
        out["hotwords"] = list(self.hotwords)
        return out


def _expect(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if isinstance(value, bool) and kind is not bool and bool not in _as_tuple(kind):
        raise ConfigError(f"{name} must be {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be {_kind_name(kind)}, got {value!r}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _number_in(value: Any, name: str, low: float, high: float, integer: bool = False) -> Any:
    _expect(value, int if integer else (int, float), name)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return value


def parse_language(value: Any, supported: frozenset[str] | None) -> str | None:
    """Normalises a language setting and checks that the model can transcribe it."""
    _expect(value, str, "language")
    try:
        code = normalize_language(value)
    except ValueError as exc:
        raise ConfigError(str(exc), code="unsupported_language", fatal=False) from exc
    if code is not None and supported is not None and code not in supported:
        raise ConfigError(
            f"this model cannot transcribe language {value!r}; "
            f"it supports: {', '.join(sorted(supported))}",
            code="unsupported_language",
            fatal=False,
        )
    return code


def _parse_hotwords(value: Any) -> tuple[str, ...]:
    _expect(value, list, "hotwords")
    if len(value) > MAX_HOTWORDS:
        raise ConfigError(f"hotwords may hold at most {MAX_HOTWORDS} entries, got {len(value)}")
    for word in value:
        _expect(word, str, "hotwords[]")
        if not 0 < len(word.strip()) <= MAX_HOTWORD_CHARS:
            raise ConfigError(f"each hotword must be 1-{MAX_HOTWORD_CHARS} characters: {word!r}")
    return tuple(w.strip() for w in value)


def _parse_context(value: Any) -> str:
    _expect(value, str, "context")
    if len(value) > MAX_CONTEXT_CHARS:
        raise ConfigError(
            f"context may be at most {MAX_CONTEXT_CHARS} characters, got {len(value)}"
        )
    return value


def parse_session_start(
    message: Mapping[str, Any],
    base: SessionConfig,
    *,
    languages: frozenset[str] | None,
    max_segment_s: float,
) -> tuple[SessionConfig, list[str]]:
    """Builds a session config from a `session.start` message on top of `base`.

    Returns:
        The config and the names of fields that were ignored because this server does not know them.

    Raises:
        ConfigError: a field is malformed or out of range.
    """
    known = {
        "type", "audio", "language", "context", "hotwords", "partials",
        "word_timestamps", "endpointing", "stability",
    }  # fmt: skip
    ignored = sorted(set(message) - known)
    changes: dict[str, Any] = {}
    if "audio" in message:
        audio = _expect(message["audio"], dict, "audio")
        unknown_audio = sorted(set(audio) - {"encoding", "sample_rate", "channels"})
        ignored += [f"audio.{k}" for k in unknown_audio]
        changes["audio"] = AudioFormat(
            encoding=audio.get("encoding", base.audio.encoding),
            sample_rate=audio.get("sample_rate", base.audio.sample_rate),
            channels=audio.get("channels", base.audio.channels),
        )
    if "language" in message:
        changes["language"] = parse_language(message["language"], languages)
    if "context" in message:
        changes["context"] = _parse_context(message["context"])
    if "hotwords" in message:
        changes["hotwords"] = _parse_hotwords(message["hotwords"])
    if "partials" in message:
        changes["partials"] = _expect(message["partials"], bool, "partials")
    if "word_timestamps" in message:
        changes["word_timestamps"] = _expect(message["word_timestamps"], bool, "word_timestamps")
    if "endpointing" in message:
        ep = _expect(message["endpointing"], dict, "endpointing")
        changes["endpointing"] = Endpointing(
            silence_ms=_number_in(
                ep.get("silence_ms", base.endpointing.silence_ms),
                "endpointing.silence_ms", 100, 10_000, integer=True,
            ),
            max_segment_s=_number_in(
                ep.get("max_segment_s", min(base.endpointing.max_segment_s, max_segment_s)),
                "endpointing.max_segment_s", 1, max_segment_s,
            ),
            preroll_ms=None if ep.get("preroll_ms", base.endpointing.preroll_ms) is None
            else _number_in(ep.get("preroll_ms", base.endpointing.preroll_ms),
                            "endpointing.preroll_ms", 0, 2_000, integer=True),
        )  # fmt: skip
    if "stability" in message:
        st = _expect(message["stability"], dict, "stability")
        holdback = _number_in(
            st.get("holdback_ms", base.stability.holdback_ms),
            "stability.holdback_ms", 0, 10_000, integer=True,
        )  # fmt: skip
        max_delay = _number_in(
            st.get("max_delay_ms", base.stability.max_delay_ms),
            "stability.max_delay_ms", 200, 60_000, integer=True,
        )  # fmt: skip
        if max_delay < holdback:
            raise ConfigError(
                f"stability.max_delay_ms ({max_delay}) must not be below "
                f"stability.holdback_ms ({holdback})"
            )
        changes["stability"] = Stability(holdback_ms=holdback, max_delay_ms=max_delay)
    return dataclasses.replace(base, **changes), ignored


def parse_session_update(
    message: Mapping[str, Any], current: SessionConfig, *, languages: frozenset[str] | None
) -> SessionConfig:
    """Applies a mid-stream `session.update` (context, hotwords, language only).

    Raises:
        ConfigError: a field is malformed, or the update tries to change something fixed.
    """
    fixed = sorted(set(message) - {"type", "context", "hotwords", "language"})
    if fixed:
        raise ConfigError(
            f"session.update can change only context, hotwords and language; "
            f"cannot change {', '.join(fixed)} mid-stream (update rejected)",
            fatal=False,
        )
    changes: dict[str, Any] = {}
    if "context" in message:
        changes["context"] = _parse_context(message["context"])
    if "hotwords" in message:
        changes["hotwords"] = _parse_hotwords(message["hotwords"])
    if "language" in message:
        changes["language"] = parse_language(message["language"], languages)
    return dataclasses.replace(current, **changes)


def config_from_query(params: Mapping[str, str], base: SessionConfig) -> dict[str, Any]:
    """Translates URL query parameters into the fields of a `session.start` message.

    Raises:
        ConfigError: a number or flag in the query does not parse.
    """
    message: dict[str, Any] = {}
    audio: dict[str, Any] = {}
    for name in ("sample_rate", "channels"):
        if name in params:
            try:
                audio[name] = int(params[name])
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {params[name]!r}") from None
    if "encoding" in params:
        audio["encoding"] = params["encoding"]
    if audio:
        message["audio"] = audio
    for name in ("language", "context"):
        if name in params:
            message[name] = params[name]
    if "hotwords" in params:
        message["hotwords"] = [w for w in params["hotwords"].split(",") if w.strip()]
    for name in ("partials", "word_timestamps"):
        if name in params:
            flag = params[name].lower()
            if flag not in ("true", "false", "1", "0"):
                raise ConfigError(f"{name} must be true or false, got {params[name]!r}")
            message[name] = flag in ("true", "1")
    return message
