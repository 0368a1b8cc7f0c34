"""What counts as a decoding loop, for every recognizer.

A loop is a token pattern of at most `LOOP_MAX_PERIOD` tokens repeated back to back up to the
end of the text, at least `LOOP_MIN_REPEATS` times and over at least `LOOP_MIN_TOKENS` tokens.
Recognizers look for one only when a decode has used up its token budget (budgets are sized to
the densest real speech, tests/test_guards.py): within the budget a repetition is speech ("five
five five", "no, no, no, no, no, no"), past it the model is looping. Checked on the references
of every test set with the Whisper and Qwen tokenizers: none is a loop at any token.
"""

from __future__ import annotations

from collections.abc import Sequence

LOOP_MAX_PERIOD = 16  # longest token pattern checked for a loop
LOOP_MIN_REPEATS = 4  # copies in a row that make a loop ...
LOOP_MIN_TOKENS = 12  # ... when they span at least this many tokens ("no no no no" is speech)


def repetition_start(
    tokens: Sequence[int],
    *,
    max_period: int = LOOP_MAX_PERIOD,
    min_repeats: int = LOOP_MIN_REPEATS,
    min_tokens: int = LOOP_MIN_TOKENS,
) -> tuple[int, int] | None:
    """Finds a loop that ends the sequence: a pattern repeated back to back up to the last token.

    Returns:
        (start, period): the run of copies begins at `start`; keeping `tokens[:start + period]`
        keeps one copy. None when the end of the sequence is not a loop.
    """
    n = len(tokens)
    for period in range(1, max_period + 1):
        copies = max(min_repeats, -(-min_tokens // period))
        if n < period * copies:
            break
        tail = tokens[n - period :]
        start = n - period
        while start - period >= 0 and list(tokens[start - period : start]) == list(tail):
            start -= period
        if (n - start) // period >= copies:
            return start, period
    return None


def without_loop(tokens: Sequence[int], history: Sequence[int] = ()) -> list[int] | None:
    """`tokens` cut to one copy of a loop that ends `history + tokens`; None if there is none.

    `history` is text before `tokens` that stays as it is (a forced prefix): a loop that began
    there keeps its copy in it, and `tokens` loses all of theirs.
    """
    found = repetition_start([*history, *tokens])
    if found is None:
        return None
    start, period = found
    return list(tokens[: max(start + period - len(history), 0)])
