"""AuT audio encoder of Qwen3-ASR with windowed attention and exact streaming.

Pipeline (one utterance): log-mel (M=128, T) -> cut into 1 s chunks of 100 frames, the last one
zero-padded to 100 -> `ConvSubsampling` (three stride-2 Conv2d + GELU, Linear to D): 13 tokens per
chunk -> `SinusoidalPositions` 0..12 restarting in every chunk -> keep the valid tokens of the last
chunk -> cut the token sequence from its start into windows of `window_tokens` (104 = 8 s) ->
`EncoderLayer` x num_layers, attention only inside a window -> `ln_post` -> `Projector` into the
LLM width.

Windows never interact, so a window whose 8 s of audio have all arrived has its final output.
Streaming (`AudioEncoder.step`) therefore encodes every completed window exactly once and
recomputes only the open (last, incomplete) window at each step. The conv outputs of complete
chunks in the open window are cached in the state; a partial last chunk is kept as mel frames and
re-run through the convs each step, zero-padded exactly as the whole-utterance path pads it, so
at every step `stable` outputs so far + `tentative` equal `forward` on all frames so far.

Shape legend: B batch; M mel bins; T mel frames; C chunks; F frames per chunk (100);
N tokens; W windows; L tokens per window; D d_model; H heads; E head dim; O output dim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from encoder.config import CHUNK_FRAMES, TOKENS_PER_CHUNK, EncoderConfig, num_tokens
from encoder.state import EncoderState, StepOutput

CONV_CHUNKS_PER_CALL = 64  # bounds conv activation memory to ~0.8 GB at 480 channels (fp32)
WINDOWS_PER_CALL = 32  # bounds transformer activation memory for long utterances


class ConvSubsampling(nn.Module):
    """Three Conv2d(3x3, stride 2) + GELU over 1 s chunks, then a Linear to the model width.

    Time goes 100 -> 50 -> 25 -> 13 and mel bins 128 -> 16 (the 8x downsampling).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        channels = config.conv_channels
        self.conv2d1 = nn.Conv2d(1, channels, kernel_size=3, stride=2, padding=1)
        self.conv2d2 = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.conv2d3 = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.conv_out = nn.Linear(config.conv_features, config.d_model, bias=False)

    def forward(self, chunks: torch.Tensor) -> torch.Tensor:
        """(C, M, F) mel chunks -> (C, 13, D) tokens."""
        x = chunks.unsqueeze(1)  # (C, 1, M, F): mel bins are the image height, time the width
        x = F.gelu(self.conv2d1(x))
        x = F.gelu(self.conv2d2(x))
        x = F.gelu(self.conv2d3(x))  # (C, channels, M', F')
        c, channels, bins, steps = x.shape
        # The checkpoint's conv_out expects features ordered channel-major (index = ch * M' + m).
        x = x.permute(0, 3, 1, 2).reshape(c, steps, channels * bins)  # (C, F', channels * M')
        return self.conv_out(x)


