"""Fixtures for the decoder tests: tiny checkpoints, the reference model, real speech."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

HEAD_SCALE = 0.5  # std of the untied head: enough spread that greedy tokens vary


def untie(directory: Path, out: Path, seed: int = 1) -> Path:
    """Copies a single-file tiny checkpoint and gives it its own random lm_head.

    The tiny model's tied head mostly predicts the input token again (its residual stream is
    dominated by the token's own embedding), so greedy decoding repeats one token; a separate
    head makes the greedy sequence vary, which is what a token-for-token comparison needs.
    """
    shutil.copytree(directory, out)
    config = json.loads((out / "config.json").read_text())
    weights = load_file(str(out / "model.safetensors"))
    hf = "audio_config" in config
    prefix = "model.language_model." if hf else "thinker.model."
    embed = weights[prefix + "embed_tokens.weight"]
    head = torch.randn(embed.shape, generator=torch.Generator().manual_seed(seed)) * HEAD_SCALE
    weights["lm_head.weight" if hf else "thinker.lm_head.weight"] = head.to(embed.dtype)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    text = config["text_config"] if hf else config["thinker_config"]["text_config"]
    text["tie_word_embeddings"] = False
    if hf:
        config["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="session")
def untied(
    make_checkpoint: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """A tiny fp32 checkpoint of the given layout with an untied random head (same weights)."""
    made: dict[str, Path] = {}

    def make(layout: str) -> Path:
        if layout not in made:
            source = make_checkpoint(layout=layout, dtype="float32")
            made[layout] = untie(source, tmp_path_factory.mktemp("untied") / layout)
        return made[layout]

    return make


@pytest.fixture(scope="session")
def speech(corpus: list[Any]) -> Callable[[float], np.ndarray]:
    """Real speech of any length up to the corpus total: utterances concatenated, cut."""
    pool = np.concatenate([u.samples() for u in corpus])

    def cut(seconds: float) -> np.ndarray:
        return pool[: round(seconds * 16_000)].copy()

    return cut
