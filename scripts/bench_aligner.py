"""Word-timing accuracy and forced-aligner speed (figures in BENCHMARKS.md).

Accuracy: on tests/data/word_boundaries (each word synthesized alone and joined with known
gaps, so every boundary is exact; see scripts/make_word_boundaries.py) it reports, per source
of word times, the mean and P90 absolute start and end error and the accumulated average shift
(AAS: the mean absolute shift over all start and end boundaries, the Qwen3-ASR report's
measure). Sources:

- `whisper-stream`: the finals of a streaming session on the default model (tiny.en), with
  word_timestamps, replayed through the session engine at 40 ms frames;
- `whisper-offline`: faster-whisper's own `transcribe(word_timestamps=True)`;
- `aligner` (with --aligner DIR): the forced aligner timing the reference text, and
  `whisper-stream+aligner`: the streaming finals with `AlignedRecognizer`.

A predicted word is matched to a true word by aligning the normalized word sequences (difflib);
unmatched words are counted, not scored.

Speed (`--speed`): the aligner at Qwen3-ForcedAligner-0.6B shapes (24-layer encoder, 28-layer
decoder, 5000 classes) with random weights, fp32 and int8, on real speech with its real word
rate: ms per second of audio, and the finalize latency it adds to a 10 s segment.

    .venv/bin/python scripts/bench_aligner.py                 # accuracy, tiny.en   (~1 min)
    .venv/bin/python scripts/bench_aligner.py --aligner DIR   # plus a real aligner
    .venv/bin/python scripts/bench_aligner.py --speed         # 0.6B speed          (~3 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from decoder.aligner import ForcedAligner, load_aligner  # noqa: E402
from decoder.alignment import alignment_words  # noqa: E402
from streaming.config import SessionConfig  # noqa: E402
from streaming.recognizer import Recognizer  # noqa: E402
from streaming.scoring import normalize  # noqa: E402
from streaming.session import Session  # noqa: E402

DATA = ROOT / "tests" / "data" / "word_boundaries"
RATE = 16_000
FRAME_MS = 40


def truth() -> dict[str, list[tuple[str, int, int]]]:
    raw = json.loads((DATA / "boundaries.json").read_text())
    return {name: [(w, int(a), int(b)) for w, a, b in words] for name, words in raw.items()}


def audio_of(name: str) -> np.ndarray:
    samples, rate = soundfile.read(str(DATA / name), dtype="float32")
    assert rate == RATE
    return samples


def stream_words(recognizer: Recognizer, samples: np.ndarray) -> list[tuple[str, int, int]]:
    """Word times of a streaming session's finals (stream clock), replayed sans-I/O."""
    session = Session(
        "bench", recognizer.info, config=SessionConfig(language="en", word_timestamps=True)
    )
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    step = RATE * FRAME_MS // 1000 * 2
    events: list[Any] = []

    def pump() -> None:
        while (request := session.next_request()) is not None:
            session.complete(recognizer.decode([request])[0])
        events.extend(session.events_to_send())

    for start in range(0, len(pcm), step):
        session.receive_audio(pcm[start : start + step])
        pump()
    session.receive_text('{"type":"input.end"}')
    pump()
    words = []
    for event in events:
        if type(event).__name__ == "TranscriptFinal" and event.words:
            words += [(w["word"], w["start_ms"], w["end_ms"]) for w in event.words]
    return words


def offline_words(model_dir: Path, samples: np.ndarray) -> list[tuple[str, int, int]]:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(samples, language="en", beam_size=1, word_timestamps=True)
    return [
        (w.word.strip(), round(w.start * 1000), round(w.end * 1000))
        for s in segments
        for w in s.words or ()
    ]


def aligner_words(
    aligner: ForcedAligner, samples: np.ndarray, text: str
) -> list[tuple[str, int, int]]:
    return [
        (w.text.strip(), w.start_ms, w.end_ms) for w in aligner.align(samples, text, "en").words
    ]


