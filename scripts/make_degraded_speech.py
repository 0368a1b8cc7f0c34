"""Writes telephone-band and noisy copies of a speech set, to check changes on harder audio.

    python scripts/make_degraded_speech.py tests/data/long /tmp/tel/long_tel tel
    python scripts/make_degraded_speech.py tests/data/long /tmp/tel/long_babble15 babble15
    python scripts/make_degraded_speech.py /tmp/heldout /tmp/tel/ho_pink10 pink10
    python scripts/bench_replay.py --folder /tmp/tel/long_tel --offline

The call-center taps this service serves arrive as 8 kHz G.711 with people talking in the
background; every other set of the project is clean wideband speech. Each recording of the
source folder's manifest.tsv is written as 16 kHz 16-bit audio that went through:

- `tel`: a phone line: 8 kHz, 300-3400 Hz, G.711 mu-law (the codec table the service decodes
  with, `streaming.audio.MULAW_TO_FLOAT`), back to 16 kHz as the service resamples it (soxr);
- `babbleN`: babble (six overlapping streams of the 13 real clips in tests/data) mixed in at
  N dB speech-to-noise ratio, then the phone line;
- `pinkN`: pink noise at N dB, then the phone line.

The noise is seeded, so a folder is the same every time it is written. The manifest is copied
unchanged: the references are the clean recordings' texts.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import soundfile
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streaming.audio import MULAW_TO_FLOAT  # noqa: E402

RATE = 16_000
PHONE_RATE = 8_000
PHONE_BAND_HZ = (300, 3400)
BABBLE_VOICES = 6
BABBLE_SOURCES = ROOT / "tests" / "data"  # the 13 real clips (LibriSpeech, public domain)
MULAW_LEVELS = np.sort(MULAW_TO_FLOAT)


def mulaw_round_trip(samples: np.ndarray) -> np.ndarray:
    """Each sample replaced by the nearest of the 256 G.711 mu-law levels."""
    upper = np.clip(np.searchsorted(MULAW_LEVELS, samples), 1, len(MULAW_LEVELS) - 1)
    below, above = MULAW_LEVELS[upper - 1], MULAW_LEVELS[upper]
    return np.where(samples - below < above - samples, below, above).astype(np.float32)


def phone_line(samples: np.ndarray) -> np.ndarray:
    """16 kHz audio as it arrives from a G.711 call tap, resampled back to 16 kHz."""
    narrow = soxr.resample(samples, RATE, PHONE_RATE)
    spectrum = np.fft.rfft(narrow)
    hz = np.fft.rfftfreq(len(narrow), 1 / PHONE_RATE)
    spectrum[(hz < PHONE_BAND_HZ[0]) | (hz > PHONE_BAND_HZ[1])] = 0
    narrow = np.fft.irfft(spectrum, len(narrow)).astype(np.float32)
    coded = mulaw_round_trip(np.clip(narrow, -1, 1))
    return soxr.resample(coded, PHONE_RATE, RATE).astype(np.float32)


def babble(length: int, rng: np.random.Generator) -> np.ndarray:
    """Several unrelated talkers at once, each at the same level."""
    paths = sorted(BABBLE_SOURCES.glob("*.wav"))
    clips = [soundfile.read(str(path), dtype="float32")[0] for path in paths]
    mixed = np.zeros(length, np.float32)
    for _ in range(BABBLE_VOICES):
        talker = np.concatenate([clips[i] for i in rng.permutation(len(clips))])
        talker = np.tile(talker, length // len(talker) + 2)
        start = int(rng.integers(0, len(talker) - length))
        piece = talker[start : start + length]
        mixed += piece / (np.sqrt(np.mean(piece**2)) + 1e-9)
    return mixed


def pink(length: int, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power falls 3 dB per octave, like most room and line noise."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    hz = np.fft.rfftfreq(length, 1 / RATE)
    hz[0] = hz[1]
    return np.fft.irfft(spectrum / np.sqrt(hz), length).astype(np.float32)


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Speech plus noise scaled to `snr_db` below the speech's power while it is active."""
    active = speech[np.abs(speech) > 0.01 * np.abs(speech).max()]
    gain = np.sqrt(np.mean(active**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return speech + gain * noise


def degrade(samples: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`samples` after the degradation `kind` names (tel, babbleN, pinkN)."""
    match = re.fullmatch(r"(tel|babble|pink)(\d+(?:\.\d+)?)?", kind)
    if match is None or (match[1] == "tel") != (match[2] is None):
        raise SystemExit(f"unknown degradation {kind!r}: tel, babbleN or pinkN (N in dB)")
    if match[1] == "babble":
        samples = mix(samples, babble(len(samples), rng), float(match[2]))
    elif match[1] == "pink":
        samples = mix(samples, pink(len(samples), rng), float(match[2]))
    out = phone_line(samples)
    return out / max(1.0, float(np.abs(out).max()) / 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a folder with a manifest.tsv")
    parser.add_argument("out", type=Path)
    parser.add_argument("kind", help="tel, babbleN or pinkN (N: speech-to-noise ratio, dB)")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    args.out.mkdir(parents=True, exist_ok=True)
    table = (args.source / "manifest.tsv").read_text()
    (args.out / "manifest.tsv").write_text(table)
    for row in table.splitlines()[1:]:
        name = row.split("\t")[0]
        samples, rate = soundfile.read(str(args.source / name), dtype="float32")
        if samples.ndim > 1:
            samples = samples[:, 0]
        assert rate == RATE, f"{name}: {rate} Hz, 16 kHz expected"
        soundfile.write(str(args.out / name), degrade(samples, args.kind, rng), RATE, "PCM_16")
        print(args.out / name)


if __name__ == "__main__":
    main()
