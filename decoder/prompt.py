"""The ASR prompt of Qwen3-ASR and the parsing of its output, as pure functions.

Prompt (token for token what the reference processor's chat template builds):

    <|im_start|>system\\n{system text}<|im_end|>\\n<|im_start|>user\\n<|audio_start|>
    <|audio_pad|> x N (replaced by the N audio embeddings)
    <|audio_end|><|im_end|>\\n<|im_start|>assistant\\n
    [language {Name}<asr_text>]   the language prefill, when the language is forced or known
    [committed text]              the words already committed in this segment (a forced prefix)

`build_prompt` returns these pieces separately (`Prompt`), because the streaming decoder keeps
the KV cache of the system turn and of completed audio windows and recomputes the rest. Each
text piece ends at a special token or at a pre-tokenizer split (a newline before a letter), so
tokenizing the pieces separately gives the same ids as tokenizing the whole string; the tests
check this against the reference processor.

Output: the model writes `language English<asr_text>the transcript` (or only the transcript
after a language prefill), `language None<asr_text>` for audio without speech.
`parse_asr_output` and `collapse_repetitions` follow the reference's `parse_asr_output` and
`detect_and_fix_repetitions` (shared/design/qwen3-asr-reference.md §3.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from decoder.tokenizer import QwenTokenizer

# ISO code -> the name the model was trained with in "language {Name}<asr_text>" (30 languages).
LANGUAGE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "ar": "Arabic", "yue": "Cantonese", "zh": "Chinese", "cs": "Czech", "da": "Danish",
        "nl": "Dutch", "en": "English", "fil": "Filipino", "fi": "Finnish", "fr": "French",
        "de": "German", "el": "Greek", "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian",
        "it": "Italian", "ja": "Japanese", "ko": "Korean", "mk": "Macedonian", "ms": "Malay",
        "fa": "Persian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
        "es": "Spanish", "sv": "Swedish", "th": "Thai", "tr": "Turkish", "vi": "Vietnamese",
    }
)  # fmt: skip
# Other codes clients may use for the same languages: the session's language table (Whisper's)
# has no "fil" and calls Filipino "tl" (Tagalog).
LANGUAGE_ALIASES: Mapping[str, str] = MappingProxyType({"tl": "fil"})
_CODES_BY_NAME = {name.lower(): code for code, name in LANGUAGE_NAMES.items()}
REPETITION_THRESHOLD = 20  # the reference collapses runs of more than 20 characters / 20 copies
MAX_PATTERN_CHARS = 20  # longest repeated pattern the reference looks for


def language_name(language: str) -> str:
    """The model's name for a language given as an ISO code or a name ("en", "english").

    Raises:
        ValueError: naming the value if Qwen3-ASR does not know the language.
    """
    key = language.strip().lower()
    key = LANGUAGE_ALIASES.get(key, key)
    if key in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[key]
    if key in _CODES_BY_NAME:
        return LANGUAGE_NAMES[_CODES_BY_NAME[key]]
    raise ValueError(
        f"language {language!r} is not one of Qwen3-ASR's: {', '.join(sorted(LANGUAGE_NAMES))}"
    )


def language_code(name: str | None) -> str | None:
    """The ISO code of a language name the model wrote ("English" -> "en"); None if unknown."""
    if not name:
        return None
    return _CODES_BY_NAME.get(name.strip().lower())


def normalize_language_name(name: str) -> str:
    """The reference's normalisation: first letter upper case, the rest lower case."""
    name = name.strip()
    return name[:1].upper() + name[1:].lower()


def system_text(context: str = "", hotwords: Sequence[str] = (), previous_text: str = "") -> str:
    """The system turn's text: the context, then the hotwords, then earlier text, one per line.

    The model uses the system turn as background knowledge for the audio (it is not an
    instruction); the reference places a context string there verbatim, which is what a
    context-only call gives here too.
    """
    parts = [context.strip(), " ".join(w.strip() for w in hotwords if w.strip()), previous_text]
    return "\n".join(p.strip() for p in parts if p.strip())


@dataclass(frozen=True)
class Prompt:
    """A tokenized ASR prompt, in the pieces the streaming decoder caches separately.

    Attributes:
        prefix: the system turn and the user turn up to and including <|audio_start|>.
        num_audio: number of audio embeddings (<|audio_pad|> placeholders).
        audio_pad: the placeholder id.
        suffix: <|audio_end|><|im_end|>\\n<|im_start|>assistant\\n.
        language: `language {Name}<asr_text>`, or empty when the model is to detect it.
        committed: the committed text of the segment.
    """

    prefix: tuple[int, ...]
    num_audio: int
    audio_pad: int
    suffix: tuple[int, ...]
    language: tuple[int, ...]
    committed: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        """The whole prompt with one placeholder per audio embedding."""
        audio = [self.audio_pad] * self.num_audio
        return [*self.prefix, *audio, *self.suffix, *self.language, *self.committed]

    @property
    def audio_start(self) -> int:
        """Index of the first audio placeholder."""
        return len(self.prefix)

    @property
    def tail(self) -> tuple[int, ...]:
        """Everything after the audio: suffix, language prefill and committed text."""
        return self.suffix + self.language + self.committed


