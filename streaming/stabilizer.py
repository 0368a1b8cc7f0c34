"""Deciding which tentative words become committed.

Policy (per segment), after each hypothesis:

1. LocalAgreement-2: a word is a candidate when this hypothesis and the previous one agree on
   it and on every word before it (compared case- and punctuation-insensitively; the newest
   spelling is the one committed).
2. Holdback: a candidate is committed only once it ends at least `holdback_ms` before the live
   edge (the end of the audio that hypothesis saw), so a word still being spoken is never frozen.
3. Max delay: a word that ends more than `max_delay_ms` before the live edge is committed even
   without agreement, which bounds how long any word can stay tentative.

Committed words are fed back to the recognizer as a forced prefix and are never revised.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from streaming.config import Stability
from streaming.recognizer import Word

_NON_WORD = re.compile(r"[^\w']+")


def _key(word: Word) -> str:
    """What two hypotheses must share for a word to count as agreed."""
    return _NON_WORD.sub("", word.text.lower())


@dataclass
class Stabilizer:
    """LocalAgreement-2 with holdback and a maximum delay, for one segment."""

    policy: Stability
    # the tentative words of the previous hypothesis, beyond what is committed now
    _previous: tuple[Word, ...] = field(default=(), init=False)

    def update(self, tail: Sequence[Word], live_edge_ms: int) -> tuple[list[Word], list[Word]]:
        """Takes the words a hypothesis adds after the committed prefix.

        Args:
            tail: the hypothesis' words after the currently committed ones, timed from the
                segment start.
            live_edge_ms: end of the audio the hypothesis saw, from the segment start.

        Returns:
            (newly committed words, remaining tentative words), in order.
        """
        agreed = 0
        for new, old in zip(tail, self._previous, strict=False):
            if _key(new) != _key(old):
                break
            agreed += 1
        commit = 0
        for i, word in enumerate(tail):
            settled = word.end_ms <= live_edge_ms - self.policy.holdback_ms
            overdue = word.end_ms <= live_edge_ms - self.policy.max_delay_ms
            if (i < agreed and settled) or overdue:
                commit = i + 1
            else:
                break
        committed, tentative = list(tail[:commit]), list(tail[commit:])
        self._previous = tuple(tentative)
        return committed, tentative