def errors(
    predicted: list[tuple[str, int, int]], reference: list[tuple[str, int, int]]
) -> tuple[list[int], list[int], int]:
    """(|start errors|, |end errors|, unmatched reference words) over matched words."""
    ours = [" ".join(normalize(w)) for w, _, _ in predicted]
    theirs = [" ".join(normalize(w)) for w, _, _ in reference]
    starts, ends = [], []
    matcher = difflib.SequenceMatcher(a=ours, b=theirs, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            p, r = predicted[block.a + k], reference[block.b + k]
            starts.append(abs(p[1] - r[1]))
            ends.append(abs(p[2] - r[2]))
    return starts, ends, len(reference) - len(starts)


def report(name: str, starts: list[int], ends: list[int], unmatched: int) -> dict[str, Any]:
    def p90(values: list[int]) -> float:
        return float(np.percentile(values, 90))

    row = {
        "source": name,
        "words": len(starts),
        "unmatched": unmatched,
        "start_mean_ms": round(statistics.fmean(starts)),
        "start_p90_ms": round(p90(starts)),
        "end_mean_ms": round(statistics.fmean(ends)),
        "end_p90_ms": round(p90(ends)),
        "aas_ms": round(statistics.fmean(starts + ends)),
    }
    print(
        f"{name:24s} words {row['words']:3d} (+{unmatched} unmatched)  start mean/P90 "
        f"{row['start_mean_ms']:4d}/{row['start_p90_ms']:4d}  end mean/P90 "
        f"{row['end_mean_ms']:4d}/{row['end_p90_ms']:4d}  AAS {row['aas_ms']:4d} ms"
    )
    return row


def accuracy(aligner_dir: Path | None) -> list[dict[str, Any]]:
    from streaming.models.aligned import AlignedRecognizer
    from streaming.models.loading import load_recognizer, whisper_tiny_en_dir

    whisper = load_recognizer("tiny.en")
    sources: dict[str, Any] = {
        "whisper-stream": lambda s, t: stream_words(whisper, s),
        "whisper-offline": lambda s, t: offline_words(whisper_tiny_en_dir(), s),
    }
    if aligner_dir is not None:
        aligner = load_aligner(aligner_dir, mode="int8")
        aligned = AlignedRecognizer(whisper, aligner)
        sources["aligner"] = lambda s, t: aligner_words(aligner, s, t)
        sources["whisper-stream+aligner"] = lambda s, t: stream_words(aligned, s)
    rows = []
    for name, source in sources.items():
        starts: list[int] = []
        ends: list[int] = []
        unmatched = 0
        for file, words in truth().items():
            text = " ".join(w for w, _, _ in words)
            a, b, u = errors(source(audio_of(file), text), words)
            starts, ends, unmatched = starts + a, ends + b, unmatched + u
        rows.append(report(name, starts, ends, unmatched))
    return rows


def speed() -> list[dict[str, Any]]:
    """The aligner at 0.6B shapes with random weights: ms per audio second, fp32 and int8."""
    from bench_decoder import bench_tokenizer, corpus, randomize
    from bench_decoder import speech as tiled

    from decoder.config import QWEN3_0_6B
    from decoder.loader import quantize_model
    from decoder.model import QwenDecoder
    from encoder.config import QWEN3_FORCED_ALIGNER_0_6B
    from encoder.model import AudioEncoder

    torch.set_num_threads(2)
    pool, words = corpus()
    words_per_s = len(words) / (len(pool) / RATE)
    tokenizer = bench_tokenizer(words)
    config = dataclasses.replace(
        QWEN3_0_6B, vocab_size=152_064, num_classes=5000, tie_word_embeddings=False
    )
    rows = []
    for mode in ("float32", "int8"):
        encoder = randomize(AudioEncoder(QWEN3_FORCED_ALIGNER_0_6B), 1)
        decoder = randomize(QwenDecoder(config), 2)
        if mode == "int8":
            quantize_model(encoder, decoder)
        timestamp = tokenizer.token_id("<timestamp>")
        assert timestamp is not None
        aligner = ForcedAligner(encoder, decoder, tokenizer, timestamp, "random-0.6B", mode)
        for seconds in (5, 10, 20):
            samples = tiled(seconds, pool)
            text = " ".join(words[: round(words_per_s * seconds)])
            aligner.align(samples, text, "en")  # warm-up
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                aligner.align(samples, text, "en")
                runs.append(time.perf_counter() - started)
            best = min(runs) * 1000
            row = {
                "mode": mode,
                "audio_s": seconds,
                "words": len(alignment_words(text)),
                "ms": round(best),
                "ms_per_audio_s": round(best / seconds),
            }
            rows.append(row)
            print(
                f"{mode:8s} {seconds:3d} s audio, {row['words']:3d} words: {row['ms']:5d} ms "
                f"({row['ms_per_audio_s']} ms per audio second)"
            )
        del encoder, decoder, aligner
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aligner", type=Path, help="a real Qwen3-ForcedAligner checkpoint")
    parser.add_argument("--speed", action="store_true", help="0.6B speed instead of accuracy")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = speed() if args.speed else accuracy(args.aligner)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
