"""Value types of the streaming encoder: its state and the output of one step.

Token positions count the audio tokens of one stream from 0 (13 per second of audio); they are
the indices of the `<|audio_pad|>` placeholders the embeddings replace in the LLM prompt.

Per step, `stable` holds the tokens of windows that completed during that step: they are final,
returned exactly once, and a decoder may keep their KV cache. `tentative` holds the open window
(`tentative_start` onward): it is recomputed from scratch at every step and replaces the previous
step's tentative tokens entirely, because attention inside a window is bidirectional and a new
second of audio changes every token of its window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EncoderState:
    """Streaming state of one audio stream. Its size is bounded by one attention window.

    Attributes:
        chunk_tokens: (N_c, D) conv + position outputs of the complete 1 s chunks of the open
            window, N_c < window_tokens (at most 7 chunks = 91 tokens for the 8 s window).
        partial: (M, P) mel frames of the incomplete last chunk, P < 100.
        frames_seen: mel frames received over the whole stream.
        tokens_emitted: stable tokens returned so far; the open window starts at this position.
        finished: True after a step with `final=True`; such a state accepts no more frames.
    """

    chunk_tokens: torch.Tensor
    partial: torch.Tensor
    frames_seen: int
    tokens_emitted: int
    finished: bool = False

    @classmethod
    def initial(
        cls,
        num_mel_bins: int,
        d_model: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> EncoderState:
        """The state of a stream that has received nothing.

        Args:
            num_mel_bins: mel bins of the features (128).
            d_model: encoder width.
            device: where the state tensors live (the encoder's device).
            dtype: their dtype (the encoder's dtype).
        """
        return cls(
            chunk_tokens=torch.zeros(0, d_model, device=device, dtype=dtype),
            partial=torch.zeros(num_mel_bins, 0, device=device, dtype=dtype),
            frames_seen=0,
            tokens_emitted=0,
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the state's tensors."""
        return sum(t.numel() * t.element_size() for t in (self.chunk_tokens, self.partial))


@dataclass(frozen=True)
class StepOutput:
    """Audio embeddings produced by one streaming step.

    Attributes:
        stable: (N_s, O) embeddings of the windows completed in this step (all of the rest of the
            stream when the step was final). Never recomputed, never returned again.
        stable_start: token position of `stable[0]`.
        tentative: (N_t, O) embeddings of the open window as of this step; empty after a final
            step or when the audio so far ends exactly at a window boundary.
        tentative_start: token position of `tentative[0]`; equals `stable_start + N_s`.
    """

    stable: torch.Tensor
    stable_start: int
    tentative: torch.Tensor
    tentative_start: int

    @property
    def num_tokens(self) -> int:
        """Audio tokens of the whole stream so far (stable before this step, stable, tentative)."""
        return self.tentative_start + self.tentative.shape[0]
