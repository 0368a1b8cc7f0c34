"""Batch-invariant float decoding: every row-wise kernel runs on the same number of rows.

A float GEMM library picks its kernel (tiling, split of the reduction, vector path) from the
matrix shapes, so one row's output can change in its last bits with the number of rows that
share the call: cuBLAS in bf16 on a GPU, MKL in fp32 on the CPU (measured there: 2.7e-5 sigma,
not bitwise). A GPU reduction (the RMSNorms' mean of squares) may likewise spread a row over more
threads when there are few rows. Batched streams would then read each other's presence in their
logits and their greedy tokens could diverge. `FixedRows` removes the cause: it hands the
wrapped row-wise module (a Linear, an RMSNorm) blocks of exactly `rows` rows, the last one
zero-padded, so every row goes through the one kernel that shape selects, whatever else is in
the batch. Where a row sits inside its block does not change its arithmetic (each output row
reduces over the same loop); the tests check this bitwise. Everything else in a decoder layer
is elementwise or runs per stream (attention), so it is invariant as it is.

Cost: padding. A one-token step of one stream computes `rows` rows. On a GPU a small GEMM is
bound by reading the weights (and by launches), so 1 and 64 rows should cost about the same,
and this is the mode for serving batched streams there (`decoder.loader`, CUDA float modes; no
GPU was lent to measure it, `scripts/bench_decoder.py --batched --device cuda` does). On this
CPU it is ruinous: two 0.6B bf16 streams in lockstep with 64-row blocks took 57 s per
stream-second against 8.4 s one by one, so the CPU keeps its plain float Linears and batches
only int8 with per-row rounding (`decoder.quant`).

Shape legend: N rows; K input features; M output features.
"""

from __future__ import annotations

import torch
from torch import nn

from decoder.model import RMSNorm

CUDA_ROWS = 64  # a one-token step of up to 64 streams, or a prefill in blocks of 64 positions


class FixedRows(nn.Module):
    """Runs a row-wise module (output row i depends on input row i only) on fixed-size blocks.

    Args:
        inner: the module to wrap (a Linear or an RMSNorm: it maps (..., K) to (..., M) row by
            row); its parameters stay its own.
        rows: rows per call of `inner`.

    Raises:
        ValueError: if `rows` is not positive.
    """

    def __init__(self, inner: nn.Module, rows: int = CUDA_ROWS) -> None:
        super().__init__()
        if rows <= 0:
            raise ValueError(f"FixedRows rows must be positive, got {rows}")
        self.inner = inner
        self.rows = rows

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped module's weight (the decoder reads its dtype and device from a norm's)."""
        weight = self.inner.weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., K) -> (..., M), each row computed in a block of exactly `rows` rows."""
        lead, width = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, width)  # (N, K)
        count = flat.shape[0]
        padded = -(-count // self.rows) * self.rows
        if padded != count or not flat.is_contiguous():
            # a fresh buffer: every block starts at the same alignment as in any other call
            block = flat.new_zeros(padded, width)
            block[:count] = flat
            flat = block
        starts = range(0, padded, self.rows)
        outs = [self.inner(flat[start : start + self.rows]) for start in starts]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out[:count].reshape(*lead, out.shape[-1])

    def extra_repr(self) -> str:
        return f"rows={self.rows}"


def use_fixed_rows(decoder: nn.Module, rows: int = CUDA_ROWS) -> nn.Module:
    """Wraps every Linear and RMSNorm inside `decoder` (the head included) in `FixedRows`.

    Returns:
        The same module, changed in place.
    """
    for name, child in list(decoder.named_children()):
        if isinstance(child, nn.Linear | RMSNorm):
            setattr(decoder, name, FixedRows(child, rows))
        elif not isinstance(child, FixedRows):
            use_fixed_rows(child, rows)
    return decoder
