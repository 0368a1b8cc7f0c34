"""Replays test sets through the session engine at fixed steps: WER and decodes, no sockets.

    python scripts/bench_replay.py [--sets long,synthetic] [--no-recheck] [--out hyps.jsonl]
        [--decode-ms MS] [--joined] [--no-prompt-reset] [--step-ms MS] [--final-decodes]
        [--folder DIR] [--no-partials] [--offline]

Each file is fed sans-I/O to a `streaming.session.Session` in 40 ms frames (plus 1 s of
silence), and every decode request it makes is answered at once by the default Whisper
recognizer, so partial decodes happen every `--step-ms` (1 s) of audio exactly, as for one
stream that keeps up.
The result is reproducible, which real-time runs are not (their step points depend on timing),
so it isolates what a recognizer change does to accuracy; real-time behaviour is
`scripts/bench_stream.py`'s job. `--no-recheck` turns off the recheck of skipped speech
(`streaming.models.whisper.uncovered_word`), `--no-tail` the decode of a tail the words stop
short of (`uncovered_tail`), to measure what each changes. `--no-partials` replays sessions that
asked for finals only (`"partials": false`): every segment is then one stateless final decode.
`--folder` replays any folder with a manifest.tsv (file, reference columns), such as a fresh
held-out set from `scripts/make_synthetic_speech.py --heldout`; `--offline` adds the WER of
`transcribe --offline` (faster-whisper's own pipeline, greedy) on the same files, and with
`--out` its texts too (marked "offline"), to compare file by file. A manifest may carry a
`language` column (English without one); `--model base` replays other languages, scored per
character where the language has no spaces (`streaming.scoring.normalize`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import streaming.models.whisper as whisper_module  # noqa: E402
from streaming.models.loading import load_recognizer  # noqa: E402
from streaming.recognizer import OfflineOptions, Recognizer  # noqa: E402
from streaming.scoring import WerResult, corpus_wer, normalize  # noqa: E402
from streaming.session import Limits, Session  # noqa: E402

DATA = ROOT / "tests" / "data"
SETS = {  # name: manifest
    "short": DATA / "manifest.tsv",
    "long": DATA / "long" / "manifest.tsv",
    "synthetic": DATA / "synthetic" / "manifest.tsv",
    "languages": DATA / "synthetic" / "languages.tsv",  # German ... Japanese: `--model base`
}
FRAME = 640  # 40 ms of 16 kHz samples


def manifest(table: Path) -> list[tuple[Path, str, str]]:
    """(file, reference, language) of each recording of a manifest (file, reference columns)."""
    folder = table.parent
    rows = table.read_text().splitlines()
    header = rows[0].split("\t")
    items = []
    for row in rows[1:]:
        fields = dict(zip(header, row.split("\t"), strict=True))
        items.append((folder / fields["file"], fields["reference"], fields.get("language", "en")))
    return items


def score(triples: list[tuple[str, str, str]]) -> float:
    """Pooled error rate of (reference, hypothesis, language): words, or characters."""
    results = [
        corpus_wer([(reference, text)], partial(normalize, language=language))
        for reference, text, language in triples
    ]
    return WerResult(sum(r.errors for r in results), sum(r.words for r in results)).wer


def read(path: Path) -> np.ndarray:
    samples, rate = soundfile.read(str(path), dtype="int16")
    assert rate == 16_000, path
    return samples if samples.ndim == 1 else samples[:, 0]


def replay(
    recognizer: Recognizer,
    samples: np.ndarray,
    decode_ms: int = 0,
    step_ms: int = 1000,
    partials: bool = True,
    language: str = "en",
) -> tuple[str, int]:
    """The finals' text of one session over `samples`, and the decode requests it made.

    `decode_ms` is how much audio arrives while one decode runs: 0 answers each request at
    once; more emulates a loaded decoder, whose requests come later and cover longer steps.
    """
    session = Session("replay", recognizer.info, limits=Limits(step_ms=step_ms))
    hello = {"type": "session.start", "language": language, "partials": partials}
    session.receive_text(json.dumps(hello))
    requests, busy_until, now = 0, 0, 0

    def answer(flush: bool = False) -> None:
        nonlocal requests, busy_until
        while (flush or now >= busy_until) and (request := session.next_request()) is not None:
            session.complete(recognizer.decode([request])[0])
            requests += 1
            busy_until = now + decode_ms
            if decode_ms and not flush:
                return

    samples = np.concatenate([samples, np.zeros(16_000, np.int16)])
    for start in range(0, len(samples), FRAME):
        session.receive_audio(samples[start : start + FRAME].tobytes())
        now = (start + FRAME) * 1000 // 16_000
        answer()
    session.receive_text(json.dumps({"type": "input.end"}))
    answer(flush=True)
    events = [e.to_wire("replay", 0) for e in session.events_to_send()]
    text = " ".join(e["text"] for e in events if e["type"] == "transcript.final")
    return text.strip(), requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="long,synthetic", help=", ".join(SETS))
    parser.add_argument("--no-recheck", action="store_true")
    parser.add_argument(
        "--no-tail", action="store_true", help="no decode of a tail the words stop short of"
    )
    parser.add_argument("--decode-ms", type=int, default=0, help="audio arriving per decode")
    parser.add_argument("--step-ms", type=int, default=1000, help="audio between partials")
    parser.add_argument("--files", help="only these file names, comma-separated")
    parser.add_argument("--folder", type=Path, help="replay this folder's manifest.tsv instead")
    parser.add_argument(
        "--no-partials", action="store_true", help='sessions with "partials": false'
    )
    parser.add_argument(
        "--offline", action="store_true", help="also the WER of transcribe --offline"
    )
    parser.add_argument("--model", default="tiny.en", help="tiny.en (default), base or a DIR")
    parser.add_argument(
        "--out",
        type=Path,
        help='append each file\'s text here (JSON lines: name, text, and "offline" for the '
        "offline pipeline's)",
    )
    parser.add_argument(
        "--joined",
        action="store_true",
        help="each set as ONE session (1 s of silence between files), as a long "
        "call or the soak runs it: previous segments' text then crosses files",
    )
    parser.add_argument(
        "--final-decodes",
        action="store_true",
        help="decode every final, even where the latest partial heard the whole segment "
        "(`ModelInfo.partial_is_final` off)",
    )
    parser.add_argument(
        "--no-prompt-reset",
        action="store_true",
        help="keep the earlier text in the prompt of a decode that looped",
    )
    parser.add_argument(
        "--no-previous-segments",
        action="store_true",
        help="no earlier segments' text in a segment's prompt",
    )
    args = parser.parse_args()
    if args.no_recheck:
        whisper_module.UNCOVERED_MS = 10**9
    if args.no_tail:
        whisper_module.TAIL_MS = 10**9
    recognizer = load_recognizer(args.model)
    if args.no_prompt_reset or args.no_previous_segments:
        assert isinstance(recognizer, whisper_module.WhisperRecognizer)
        recognizer.options = dataclasses.replace(
            recognizer.options,
            reset_prompt_on_loop=not args.no_prompt_reset,
            previous_segments=not args.no_previous_segments,
        )
    if args.final_decodes:
        recognizer.info = dataclasses.replace(recognizer.info, partial_is_final=False)
    model_calls = 0
    decode_prepared = recognizer._decode_prepared  # type: ignore[attr-defined]

    def counted(prepared: list) -> list:
        nonlocal model_calls
        model_calls += len(prepared)
        return decode_prepared(prepared)

    recognizer._decode_prepared = counted  # type: ignore[attr-defined]
    print(f"`python scripts/bench_replay.py {' '.join(sys.argv[1:])}`\n")
    print("| set | files | WER | session decodes | model decodes (rechecks) | seconds |")
    print("|---|---|---|---|---|---|")
    sets = (
        {args.folder.name: args.folder / "manifest.tsv"}
        if args.folder
        else {name: SETS[name] for name in args.sets.split(",")}
    )
    for name, table in sets.items():
        pairs, requests, model_calls, began = [], 0, 0, time.perf_counter()
        items = [item for item in manifest(table)
                 if not args.files or item[0].name in args.files.split(",")]  # fmt: skip
        files = items  # the recordings themselves, before --joined replaces them
        if args.joined:
            assert len({language for _, _, language in items}) == 1, "one language to join"
            silence = np.zeros(16_000, np.int16)
            joined = np.concatenate([x for path, _, _ in items for x in (read(path), silence)])
            text = " ".join(reference for _, reference, _ in items)
            items = [(Path(f"{name}-joined"), text, items[0][2])]
        for path, reference, language in items:
            samples = joined if args.joined else read(path)
            text, count = replay(
                recognizer, samples, args.decode_ms, args.step_ms, not args.no_partials, language
            )
            pairs.append((reference, text, language))
            requests += count
            if args.out:
                with args.out.open("a") as out:
                    out.write(json.dumps([path.name, text]) + "\n")
        wer = score(pairs)
        print(f"| {name} | {len(pairs)} | {100 * wer:.2f} % | {requests} "
              f"| {model_calls} ({model_calls - requests}) "
              f"| {time.perf_counter() - began:.0f} |", flush=True)  # fmt: skip
        if args.offline:
            print(f"| {name}, `transcribe --offline` | {len(files)} "
                  f"| {100 * offline_wer(recognizer, files, args.out):.2f} % | | | |")  # fmt: skip


def offline_wer(
    recognizer: Recognizer, items: list[tuple[Path, str, str]], out: Path | None = None
) -> float:
    """Pooled WER of the recognizer's whole-file pipeline (greedy) on the files."""
    triples = []
    for path, reference, language in items:
        samples = read(path).astype(np.float32) / 32768
        segments = recognizer.transcribe_offline(samples, OfflineOptions(language=language))
        assert segments is not None, "this recognizer has no whole-file pipeline"
        text = " ".join(s.text for s in segments).strip()
        triples.append((reference, text, language))
        if out:
            with out.open("a") as lines:
                lines.write(json.dumps([path.name, text, "offline"]) + "\n")
    return score(triples)


if __name__ == "__main__":
    main()
