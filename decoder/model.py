"""The Qwen3 LLM decoder of Qwen3-ASR, with an explicit KV cache.

A dense pre-norm transformer: token embedding -> `DecoderLayer` x num_layers -> RMSNorm ->
output head (tied to the embedding in the ASR checkpoints). Each layer is
x + `Attention`(RMSNorm(x)), then x + `SwiGLU`(RMSNorm(x)). Attention is grouped-query (16 query
heads share 8 KV heads in 0.6B), without biases, with an RMSNorm over each head of q and k
("QK-norm") applied before rotate-half RoPE (base 1e6) over sequential positions.

Differences from a generic implementation, all for streaming on a CPU:
- the KV cache is passed in (`KVCache`), the layers write their keys and values at the cache's
  position and only the top-level `forward` advances it, so a caller can truncate it back to a
  saved prefix and extend it again;
- `forward` takes embeddings (audio embeddings are spliced in by the caller) and computes the
  output head only for the last `num_logits` positions: the head is a quarter of the 0.6B
  decoder's weights and most prefilled positions need no logits at all.

RMSNorm is computed in fp32 whatever the activation dtype, as in the reference.

Shape legend: B batch; T new tokens; S cached + new positions; D hidden; H query heads;
K KV heads; E head dim; F SwiGLU width; V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from decoder.config import DecoderConfig
from decoder.kv_cache import KVCache


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in fp32."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N) -> (..., N) in the input dtype."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Rotary(nn.Module):
    """Rotate-half RoPE tables: cos and sin of position x frequency, both halves repeated."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", 1.0 / (theta**exponents), persistent=False)  # (E/2,)

    def forward(
        self, start: int, count: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (T, E) for positions start .. start+count-1, in `dtype`."""
        positions = torch.arange(start, start + count, device=self.inv_freq.device).float()
        freqs = positions[:, None] * self.inv_freq[None, :]  # (T, E/2), fp32 as the reference
        angles = torch.cat([freqs, freqs], dim=-1)  # (T, E)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, H, T, E) rotated by position: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Causal grouped-query self-attention with QK-norm and RoPE, over a KV cache."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        width, kv_width = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        ropes: Sequence[tuple[torch.Tensor, torch.Tensor]],
        caches: Sequence[KVCache] | None,
        counts: Sequence[int],
        layer: int,
    ) -> torch.Tensor:
        """New tokens -> their attention output, attending to the cache and causally.

        Without caches: x is (B, T, D), one batch at positions 0..T-1 (`ropes[0]`). With
        caches: x is (1, N, D), the rows of several sequences packed (`counts[i]` rows of
        sequence i, after its cache, rotated by `ropes[i]`). The projections run once over all
        rows; attention runs per sequence with exactly the arithmetic of that sequence alone.
        """
        b, t, _ = x.shape
        q, k, v = self._project(x)
        if caches is None:
            out = self._attend(q, k, v, ropes[0], None, layer).reshape(b, t, -1)
            return self.o_proj(out.to(x.dtype))  # (B, T, D)
        outs, offset = [], 0
        for rope, cache, count in zip(ropes, caches, counts, strict=True):
            rows = slice(offset, offset + count)
            out = self._attend(q[:, rows], k[:, rows], v[:, rows], rope, cache, layer)
            outs.append(out.reshape(1, count, -1))
            offset += count
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return self.o_proj(out.to(x.dtype))  # (1, N, D)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q (B, T, H, E) and k, v (B, T, K, E), QK-normed."""
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.num_heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim))
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        return q, k, v

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        """Rotated attention of one sequence's new rows -> (B, T, H, E)."""
        t = q.shape[1]
        cos, sin = rope
        q = apply_rotary(q.transpose(1, 2), cos, sin)  # (B, H, T, E)
        k = apply_rotary(k.transpose(1, 2), cos, sin)  # (B, K, T, E)
        v = v.transpose(1, 2)  # (B, K, T, E)
        start = 0
        if cache is not None:
            start = cache.position
            # the cache may store a narrower dtype (bf16 in int8 mode): attend in that dtype
            k, v = cache.write(layer, k.to(cache.dtype), v.to(cache.dtype))  # (B, K, S, E)
            q = q.to(cache.dtype)
        if t == 1:
            out = self._one_query(q, k, v)
        else:
            # query i sits at position start + i and sees keys 0 .. start + i
            keys = torch.arange(k.shape[2], device=q.device)
            queries = torch.arange(start, start + t, device=q.device)
            mask = keys[None, :] <= queries[:, None]  # (T, S)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return out.transpose(1, 2)

    def _one_query(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of one new token, (B, H, 1, E) over (B, K, S, E) -> (B, H, 1, E).

        Two batched matmuls with the query heads of a group stacked as rows: on the CPU this
        is several times faster than the fused kernel for a single bf16 query (measured 0.2
        vs 1.8 ms at 1000 keys), and as fast in fp32. The softmax runs in fp32.
        """
        b, h, _, e = q.shape
        group = q.view(b, self.num_kv_heads, h // self.num_kv_heads, e)  # (B, K, G, E)
        scores = group @ k.transpose(-1, -2) * e**-0.5  # (B, K, G, S)
        probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        return (probs @ v).view(b, h, 1, e)  # (B, H, 1, E)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D) through (..., F)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + Attention(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(
        self,
        x: torch.Tensor,
        ropes: Sequence[tuple[torch.Tensor, torch.Tensor]],
        caches: Sequence[KVCache] | None,
        counts: Sequence[int],
        layer: int,
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); the arguments as `Attention.forward`."""
        x = x + self.self_attn(self.input_layernorm(x), ropes, caches, counts, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class QwenDecoder(nn.Module):
    """The Qwen3 decoder: embeddings in, logits of the requested last positions out.

    Parameter names follow the checkpoints' canonical `model.*` / `lm_head.*` names without
    the `model.` prefix (`embed_tokens`, `layers.{i}.self_attn.q_proj`, `norm`, `lm_head`).

    Args:
        config: decoder shape.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head: nn.Module = nn.Linear(config.hidden_size, config.head_size, bias=False)
        self.rotary = Rotary(config.head_dim, config.rope_theta)
        # dtype of new KV caches; None: the activation dtype. int8 mode stores bf16 keys and
        # values (half the memory per stream, an error far below int8's own)
        self.kv_dtype: torch.dtype | None = None
        if config.tie_word_embeddings:
            self.tie_head()

    def tie_head(self) -> None:
        """Makes the output head share the input embedding's weight (the ASR checkpoints)."""
        head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
        head.weight = self.embed_tokens.weight
        self.lm_head = head

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return self.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Activation dtype: embeddings, hidden states and the KV cache use it."""
        return self.norm.weight.dtype

    def new_cache(self, capacity: int = 256) -> KVCache:
        """An empty KV cache for one sequence, in `kv_dtype` on this decoder's device."""
        c = self.config
        return KVCache(
            c.num_layers, c.num_kv_heads, c.head_dim,
            dtype=self.kv_dtype or self.dtype, device=self.device, capacity=capacity,
        )  # fmt: skip

    def embed(self, ids: torch.Tensor | list[int]) -> torch.Tensor:
        """Token embeddings: (T,) or a list -> (1, T, D); (B, T) -> (B, T, D)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        if ids.dim() == 1:
            ids = ids[None]
        return self.embed_tokens(ids).to(self.dtype)

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, *, num_logits: int = 1
    ) -> torch.Tensor:
        """Runs new tokens through the decoder after the cache's positions.

        Args:
            x: (B, T) token ids or (B, T, D) embeddings of the new tokens (B must be 1 with a
                cache).
            cache: keys and values of the earlier positions; the new tokens' are appended and
                the cache advanced by T. Without a cache the tokens sit at positions 0..T-1.
            num_logits: compute the output head for the last `num_logits` positions only
                (0: none; the norm and head are skipped).

        Returns:
            Logits (B, num_logits, V) in the activation dtype.

        Raises:
            ValueError: on a wrong input shape or a cached batch other than 1.
        """
        if x.dim() == 2:
            x = self.embed(x)
        if x.dim() != 3 or x.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"x must be (batch, tokens) ids or (batch, tokens, {self.config.hidden_size}) "
                f"embeddings, got {tuple(x.shape)}"
            )
        batch, count, _ = x.shape
        if cache is not None:
            if batch != 1:
                raise ValueError(f"a KV cache holds one sequence; got a batch of {batch}")
            return self.forward_many([x], [cache], [num_logits])[0]
        self._check(count, 0, num_logits)
        x = x.to(self.dtype)
        ropes = [self.rotary(0, count, self.dtype)]
        for index, layer in enumerate(self.layers):
            x = layer(x, ropes, None, [count], index)
        if num_logits == 0:
            return x.new_zeros(batch, 0, self.config.head_size)
        return self.lm_head(self.norm(x[:, count - num_logits :]))  # (B, num_logits, V)

    def _check(self, count: int, start: int, num_logits: int) -> None:
        """Raises ValueError unless `count` new positions after `start` fit, with logits."""
        if not 0 <= num_logits <= count:
            raise ValueError(f"num_logits must be in 0..{count}, got {num_logits}")
        if start + count > self.config.max_positions:
            raise ValueError(
                f"sequence of {start + count} positions exceeds the decoder's "
                f"{self.config.max_positions}"
            )

    @torch.no_grad()
    def forward_many(
        self,
        xs: Sequence[torch.Tensor],
        caches: Sequence[KVCache],
        num_logits: Sequence[int],
    ) -> list[torch.Tensor]:
        """`forward` of several cached sequences in one pass (ragged rows packed, not padded).

        Every Linear and the head run once over the rows of all sequences; RoPE positions and
        attention are per sequence, over its own cache. With a batch-invariant Linear (int8,
        `decoder.quant`) each sequence's logits are bitwise those of `forward` alone; in fp32
        they differ by GEMM rounding only (the kernel's blocking depends on the row count).

        Args:
            xs: per sequence (1, T_i, D) embeddings or (1, T_i) ids.
            caches: per sequence its cache (distinct caches), advanced by T_i.
            num_logits: per sequence how many of its last positions need logits.

        Returns:
            Per sequence logits (1, num_logits[i], V).
        """
        if not len(xs) == len(caches) == len(num_logits) or not xs:
            raise ValueError("forward_many needs as many inputs, caches and logit counts (>= 1)")
        if len({id(c) for c in caches}) != len(caches):
            raise ValueError("forward_many: each sequence needs its own cache")
        xs = [self.embed(x[0]) if x.dim() == 2 else x for x in xs]
        counts = [x.shape[1] for x in xs]
        for x, count, cache, n in zip(xs, counts, caches, num_logits, strict=True):
            if x.dim() != 3 or x.shape[0] != 1 or x.shape[-1] != self.config.hidden_size:
                raise ValueError(f"each input must be (1, T, {self.config.hidden_size})")
            self._check(count, cache.position, n)
            cache.reserve(count)
        ropes = [
            self.rotary(c.position, n, self.dtype) for c, n in zip(caches, counts, strict=True)
        ]
        x = torch.cat([piece.to(self.dtype) for piece in xs], dim=1)  # (1, N, D)
        for index, layer in enumerate(self.layers):
            x = layer(x, ropes, caches, counts, index)
        picks, offset = [], 0
        for cache, count, n in zip(caches, counts, num_logits, strict=True):
            cache.advance(count)
            picks.append(x[:, offset + count - n : offset + count])
            offset += count
        wanted = sum(num_logits)
        if wanted == 0:
            return [x.new_zeros(1, 0, self.config.head_size) for _ in xs]
        logits = self.lm_head(self.norm(torch.cat(picks, dim=1)))  # (1, sum n, V)
        return list(logits.split(list(num_logits), dim=1))
