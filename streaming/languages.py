"""Language names and ISO codes accepted in `language` settings.

Clients may say "en", "EN", "English" or "english". Everything is normalised to the ISO 639-1
code (or the code Whisper uses where there is none, e.g. "yue" for Cantonese). The table comes
from transformers' Whisper tokenizer, which covers every language either model family knows.
"""

from __future__ import annotations

from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

AUTO = "auto"


def normalize_language(value: str) -> str | None:
    """Returns the ISO code for a language name or code, None for "auto"/"".

    Raises:
        ValueError: the name is not a known language.
    """
    key = value.strip().lower()
    if key in ("", AUTO, "none", "null"):
        return None
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise ValueError(f"unknown language {value!r}; use an ISO code such as 'en' or a name")


def language_name(code: str) -> str:
    """The English name of an ISO code, title-cased ("en" -> "English")."""
    return LANGUAGES.get(code, code).title()
