"""Finals saved as text, JSON lines, SRT and WebVTT, validated by parsing them back."""

from __future__ import annotations

import json

import pytest
import srt
import webvtt

from client.transcript_files import CUE_CHARS, LINE_CHARS, TranscriptWriter, cues, format_for

FINALS = [
    {"type": "transcript.final", "segment_id": 0, "text": "Go forward ten meters.",
     "start_ms": 500, "end_ms": 2900, "reason": "endpoint", "language": "en"},
    {"type": "transcript.final", "segment_id": 1, "text": "", "start_ms": 3000,
     "end_ms": 3200, "reason": "endpoint", "language": "en"},
    {"type": "transcript.final", "segment_id": 2,
     "text": "And Mr. John Dashwood had then leisure to consider how much there might be "
             "prudently in his power to do for them.",
     "start_ms": 3661_000, "end_ms": 3668_250, "reason": "end", "language": "en"},
]  # fmt: skip


def write_all(path, fmt):
    writer = TranscriptWriter.open(path, fmt)
    for final in FINALS:
        writer.write(final)
    writer.close()
    return path


def test_srt_parses_back_with_times_and_text(tmp_path):
    """SRT: one numbered cue per non-empty final, times to the millisecond, lines <= 42."""
    subtitles = list(srt.parse(write_all(tmp_path / "a.srt", None).read_text()))
    assert [s.index for s in subtitles] == [1, 2]
    assert subtitles[0].start.total_seconds() == 0.5
    assert subtitles[0].end.total_seconds() == 2.9
    assert subtitles[1].start.total_seconds() == 3661.0  # past an hour: 01:01:01,000
    assert subtitles[1].content.replace("\n", " ") == FINALS[2]["text"]
    assert all(len(line) <= LINE_CHARS for s in subtitles for line in s.content.splitlines())


def test_webvtt_parses_back_with_times_and_text(tmp_path):
    """WebVTT: a valid file whose cues carry the finals' times and words."""
    captions = webvtt.read(str(write_all(tmp_path / "a.vtt", None)))
    assert [c.start for c in captions] == ["00:00:00.500", "01:01:01.000"]
    assert captions[0].text == "Go forward ten meters."
    assert captions[1].text.replace("\n", " ") == FINALS[2]["text"]


def test_word_timed_finals_split_into_short_cues_at_word_boundaries():
    """A long final with word times becomes several cues, each at most two lines."""
    words = FINALS[2]["text"].split()
    timed = dict(FINALS[2], words=[
        {"word": w, "start_ms": 3661_000 + 300 * i, "end_ms": 3661_000 + 300 * i + 250}
        for i, w in enumerate(words)
    ])  # fmt: skip
    parts = cues(timed)
    assert len(parts) == 2
    assert all(len(c.text) <= CUE_CHARS for c in parts)
    assert " ".join(c.text for c in parts) == FINALS[2]["text"]
    assert parts[0].end_ms <= parts[1].start_ms


def test_text_and_jsonl(tmp_path):
    """Text holds one line per spoken final; JSON lines hold every final event."""
    assert write_all(tmp_path / "a.txt", None).read_text().splitlines() == [
        FINALS[0]["text"], FINALS[2]["text"],
    ]  # fmt: skip
    lines = write_all(tmp_path / "a.jsonl", None).read_text().splitlines()
    assert [json.loads(line) for line in lines] == FINALS


def test_the_format_comes_from_the_name_or_must_be_given(tmp_path):
    """.srt/.vtt/.txt/.jsonl imply the format; other names need --output-format."""
    assert format_for(tmp_path / "x.VTT") == "vtt"
    assert format_for(tmp_path / "x.out", "srt") == "srt"
    with pytest.raises(ValueError, match="--output-format"):
        format_for(tmp_path / "x.out")
