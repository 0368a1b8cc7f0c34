"""The embedded Whisper recognizer on real speech."""

from __future__ import annotations

import numpy as np

from streaming.models.whisper import _drop_unsupported, _trim_repetition
from streaming.recognizer import DecodeRequest, Word, join_words
from streaming.scoring import corpus_wer


def test_offline_decodes_of_the_corpus_reach_the_reference_wer(whisper, corpus):
    """Whole-utterance decodes of the 13 files score at most 10 % WER (reference: 7.3 %)."""
    requests = [DecodeRequest(audio=u.samples(), final=True) for u in corpus]
    hypotheses = whisper.decode(requests)  # one batch: exercises batching too
    result = corpus_wer(
        (u.reference, join_words(h.words)) for u, h in zip(corpus, hypotheses, strict=True)
    )
    assert result.wer <= 0.10, result


def test_batched_and_single_decodes_agree(whisper, corpus):
    """A request decoded in a batch gives the same words as decoded alone."""
    requests = [DecodeRequest(audio=u.samples()) for u in corpus[:4]]
    batch = whisper.decode(requests)
    for request, together in zip(requests, batch, strict=True):
        alone = whisper.decode([request])[0]
        assert [w.text for w in alone.words] == [w.text for w in together.words]


def test_committed_words_come_back_verbatim_and_are_continued(whisper, corpus):
    """With a forced prefix the hypothesis starts with exactly those words, then goes on."""
    audio = corpus[8].samples()  # "and mister john dashwood had then leisure ..."
    committed = (Word(" And", 0, 300), Word(" Mr.", 300, 700), Word(" John", 700, 1000))
    hypothesis = whisper.decode([DecodeRequest(audio=audio, committed=committed)])[0]
    assert hypothesis.words[:3] == committed
    assert "dashwood" in join_words(hypothesis.words[3:]).lower()


def test_words_are_timed_in_order_inside_the_audio(whisper, corpus):
    """Word times are non-decreasing and within the segment's duration."""
    audio = corpus[8].samples()
    words = whisper.decode([DecodeRequest(audio=audio)])[0].words
    ends = [w.end_ms for w in words]
    assert ends == sorted(ends)
    assert all(0 <= w.start_ms <= w.end_ms <= len(audio) / 16 for w in words)
    assert words[-1].end_ms > len(audio) / 16 - 1500  # the last word ends near the end


def test_silence_decodes_to_no_words(whisper):
    """Two seconds of silence give an empty hypothesis, not a hallucination."""
    assert whisper.decode([DecodeRequest(audio=np.zeros(32000, np.float32))])[0].words == ()


def test_a_complete_prefix_gets_no_invented_continuation(whisper, corpus):
    """When the committed words already cover the utterance, nothing is appended."""
    audio = corpus[5].samples()  # "feels like these days go on forever"
    full = whisper.decode([DecodeRequest(audio=audio)])[0].words
    again = whisper.decode([DecodeRequest(audio=audio, committed=full, final=True)])[0].words
    assert join_words(again) == join_words(full)


def test_words_piled_on_one_instant_are_dropped():
    """Zero-length words stacked at one time, and the word running into them, are removed."""
    real = (Word(" forever.", 2000, 3300),)
    new = [Word(" I", 3340, 3600), Word(" feel", 3600, 3600), Word(" like", 3600, 3600)]
    assert _drop_unsupported(real, new) == ()
    ok = [Word(" man.", 2700, 3420)]
    assert _drop_unsupported(real, ok) == tuple(ok)


def test_punctuation_only_tail_after_punctuated_text_is_dropped():
    """' . .' after 'them.' is dropped; '.' after 'clubs' is kept."""
    assert _drop_unsupported((Word(" them.", 0, 10),), [Word(" . .", 20, 30)]) == ()
    assert _drop_unsupported((Word(" clubs", 0, 10),), [Word(".", 20, 30)]) == (Word(".", 20, 30),)


def test_runaway_repetition_is_trimmed_to_one_copy():
    """A token loop at the end of a capped generation keeps a single copy of the pattern."""
    assert _trim_repetition([1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5]) == [1, 2, 3, 4, 5]
    assert _trim_repetition([7, 7, 7, 7, 7]) == [7]
    assert _trim_repetition([1, 2, 3, 4]) == [1, 2, 3, 4]
