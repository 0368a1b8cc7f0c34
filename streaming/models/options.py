"""The `--model ...` command-line options shared by `serve`, `transcribe`, `mic` and `mqtt`.

Kept apart from `streaming.models.loading` so that building the parser (and `--help`) imports
no model library.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streaming.recognizer import Recognizer

QWEN_DTYPES = ("float32", "bfloat16", "int8")


def add_model_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """Adds the model options: --model, --threads, --device, --dtype, --beam-size, ... ."""
    parser.add_argument(
        "--model",
        default="tiny.en",
        help="tiny.en (default, embedded), base (embedded, multilingual), the path of a local "
        "model directory (CTranslate2 Whisper or Qwen3-ASR checkpoint), or a Qwen3-ASR "
        "repository name already in the local Hugging Face cache",
    )
    parser.add_argument("--threads", type=int, default=2, help="model threads (default 2)")
    parser.add_argument(
        "--lanes",
        type=int,
        help="Whisper only: model calls run at once, each on its own replica with "
        "threads/lanes threads (default: one lane per thread on the cpu, 1 on cuda)",
    )
    parser.add_argument(
        "--no-wide-encoder",
        dest="wide_encoder",
        action="store_false",
        help="Whisper on the cpu: keep a final's encoder on its lane's threads even when no "
        "other call runs (saves the second copy of the weights that encodes on every thread)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--dtype",
        choices=QWEN_DTYPES,
        help="Qwen3-ASR weights: int8 (default on cpu), bfloat16 (default on cuda), float32",
    )
    parser.add_argument(
        "--beam-size",
        type=int,
        choices=range(1, 11),
        metavar="1..10",
        default=1,
        help="Whisper only: 1 greedy (default), more: beam search (more accurate, slower; "
        "BENCHMARKS.md)",
    )
    parser.add_argument(
        "--window-s",
        type=int,
        choices=range(1, 9),
        metavar="1..8",
        help="Qwen3-ASR encoder window in seconds (default 4; the checkpoints' own is 8)",
    )
    parser.add_argument(
        "--no-batch",
        dest="batch",
        action="store_false",
        help="Qwen3-ASR: decode the streams of a batch one by one, with plain int8 (a quarter "
        "cheaper for a single stream on the CPU) or, on CUDA, plain float layers instead of "
        "fixed-row blocks, instead of in lockstep (BENCHMARKS.md, issue 13)",
    )
    parser.add_argument(
        "--aligner",
        metavar="DIR",
        help="a Qwen3-ForcedAligner-0.6B checkpoint (either layout, or its name in the local "
        "Hugging Face cache): finals of sessions with word timestamps get its word times",
    )


def load_from_arguments(args: argparse.Namespace) -> Recognizer:
    """The recognizer the parsed options name.

    Raises:
        streaming.models.ModelNotFoundError: the model is not on this machine or not usable.
        ValueError: an option value the model cannot take.
    """
    from streaming.models.loading import load_forced_aligner, load_recognizer, with_aligner

    recognizer = load_recognizer(
        args.model,
        threads=args.threads,
        lanes=getattr(args, "lanes", None),
        device=args.device,
        dtype=args.dtype,
        window_s=args.window_s,
        beam_size=args.beam_size,
        batch=getattr(args, "batch", True),
        wide_encoder=getattr(args, "wide_encoder", True),
    )
    if getattr(args, "aligner", None):
        aligner = load_forced_aligner(args.aligner, device=args.device, dtype=args.dtype)
        return with_aligner(recognizer, aligner)
    return recognizer
