"""Saving finals as plain text, JSON lines, SRT or WebVTT.

Writers append each final as it arrives and flush, so a session interrupted by Ctrl-C or a
dropped connection still leaves a valid file with everything finalized so far.

Subtitle cues follow common captioning practice: at most two lines of 42 characters. A final
with word timings is split into cues at word boundaries with the words' own times; a final
without them becomes one cue spanning the segment.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

LINE_CHARS = 42
CUE_CHARS = 2 * LINE_CHARS
FORMATS = ("text", "jsonl", "srt", "vtt")
SUFFIXES = {".txt": "text", ".jsonl": "jsonl", ".json": "jsonl", ".srt": "srt", ".vtt": "vtt"}


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    text: str


def format_for(path: Path, explicit: str | None = None) -> str:
    """The output format: the one asked for, else the one the file name implies.

    Raises:
        ValueError: neither names a known format.
    """
    if explicit:
        if explicit not in FORMATS:
            raise ValueError(f"unknown output format {explicit!r}; use one of {FORMATS}")
        return explicit
    try:
        return SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"cannot tell the format of {path.name}; name it .txt, .jsonl, .srt or .vtt "
            "or pass --output-format"
        ) from None


def cues(final: dict[str, Any]) -> list[Cue]:
    """Subtitle cues for one transcript.final event."""
    text = final.get("text", "").strip()
    if not text:
        return []
    words = final.get("words")
    if not words:
        return [Cue(final["start_ms"], max(final["end_ms"], final["start_ms"] + 1), text)]
    out: list[Cue] = []
    current: list[dict[str, Any]] = []
    for word in words:
        candidate = " ".join(w["word"] for w in [*current, word])
        if current and len(candidate) > CUE_CHARS:
            out.append(_cue(current))
            current = []
        current.append(word)
    if current:
        out.append(_cue(current))
    return out


def _cue(words: list[dict[str, Any]]) -> Cue:
    start, end = words[0]["start_ms"], max(words[-1]["end_ms"], words[0]["start_ms"] + 1)
    return Cue(start, end, " ".join(w["word"] for w in words))


def _lines(text: str) -> str:
    return "\n".join(textwrap.wrap(text, LINE_CHARS)) or text


def _clock(ms: int, separator: str) -> str:
    hours, rest = divmod(int(ms), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


class TranscriptWriter:
    """Appends finals to a file in one of FORMATS."""

    def __init__(self, out: TextIO, fmt: str):
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; use one of {FORMATS}")
        self.out = out
        self.format = fmt
        self._cue_number = 0
        if fmt == "vtt":
            out.write("WEBVTT\n\n")
            out.flush()

    @classmethod
    def open(cls, path: Path, fmt: str | None = None) -> TranscriptWriter:
        """Creates (or truncates) `path`; the format comes from `fmt` or the file name."""
        fmt = format_for(path, fmt)
        return cls(path.open("w", encoding="utf-8"), fmt)

    def write(self, final: dict[str, Any]) -> None:
        """Appends one transcript.final event."""
        if self.format == "text":
            if final.get("text"):
                self.out.write(final["text"] + "\n")
        elif self.format == "jsonl":
            self.out.write(json.dumps(final, ensure_ascii=False) + "\n")
        else:
            for cue in cues(final):
                self._cue_number += 1
                separator = "," if self.format == "srt" else "."
                timing = f"{_clock(cue.start_ms, separator)} --> {_clock(cue.end_ms, separator)}"
                number = f"{self._cue_number}\n" if self.format == "srt" else ""
                self.out.write(f"{number}{timing}\n{_lines(cue.text)}\n\n")
        self.out.flush()

    def close(self) -> None:
        self.out.close()