def language_prefill(language_name: str | None) -> str:
    """`language {Name}<asr_text>`, or "" to let the model detect the language."""
    return f"language {language_name}<asr_text>" if language_name else ""


def build_prompt(
    tokenizer: QwenTokenizer,
    *,
    num_audio: int,
    system: str = "",
    language: str | None = None,
    committed: str = "",
) -> Prompt:
    """Tokenizes the ASR prompt for `num_audio` audio embeddings.

    Args:
        tokenizer: the checkpoint's tokenizer.
        num_audio: audio embeddings in the user turn.
        system: the system turn's text (see `system_text`).
        language: the model's name of the language to force ("English"), or None to detect.
        committed: text the answer must start with (after the language prefill).

    Returns:
        The prompt in pieces.
    """
    if num_audio < 0:
        raise ValueError(f"num_audio must be >= 0, got {num_audio}")
    prefix = tokenizer.encode(
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|audio_start|>"
    )
    suffix = tokenizer.encode("<|audio_end|><|im_end|>\n<|im_start|>assistant\n")
    return Prompt(
        prefix=tuple(prefix),
        num_audio=num_audio,
        audio_pad=tokenizer.special.audio_pad,
        suffix=tuple(suffix),
        language=tuple(tokenizer.encode(language_prefill(language))),
        committed=tuple(tokenizer.encode(committed)),
    )


@dataclass(frozen=True)
class AsrOutput:
    """What the model said: the language it named and the transcript."""

    language: str | None  # normalised name ("English"); None if not named or "None"
    text: str
    tagged: bool  # the output held an <asr_text> tag (or the language was forced)


def parse_asr_output(raw: str, forced_language: str | None = None) -> AsrOutput:
    """Splits raw model output into language and transcript, as the reference does.

    Steps: strip; collapse repetition loops; with a forced language the whole string is the
    transcript; else split at the first `<asr_text>`: the first non-empty line of the part
    before it names the language (after `language `), `language None` means no speech
    (language None); without the tag the whole string is the transcript. Where the original
    package and transformers differ (a first line without `language `), this follows
    transformers, the reference this project tests against.

    Args:
        raw: decoded output (special tokens removed; <asr_text> is not special and stays).
        forced_language: the name used in the language prefill, if any.
    """
    text = collapse_repetitions(raw.strip())
    if forced_language:
        return AsrOutput(forced_language, text, True)
    marker = "<asr_text>"
    if marker not in text:
        return AsrOutput(None, text.strip(), False)
    meta, transcript = text.split(marker, 1)
    if "language none" in meta.lower():
        return AsrOutput(None, transcript.strip(), True)
    language = None
    for line in meta.splitlines():
        line = line.strip()
        if not line:
            continue
        # as transformers' parser: a first line without "language " names the language itself
        value = line[len("language ") :].strip() if line.lower().startswith("language ") else line
        language = normalize_language_name(value) if value else None
        break
    return AsrOutput(language, transcript.strip(), True)


def collapse_repetitions(text: str, threshold: int = REPETITION_THRESHOLD) -> str:
    """Collapses decoding loops the way the reference post-processes its output.

    First every run of one character longer than `threshold` becomes one character. Then,
    scanning from the start, the first place where a pattern of 1..20 characters repeats at
    least `threshold` times in a row (shortest pattern first) keeps one copy, and the scan goes
    on after the run.
    """
    return _collapse_patterns(_collapse_runs(text, threshold), threshold)


def _collapse_runs(text: str, threshold: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        j = i + 1
        while j < len(text) and text[j] == text[i]:
            j += 1
        out.append(text[i] if j - i > threshold else text[i:j])
        i = j
    return "".join(out)


def _collapse_patterns(text: str, threshold: int) -> str:
    out: list[str] = []
    rest = text
    while True:
        found = None
        # a position can only start a loop if `threshold` copies of a 1-char pattern fit after
        # it; the reference only looks while 2 * threshold characters remain
        for i in range(len(rest) - 2 * threshold + 1):
            for size in range(1, MAX_PATTERN_CHARS + 1):
                if i + size * threshold > len(rest):
                    break
                pattern = rest[i : i + size]
                if all(
                    rest[i + r * size : i + (r + 1) * size] == pattern for r in range(1, threshold)
                ):
                    end = i + threshold * size
                    while rest[end : end + size] == pattern:
                        end += size
                    found = (i, size, end)
                    break
            if found:
                break
        if found is None:
            out.append(rest)
            return "".join(out)
        i, size, end = found
        out.append(rest[: i + size])
        rest = rest[end:]