class SinusoidalPositions(nn.Module):
    """Adds fixed sinusoidal positions 0..length-1, restarting in every chunk.

    The table is not stored in checkpoints; it is rebuilt here (sines then cosines, concatenated).
    """

    def __init__(self, length: int, channels: int) -> None:
        super().__init__()
        rate = math.log(10_000.0) / (channels // 2 - 1)
        inverse = torch.exp(-rate * torch.arange(channels // 2, dtype=torch.float64))  # (D/2,)
        angles = torch.arange(length, dtype=torch.float64)[:, None] * inverse[None, :]
        table = torch.cat([angles.sin(), angles.cos()], dim=1).to(torch.float32)  # (13, D)
        self.table: torch.Tensor
        self.register_buffer("table", table, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(C, L, D) -> (C, L, D) with the position of each token inside its chunk added."""
        return tokens + self.table[: tokens.shape[1]].to(tokens.dtype)


class WindowedSelfAttention(nn.Module):
    """Bidirectional multi-head attention inside each window; windows are the batch rows.

    Rows never see each other, which is what makes a completed window final.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(W, L, D) windows, optional (W, L) bool mask of real tokens -> (W, L, D)."""
        w, length, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(w, length, self.num_heads, -1).transpose(1, 2)  # (W, H, L, E)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (W, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (W, H, L, E)
        return self.out_proj(out.transpose(1, 2).reshape(w, length, d))  # (W, L, D)


class FeedForward(nn.Module):
    """Linear -> exact (erf) GELU -> Linear, with biases."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.self_attn = WindowedSelfAttention(config)
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(W, L, D) -> (W, L, D)."""
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_mask)
        x = x + self.ffn(self.final_layer_norm(x))
        if x.dtype == torch.float16:
            # As the reference: keep fp16 activations finite so the next LayerNorm stays defined.
            limit = torch.finfo(torch.float16).max - 1000
            x = x.clamp(-limit, limit)
        return x


class Projector(nn.Module):
    """Linear -> GELU -> Linear from the encoder width into the LLM width."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.proj1 = nn.Linear(config.d_model, config.d_model)
        self.proj2 = nn.Linear(config.d_model, config.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., O)."""
        return self.proj2(F.gelu(self.proj1(x)))


class AudioEncoder(nn.Module):
    """The AuT encoder and projector: log-mel features in, LLM-width audio embeddings out.

    Args:
        config: encoder shape, including the attention window.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = ConvSubsampling(config)
        self.positions = SinusoidalPositions(TOKENS_PER_CHUNK, config.d_model)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.ln_post = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.projector = Projector(config)

    @property
    def device(self) -> torch.device:
        """Where the parameters live; inputs are moved here."""
        return self.ln_post.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (the parameters' dtype); features are cast to it."""
        return self.ln_post.weight.dtype

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes whole utterances.

        Args:
            features: log-mel features (B, M, T). Frames at or past an item's length are ignored.
            lengths: valid frames per item (B,); all T when omitted.

        Returns:
            (embeddings, token_lengths): (B, N, O) with rows past an item's token count set to
            zero, and (B,) token counts (`encoder.config.num_tokens` of each length).

        Raises:
            ValueError: on a wrong feature shape or out-of-range lengths.
        """
        if features.dim() != 3 or features.shape[1] != self.config.num_mel_bins:
            raise ValueError(
                f"features must have shape (batch, {self.config.num_mel_bins}, frames), "
                f"got {tuple(features.shape)}"
            )
        batch, _, frames = features.shape
        if lengths is None:
            lengths = torch.full((batch,), frames, dtype=torch.long)
        lengths_list = [int(n) for n in lengths.tolist()]
        if len(lengths_list) != batch or any(not 0 <= n <= frames for n in lengths_list):
            raise ValueError(f"lengths must be {batch} values in 0..{frames}, got {lengths_list}")
        features = features.to(self.device, self.dtype)

        chunks, counts = [], []  # per item: its 1 s chunks and how many frames each holds
        for item, length in enumerate(lengths_list):
            item_chunks, item_counts = _split_chunks(features[item, :, :length])
            chunks.append(item_chunks)
            counts.append(item_counts)
        tokens = self._embed_chunks(torch.cat(chunks)) if sum(map(len, counts)) else None

        windows: list[torch.Tensor] = []
        owners: list[int] = []  # item index of each window
        offset = 0
        for item, item_counts in enumerate(counts):
            if not item_counts:
                continue
            assert tokens is not None  # some item has chunks, so they were embedded
            item_tokens = _valid_tokens(tokens[offset : offset + len(item_counts)], item_counts)
            offset += len(item_counts)
            pieces = item_tokens.split(self.config.window_tokens)
            windows.extend(pieces)
            owners.extend([item] * len(pieces))
        outputs = self.encode_windows(windows)

        token_lengths = torch.tensor([num_tokens(n) for n in lengths_list], dtype=torch.long)
        width = int(token_lengths.max()) if batch else 0
        result = features.new_zeros(batch, width, self.config.output_dim)  # (B, N, O)
        for item in range(batch):
            mine = [out for out, owner in zip(outputs, owners, strict=True) if owner == item]
            if mine:
                result[item, : token_lengths[item]] = torch.cat(mine)
        return result, token_lengths

    def encode_windows(self, windows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Runs the transformer, `ln_post` and the projector on independent windows.

        Full-length windows are batched together; shorter ones are batched with a key mask.

        Args:
            windows: embedded tokens (L_i, D) of each window, L_i <= window_tokens.

        Returns:
            The embeddings (L_i, O) of each window, in input order.
        """
        results: list[torch.Tensor | None] = [None] * len(windows)
        full = [i for i, w in enumerate(windows) if w.shape[0] == self.config.window_tokens]
        short = [i for i, w in enumerate(windows) if 0 < w.shape[0] < self.config.window_tokens]
        for group in (full, short):
            for start in range(0, len(group), WINDOWS_PER_CALL):
                part = group[start : start + WINDOWS_PER_CALL]
                outs = self._run_windows([windows[i] for i in part])
                for i, out in zip(part, outs, strict=True):
                    results[i] = out
        empty = windows[0].new_zeros(0, self.config.output_dim) if windows else None
        return [out if out is not None else empty for out in results]  # type: ignore[misc]

    def initial_state(self) -> EncoderState:
        """The state of a new stream, on this encoder's device and dtype."""
        return EncoderState.initial(
            self.config.num_mel_bins, self.config.d_model, device=self.device, dtype=self.dtype
        )

    @torch.no_grad()
    def step(
        self, features: torch.Tensor, state: EncoderState, *, final: bool = False
    ) -> tuple[StepOutput, EncoderState]:
        """Consumes the next mel frames of one stream.

        Completed windows are encoded once and returned in `stable`; the open window is
        re-encoded and returned in `tentative`, replacing the previous step's tentative output.
        With `final=True` the stream ends: the open window is returned in `stable` and the
        returned state refuses further steps. Runs without autograd so the state never holds a
        graph.

        Args:
            features: the new log-mel frames (M, T_new); T_new may be 0.
            state: the state returned by the previous step (or `initial_state()`).
            final: whether these are the last frames of the stream.

        Returns:
            (output, state): the embeddings of this step and the new state.

        Raises:
            ValueError: on a wrong feature shape, a finished state, or a state that does not
                fit this encoder.
        """
        outputs, states = self.step_many([features], [state], final=final)
        return outputs[0], states[0]

    @torch.no_grad()
    def step_many(
        self,
        features: Sequence[torch.Tensor],
        states: Sequence[EncoderState],
        *,
        final: bool = False,
    ) -> tuple[list[StepOutput], list[EncoderState]]:
        """`step` for several independent streams at once, sharing the conv and layer batches.

        Args:
            features: the new frames (M, T_i) of each stream.
            states: the state of each stream, same order.
            final: whether every one of these streams ends with this step.

        Returns:
            (outputs, states), one per stream.

        Raises:
            ValueError: as `step`, or if the two sequences differ in length.
        """
        if len(features) != len(states):
            raise ValueError(f"got {len(features)} feature tensors for {len(states)} states")
        frames_list = [self._pending_frames(f, s) for f, s in zip(features, states, strict=True)]
        chunk_lists = [_split_chunks(frames) for frames in frames_list]
        chunks = [c for c, counts in chunk_lists if counts]
        tokens = self._embed_chunks(torch.cat(chunks)) if chunks else None

        windows: list[torch.Tensor] = []
        plans = []  # per stream: (completed window count, carried tokens, partial frame count)
        offset = 0
        for (_, counts), state in zip(chunk_lists, states, strict=True):
            full = sum(1 for n in counts if n == CHUNK_FRAMES)
            rest = counts[-1] if counts and counts[-1] < CHUNK_FRAMES else 0
            # tokens is None only when no stream had a chunk
            new = tokens[offset : offset + len(counts)] if tokens is not None else None
            offset += len(counts)
            complete = state.chunk_tokens
            if full:
                assert new is not None
                complete = torch.cat([complete, new[:full].flatten(0, 1)])  # (N, D)
            done = complete.shape[0] // self.config.window_tokens
            carried = complete[done * self.config.window_tokens :]
            partial_tokens = carried[:0]
            if rest:
                assert new is not None
                partial_tokens = _valid_tokens(new[full:], counts[full:])
            if done:
                windows.extend(
                    complete[: done * self.config.window_tokens].split(self.config.window_tokens)
                )
            windows.append(torch.cat([carried, partial_tokens]))  # the open window (may be empty)
            plans.append((done, carried, rest))
        outputs = self.encode_windows(windows)

        results, new_states = [], []
        cursor = 0
        for (done, carried, rest), frames, state in zip(plans, frames_list, states, strict=True):
            stable_parts = outputs[cursor : cursor + done]
            tentative = outputs[cursor + done]
            cursor += done + 1
            if final:
                stable_parts, tentative = [*stable_parts, tentative], tentative[:0]
            stable = torch.cat(stable_parts) if stable_parts else tentative[:0]
            start = state.tokens_emitted
            results.append(StepOutput(stable, start, tentative, start + stable.shape[0]))
            new_states.append(
                EncoderState(
                    # Copies, so the state does not keep this step's larger buffers alive.
                    chunk_tokens=carried.clone(),
                    partial=frames[:, frames.shape[1] - rest :].clone(),
                    frames_seen=state.frames_seen + frames.shape[1] - state.partial.shape[1],
                    tokens_emitted=start + stable.shape[0],
                    finished=final,
                )
            )
        return results, new_states

    def _pending_frames(self, features: torch.Tensor, state: EncoderState) -> torch.Tensor:
        """Validates one stream's input and prepends the frames of its partial chunk: (M, P+T)."""
        mel = self.config.num_mel_bins
        if features.dim() != 2 or features.shape[0] != mel:
            raise ValueError(
                f"features must have shape ({mel}, frames), got {tuple(features.shape)}"
            )
        if state.finished:
            raise ValueError("state: the stream was ended with final=True; start a new one")
        if (
            state.partial.shape[0] != mel
            or state.partial.shape[1] >= CHUNK_FRAMES
            or state.chunk_tokens.shape[-1] != self.config.d_model
            or state.chunk_tokens.shape[0] >= self.config.window_tokens
        ):
            raise ValueError(
                f"state does not fit this encoder: partial {tuple(state.partial.shape)}, "
                f"chunk_tokens {tuple(state.chunk_tokens.shape)} for window_tokens "
                f"{self.config.window_tokens} and d_model {self.config.d_model}"
            )
        features = features.to(self.device, self.dtype)
        return torch.cat([state.partial.to(self.device, self.dtype), features], dim=1)

    def _embed_chunks(self, chunks: torch.Tensor) -> torch.Tensor:
        """(C, M, F) zero-padded chunks -> (C, 13, D) tokens with positions, in bounded batches."""
        pieces = [self.conv(part) for part in chunks.split(CONV_CHUNKS_PER_CALL)]
        return self.positions(torch.cat(pieces))

    def _run_windows(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encodes a batch of windows; pads to the longest with a key mask when lengths differ."""
        lengths = [w.shape[0] for w in windows]
        longest = max(lengths)
        if min(lengths) == longest:
            x, key_mask = torch.stack(windows), None  # (W, L, D)
        else:
            x = nn.utils.rnn.pad_sequence(windows, batch_first=True)  # (W, L, D)
            positions = torch.arange(longest, device=x.device)
            key_mask = positions[None, :] < torch.tensor(lengths, device=x.device)[:, None]
        for layer in self.layers:
            x = layer(x, key_mask)
        x = self.projector(self.ln_post(x))  # (W, L, O)
        return [x[i, :n] for i, n in enumerate(lengths)]


def _split_chunks(frames: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """(M, T) -> ((C, M, F) chunks with the last zero-padded to F frames, frames per chunk).

    Zero padding (in normalised feature space) is what the reference applies, and the conv
    outputs near the end of a partial chunk depend on it.
    """
    mel, total = frames.shape
    count = -(-total // CHUNK_FRAMES)
    padded = F.pad(frames, (0, count * CHUNK_FRAMES - total))  # (M, C * F)
    chunks = padded.view(mel, count, CHUNK_FRAMES).transpose(0, 1)  # (C, M, F)
    counts = [CHUNK_FRAMES] * (total // CHUNK_FRAMES)
    if total % CHUNK_FRAMES:
        counts.append(total % CHUNK_FRAMES)
    return chunks, counts


def _valid_tokens(tokens: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(C, 13, D) chunk tokens -> (N, D): all tokens of full chunks, the valid ones of a partial."""
    if counts and counts[-1] < CHUNK_FRAMES:
        last = tokens[-1, : num_tokens(counts[-1])]
        return torch.cat([tokens[:-1].flatten(0, 1), last])
    return tokens.flatten(0, 1)
