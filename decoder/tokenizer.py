"""The Qwen2 byte-level BPE tokenizer of a Qwen3-ASR checkpoint, read offline.

Built with the `tokenizers` library directly (no transformers tokenizer classes, no network):

- from `tokenizer.json` when the checkpoint has one;
- otherwise from `vocab.json` + `merges.txt` with the Qwen2 pipeline (NFC normalizer, the Qwen2
  pre-tokenizer regex followed by byte-level mapping, byte-level decoder) and the added tokens
  listed in `tokenizer_config.json`'s `added_tokens_decoder`, at the ids listed there. This is
  what transformers' `Qwen2Tokenizer` builds; the tests check that both forms and transformers'
  `AutoTokenizer` encode alike.

Special-token ids are looked up by name in the loaded vocabulary, never assumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from encoder.checkpoint import CheckpointError

# transformers' Qwen2Tokenizer split pattern (contractions, letters, digits, punctuation, spaces)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the tokens the ASR prompt and decoding use."""

    endoftext: int  # <|endoftext|>: a stop token
    im_start: int  # <|im_start|>
    im_end: int  # <|im_end|>: end of a chat turn, the usual stop token
    audio_start: int  # <|audio_start|>
    audio_end: int  # <|audio_end|>
    audio_pad: int  # <|audio_pad|>: one per audio embedding in the prompt
    asr_text: int  # <asr_text>: separates "language X" from the transcript (not special)


_SPECIAL_NAMES = {
    "endoftext": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "audio_start": "<|audio_start|>",
    "audio_end": "<|audio_end|>",
    "audio_pad": "<|audio_pad|>",
    "asr_text": "<asr_text>",
}


class QwenTokenizer:
    """Encodes text to ids and back, with the checkpoint's special tokens.

    Args:
        tokenizer: a loaded `tokenizers.Tokenizer` holding the added tokens.

    Raises:
        CheckpointError: if one of the tokens in `SpecialTokens` is not in the vocabulary.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        ids: dict[str, int] = {}
        missing = []
        for field, token in _SPECIAL_NAMES.items():
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                missing.append(token)
            else:
                ids[field] = token_id
        if missing:
            raise CheckpointError(f"the tokenizer lacks the special tokens {missing}")
        self.special = SpecialTokens(**ids)
        # ids whose text the transcript drops (skip_special_tokens in the reference)
        self.skipped_ids = frozenset(
            token_id
            for token_id, added in tokenizer.get_added_tokens_decoder().items()
            if added.special
        )

    @classmethod
    def from_directory(cls, directory: str | Path) -> QwenTokenizer:
        """Loads the tokenizer of a checkpoint folder (tokenizer.json, or vocab.json + merges.txt).

        Raises:
            CheckpointError: naming the folder and the missing or unreadable files.
        """
        directory = Path(directory)
        fast = directory / "tokenizer.json"
        if fast.is_file():
            try:
                return cls(Tokenizer.from_file(str(fast)))
            except Exception as exc:  # tokenizers raises a bare Exception on a bad file
                raise CheckpointError(f"{fast}: not a readable tokenizer ({exc})") from exc
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if not (vocab.is_file() and merges.is_file()):
            raise CheckpointError(
                f"{directory}: no tokenizer: neither tokenizer.json nor vocab.json + merges.txt"
            )
        try:
            model = BPE.from_file(str(vocab), str(merges))
        except Exception as exc:
            raise CheckpointError(f"{vocab}, {merges}: not a readable BPE ({exc})") from exc
        tokenizer = Tokenizer(model)
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.decoder = decoders.ByteLevel()
        _add_tokens(tokenizer, directory / "tokenizer_config.json")
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer knows (added tokens included)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it become their single ids."""
        if not text:
            return []
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], *, skip_special: bool = False) -> str:
        """The text of `ids` (bytes that do not form whole characters become U+FFFD)."""
        known = [i for i in ids if i < self.vocab_size]
        if skip_special:
            known = [i for i in known if i not in self.skipped_ids]
        return self._tokenizer.decode(known, skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        """The id of one token string, None if unknown."""
        return self._tokenizer.token_to_id(token)


def _add_tokens(tokenizer: Tokenizer, config_path: Path) -> None:
    """Adds the tokens of tokenizer_config.json's added_tokens_decoder at their listed ids."""
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: file is missing (it lists the special tokens)")
    try:
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from exc
    listed = config.get("added_tokens_decoder")
    if not isinstance(listed, dict) or not listed:
        raise CheckpointError(f"{config_path}: added_tokens_decoder is missing or empty")
    for key in sorted(listed, key=int):
        entry = listed[key]
        token = AddedToken(
            entry["content"],
            single_word=entry.get("single_word", False),
            lstrip=entry.get("lstrip", False),
            rstrip=entry.get("rstrip", False),
            normalized=entry.get("normalized", False),
            special=entry.get("special", False),
        )
        if entry.get("special", False):
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
        got = tokenizer.token_to_id(entry["content"])
        if got != int(key):
            raise CheckpointError(
                f"{config_path}: added token {entry['content']!r} is listed at id {key} but "
                f"lands at id {got} after vocab.json; the files do not belong together"
            )
