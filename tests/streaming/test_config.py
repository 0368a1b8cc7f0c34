"""Session settings from session.start, session.update and query parameters."""

from __future__ import annotations

import pytest

from streaming.config import (
    SessionConfig,
    config_from_query,
    parse_session_start,
    parse_session_update,
)
from streaming.errors import ConfigError

ENGLISH = frozenset({"en"})


def start(message, languages=ENGLISH):
    return parse_session_start(message, SessionConfig(), languages=languages, max_segment_s=30)


def test_a_full_session_start_is_applied():
    """Every documented field of session.start lands in the config."""
    config, ignored = start(
        {
            "type": "session.start",
            "audio": {"encoding": "pcm_f32le", "sample_rate": 48000, "channels": 2},
            "language": "English",
            "context": "Dashwood, Norland",
            "hotwords": ["Dashwood"],
            "partials": False,
            "word_timestamps": True,
            "endpointing": {"silence_ms": 800, "max_segment_s": 20},
            "stability": {"holdback_ms": 300, "max_delay_ms": 2500},
        }
    )
    assert ignored == []
    assert config.audio.sample_rate == 48000 and config.audio.channels == 2
    assert config.language == "en"
    assert config.hotwords == ("Dashwood",)
    assert not config.partials and config.word_timestamps
    assert config.endpointing.silence_ms == 800 and config.endpointing.max_segment_s == 20
    assert config.stability.max_delay_ms == 2500


def test_unknown_fields_are_reported_not_fatal():
    """Fields this server does not know are listed as ignored (forward compatibility)."""
    _, ignored = start({"type": "session.start", "client": {"name": "x"}, "audio": {"bits": 8}})
    assert ignored == ["client", "audio.bits"]


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"endpointing": {"silence_ms": 50}}, "endpointing.silence_ms"),
        ({"endpointing": {"max_segment_s": 45}}, "endpointing.max_segment_s"),
        ({"stability": {"holdback_ms": 900, "max_delay_ms": 500}}, "max_delay_ms"),
        ({"partials": "yes"}, "partials"),
        ({"hotwords": "Dashwood"}, "hotwords"),
        ({"context": "x" * 5000}, "context"),
        ({"audio": {"sample_rate": 1000}}, "sample_rate"),
        ({"endpointing": {"silence_ms": True}}, "endpointing.silence_ms"),
    ],
)
def test_bad_values_name_the_field(message, needle):
    """Each out-of-range or mistyped field raises a ConfigError that names it."""
    with pytest.raises(ConfigError, match=needle):
        start({"type": "session.start", **message})


def test_a_language_the_model_lacks_is_a_non_fatal_error():
    """Asking an English-only model for German is refused without ending the session."""
    with pytest.raises(ConfigError) as info:
        start({"language": "de"})
    assert info.value.code == "unsupported_language" and not info.value.fatal


def test_language_names_and_codes_normalise_to_iso_codes():
    """'English', 'EN', 'en' all mean en; 'auto' means detect."""
    for value in ("English", "EN", "en"):
        assert start({"language": value})[0].language == "en"
    assert start({"language": "auto"})[0].language is None


def test_session_update_changes_only_text_settings():
    """session.update may change context, hotwords and language, nothing else."""
    config = parse_session_update(
        {"type": "session.update", "context": "cards", "hotwords": ["spades"]},
        SessionConfig(),
        languages=None,
    )
    assert config.context == "cards" and config.hotwords == ("spades",)
    with pytest.raises(ConfigError, match="audio"):
        parse_session_update({"audio": {"sample_rate": 8000}}, config, languages=None)


def test_query_parameters_map_to_session_start_fields():
    """?sample_rate=&language=&hotwords=a,b&partials=false become session.start fields."""
    message = config_from_query(
        {"sample_rate": "8000", "language": "en", "hotwords": "a,b", "partials": "false"},
        SessionConfig(),
    )
    assert message == {
        "audio": {"sample_rate": 8000},
        "language": "en",
        "hotwords": ["a", "b"],
        "partials": False,
    }
    with pytest.raises(ConfigError, match="sample_rate"):
        config_from_query({"sample_rate": "fast"}, SessionConfig())
