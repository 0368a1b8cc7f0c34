"""Int8 dynamic quantization of Linear layers for CPU inference.

`Int8Linear` stores its weight as int8 with one scale per output channel (symmetric) and
quantizes its input per call (fbgemm's dynamic linear: 7-bit activations, int32 accumulation,
fp32 output). On the 2-core AVX-512-VNNI machine of BENCHMARKS.md one 0.6B decoder token costs
~16 ms of Linear time this way against ~61 ms in bf16 and ~142 ms in fp32, and a 64-token prefill
~0.2-0.4 s against ~0.3 s (bf16) and ~0.6 s (fp32).

Why these kernels: torch 2.13 deprecates the quantized-tensor API in favour of torchao, which is
not a dependency of this project. The fbgemm kernels themselves (`quantized::linear_prepack`,
`quantized::linear_dynamic`) are still built into the CPU wheel and run without warnings; only
creating the per-channel quantized weight (`torch.quantize_per_channel`) warns. That happens
once per layer at load time, inside a `warnings.catch_warnings` block that silences exactly
that deprecation message. The alternatives measured were slower: weight-only
`_weight_int8pack_mm` (fast for one token, 10x slower than bf16 for a prefill) and `_int_mm`
with hand-written activation quantization (slower than fp32).

**Batch invariance.** fbgemm's dynamic kernel quantizes its whole input with one scale and
zero point, taken from the input's min and max: with rows of several streams in one call, a loud
row changes how every other row is rounded (measured on the 0.6B shapes: one stream's logits
moved by up to 1.8 sigma with its batch neighbours, and its greedy tokens diverged;
shared/design/batched-decoding.md). `Int8Linear` therefore divides each row by its own max|x|
and appends two constant columns, +1 and -1, multiplied by zero weights: every input then spans
exactly [-1, 1], so the kernel picks the same quantization for any batch, each row is rounded as
if it were alone, the int32 accumulation is exact, and the output is scaled back per row. A
row's result is bitwise the same in any batch (tests/decoder/test_batched.py), for +9-16 % of
Linear time and an error against fp32 within the same tolerance as before.

`reduce_range=True` (7-bit activations) is required: the 8-bit path of this kernel measured
~100x slower here, and it is the range fbgemm is documented to be exact with on CPUs without
VNNI.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

# The message torch 2.13 emits when a quantized tensor is created (see the module docstring).
_DEPRECATION = r".*quantized tensor creation functions.*deprecated.*"
_TINY = 1e-30  # the row scale of an all-zero row (any positive value gives zeros)


def int8_available() -> bool:
    """Whether this torch build has the fbgemm/x86 dynamic int8 kernels."""
    engines = torch.backends.quantized.supported_engines
    return "fbgemm" in engines or "x86" in engines


class Int8Linear(nn.Module):
    """y = x W^T + b with W int8 per output channel and x quantized on the fly (CPU, fp32 I/O).

    Args:
        weight: (O, I) float weight to quantize.
        bias: optional (O,) bias, kept in fp32.
        row_invariant: round each input row as if it were alone (see the module docstring);
            False: fbgemm's plain per-input quantization, for layers that never see rows of
            different streams together (the encoder, which runs per stream).

    Raises:
        ValueError: if the weight is not 2-D or this torch has no int8 CPU kernels.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, row_invariant: bool = True
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"Int8Linear needs a 2-D weight, got shape {tuple(weight.shape)}")
        if not int8_available():
            raise ValueError("int8 mode needs torch's fbgemm/x86 quantized CPU kernels")
        self.out_features, self.in_features = weight.shape
        w = weight.detach().to("cpu", torch.float32)
        # symmetric per-channel scales; a zero row gets a tiny scale instead of dividing by 0
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        self.row_invariant = row_invariant
        if row_invariant:
            # zero weights for the two range columns of the input (see the module docstring)
            w = torch.cat([w, w.new_zeros(self.out_features, 2)], dim=1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEPRECATION, category=UserWarning)
            quantized = torch.quantize_per_channel(
                w, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8
            )
            # the bias is added after the per-row rescaling, so it is not packed
            self._packed = torch.ops.quantized.linear_prepack(quantized, None)
        self._bias = None if bias is None else bias.detach().to("cpu", torch.float32)
        self.weight_bytes = w.numel() + scales.numel() * 8
        self._range = torch.tensor([[1.0, -1.0]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., I) fp32 -> (..., O) fp32; each row's result independent of the other rows."""
        flat = x.reshape(-1, self.in_features).float()
        if self.row_invariant:
            peak = torch.linalg.vector_norm(flat, ord=math.inf, dim=1, keepdim=True)  # max|x|
            peak = peak.clamp_(min=_TINY)  # (M, 1)
            spanned = torch.cat([flat / peak, self._range.expand(flat.shape[0], 2)], dim=1)
            out = torch.ops.quantized.linear_dynamic(spanned, self._packed, True).mul_(peak)
        else:
            out = torch.ops.quantized.linear_dynamic(flat, self._packed, True)
        if self._bias is not None:
            out = out + self._bias
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        rows = ", row-invariant" if self.row_invariant else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8{rows}"


def quantize_linears(
    module: nn.Module, *, skip: tuple[str, ...] = (), row_invariant: bool = True
) -> int:
    """Replaces every nn.Linear inside `module` by an `Int8Linear`, in place.

    Args:
        module: the model; it must already be in fp32 on the CPU.
        skip: qualified child names to leave in floating point.
        row_invariant: see `Int8Linear`.

    Returns:
        The number of layers replaced.
    """
    replaced = 0
    for name, child in list(module.named_modules()):
        for attr, grandchild in list(child.named_children()):
            qualified = f"{name}.{attr}" if name else attr
            if isinstance(grandchild, nn.Linear) and qualified not in skip:
                linear = Int8Linear(grandchild.weight, grandchild.bias, row_invariant=row_invariant)
                setattr(child, attr, linear)
                replaced += 1
    return replaced
