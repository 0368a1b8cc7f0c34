"""Live captions in a terminal.

Finals scroll up as ordinary lines. The segment being spoken is one line at the bottom,
rewritten in place: its committed text in the normal style, its tentative tail dimmed, so a
reader sees which words may still change. Without a terminal (a pipe, a file) only finals are
written, one per line.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any, TextIO

DIM = "\x1b[2m"
RESET = "\x1b[0m"
CLEAR_LINE = "\r\x1b[2K"


class TerminalCaptions:
    """Renders protocol events as captions on a text stream."""

    def __init__(self, out: TextIO | None = None, *, live: bool | None = None):
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self._line_shown = False

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "transcript.partial" and self.live:
            self._show(event["committed"], event["tentative"])
        elif kind == "transcript.final":
            self._clear()
            if event["text"]:
                self.out.write(event["text"] + "\n")
            self.out.flush()
        elif kind in ("error", "warning"):
            self._clear()
            print(f"[{kind}] {event.get('code')}: {event.get('message')}", file=sys.stderr)

    def close(self) -> None:
        self._clear()

    def _show(self, committed: str, tentative: str) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        overflow = len(committed) + len(tentative) + 1 - width  # +1 for the ellipsis
        if overflow > 0:  # keep the newest words in view
            from_committed = min(overflow, len(committed))
            committed = "…" + committed[from_committed:]
            tentative = tentative[overflow - from_committed :]
        self.out.write(f"{CLEAR_LINE}{committed}{DIM}{tentative}{RESET}")
        self.out.flush()
        self._line_shown = True

    def _clear(self) -> None:
        if self._line_shown:
            self.out.write(CLEAR_LINE)
            self._line_shown = False
