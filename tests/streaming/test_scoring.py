"""Scoring text against the references' form, in English and in languages without spaces."""

from __future__ import annotations

from functools import partial

from streaming.scoring import corpus_wer, normalize


def test_english_is_scored_per_word_with_numbers_and_titles_spelled_out():
    assert normalize("Mr. Smith paid $12, twice-over.") == [
        "mister", "smith", "paid", "twelve", "twice", "over",
    ]  # fmt: skip


def test_a_language_without_spaces_is_scored_per_character():
    """A Japanese sentence is one whitespace "word": scored per word, any one wrong character
    would cost the whole sentence. Numbers are spelled the way the language writes them."""
    assert normalize("ご注文は2日に届きます。", "ja") == list("ご注文は二日に届きます")
    result = corpus_wer(
        [("さようなら。さようなら。", "さようなら。")], partial(normalize, language="ja")
    )
    assert (result.errors, result.words) == (5, 10)


def test_a_language_num2words_does_not_know_keeps_its_digits():
    assert normalize("一，二，3。", "zh") == ["一", "二", "3"]
