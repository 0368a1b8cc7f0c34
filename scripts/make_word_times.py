"""Writes tests/data/word_times.json: when each word of the test recordings is spoken.

The recognizers' token budgets and loop guards are sized in tokens per second of audio; the
guard tests check them against how fast real text arrives in these recordings. Word times come
from faster-whisper's offline pipeline (greedy, temperature 0, cross-attention word timestamps,
about +-50 ms) with tiny.en for English and the multilingual base model for the other languages
of synthetic/languages.tsv, on the text it heard: close enough for rates, which only need to
know which words fall into a window of a few seconds. int8 kernels round differently on
different CPUs (AVX-512 against AVX2), which moves some times by tens of milliseconds and some
words: `--new` times only the recordings the file does not hold yet and keeps the rest.

    .venv/bin/python scripts/make_word_times.py [--new]   # about two minutes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import soundfile
from faster_whisper import WhisperModel

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT))

from streaming.models.loading import whisper_base_dir, whisper_tiny_en_dir  # noqa: E402

SETS = ("manifest.tsv", "long/manifest.tsv", "synthetic/manifest.tsv")  # under tests/data
LANGUAGES = "synthetic/languages.tsv"  # file, seconds, language, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", action="store_true", help="only recordings not in the file yet")
    args = parser.parse_args()
    english = WhisperModel(str(whisper_tiny_en_dir()), compute_type="int8", cpu_threads=2)
    multilingual = WhisperModel(str(whisper_base_dir()), compute_type="int8", cpu_threads=2)
    target = DATA / "word_times.json"
    out: dict[str, list[list[object]]] = json.loads(target.read_text()) if args.new else {}
    files = [(m, line.split("\t")[0], "en") for m in SETS for line in rows(m)]
    files += [(LANGUAGES, line.split("\t")[0], line.split("\t")[2]) for line in rows(LANGUAGES)]
    for manifest, name, language in files:
        path = (DATA / manifest).parent / name
        if str(path.relative_to(DATA)) in out:
            continue
        audio, rate = soundfile.read(str(path), dtype="float32")
        assert rate == 16_000, name
        model = english if language == "en" else multilingual
        segments, _ = model.transcribe(
            audio, language=language, beam_size=1, temperature=0.0, word_timestamps=True
        )
        words = [w for s in segments for w in s.words or ()]
        key = str(path.relative_to(DATA))
        out[key] = [[w.word, round(w.start, 2), round(w.end, 2)] for w in words]
        print(key, len(out[key]), "words")
    target.write_text(json.dumps(out, indent=0, ensure_ascii=False) + "\n")


def rows(manifest: str) -> list[str]:
    return (DATA / manifest).read_text().splitlines()[1:]


if __name__ == "__main__":
    main()
