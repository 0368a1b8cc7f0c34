"""LocalAgreement-2 with holdback and maximum delay."""

from __future__ import annotations

from streaming.config import Stability
from streaming.recognizer import Word
from streaming.stabilizer import Stabilizer


def words(*spec):
    return [Word(text, end - 200, end) for text, end in spec]


def test_a_word_needs_two_agreeing_hypotheses():
    """The first hypothesis commits nothing; the second commits the agreed prefix."""
    s = Stabilizer(Stability(holdback_ms=0, max_delay_ms=60_000))
    assert s.update(words((" go", 400), (" forward", 900)), 1000)[0] == []
    committed, tentative = s.update(words((" go", 400), (" for", 900), (" ten", 1400)), 1500)
    assert [w.text for w in committed] == [" go"]
    assert [w.text for w in tentative] == [" for", " ten"]


def test_agreement_ignores_case_and_punctuation_and_commits_the_newest_spelling():
    """'meters' then 'Meters.' agree; the committed word is the newer 'Meters.'."""
    s = Stabilizer(Stability(holdback_ms=0, max_delay_ms=60_000))
    s.update(words((" meters", 500)), 1000)
    committed, _ = s.update(words((" Meters.", 500)), 1500)
    assert [w.text for w in committed] == [" Meters."]


def test_holdback_keeps_words_near_the_live_edge_tentative():
    """An agreed word ending within holdback_ms of the edge stays tentative."""
    s = Stabilizer(Stability(holdback_ms=250, max_delay_ms=60_000))
    s.update(words((" go", 400), (" forward", 900)), 1000)
    committed, tentative = s.update(words((" go", 400), (" forward", 900)), 1100)
    assert [w.text for w in committed] == [" go"]  # forward ends 200 ms before the edge
    assert [w.text for w in tentative] == [" forward"]


def test_max_delay_forces_old_words_even_without_agreement():
    """A word that ended more than max_delay_ms ago is committed though hypotheses differ."""
    s = Stabilizer(Stability(holdback_ms=250, max_delay_ms=1000))
    s.update(words((" I'll", 500)), 1000)
    committed, _ = s.update(words((" Unless", 500), (" to", 900)), 1600)
    assert [w.text for w in committed] == [" Unless"]


def test_disagreement_stops_commitment_at_the_first_differing_word():
    """Words after a disagreement stay tentative even if later words agree again."""
    s = Stabilizer(Stability(holdback_ms=0, max_delay_ms=60_000))
    s.update(words((" a", 100), (" b", 200), (" c", 300)), 1000)
    committed, tentative = s.update(words((" a", 100), (" x", 200), (" c", 300)), 1000)
    assert [w.text for w in committed] == [" a"]
    assert [w.text for w in tentative] == [" x", " c"]
