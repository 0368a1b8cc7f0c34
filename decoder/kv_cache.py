"""The decoder's key/value cache: preallocated blocks, one explicit position.

One `KVCache` belongs to one token sequence (one segment of one stream). It holds the keys and
values of positions `0 .. position-1` for every layer. A forward pass over T new tokens writes
positions `position .. position+T-1` in every layer (`write`), and the top-level forward then
moves the position once (`advance`); layers never move it. `truncate(p)` moves the position back
to a saved point: everything after `p` becomes scratch that the next write overwrites. That is
how the streaming decoder keeps a stable prompt prefix and recomputes only what follows it.

Memory is allocated in blocks of `BLOCK` positions and grows (never shrinks) when a write would
pass the end, so a stream only holds what its longest sequence so far needed.

Shape legend: L layers; B batch (1 here); H KV heads; S positions; E head dim.
"""

from __future__ import annotations

import torch

BLOCK = 256  # positions added per growth step (~57 MiB for the 0.6B decoder in fp32)


class KVCache:
    """Keys and values of one sequence for every decoder layer.

    Args:
        num_layers: decoder layers.
        num_kv_heads: KV heads per layer.
        head_dim: width of one head.
        dtype: dtype of the stored keys and values (the decoder's activation dtype).
        device: where they live.
        capacity: positions to allocate up front (rounded up to a whole block).

    Raises:
        ValueError: on a non-positive shape.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        capacity: int = BLOCK,
    ) -> None:
        for name, value in (
            ("num_layers", num_layers),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
        ):
            if value <= 0:
                raise ValueError(f"KVCache {name} must be positive, got {value}")
        self._shape = (num_layers, 2, 1, num_kv_heads)
        self._head_dim = head_dim
        self.data = torch.zeros(
            *self._shape, _blocks(max(capacity, 1)), head_dim, dtype=dtype, device=device
        )  # (L, 2, B, H, S, E)
        self._position = 0

    @property
    def position(self) -> int:
        """Number of positions held (the position of the next token)."""
        return self._position

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the stored keys and values."""
        return self.data.dtype

    @property
    def capacity(self) -> int:
        """Positions allocated."""
        return self.data.shape[4]

    @property
    def nbytes(self) -> int:
        """Bytes allocated."""
        return self.data.numel() * self.data.element_size()

    def reserve(self, count: int) -> None:
        """Makes room for `count` more positions after the current one (grows by blocks)."""
        needed = self._position + count
        if needed <= self.capacity:
            return
        grown = self.data.new_zeros(*self._shape, _blocks(needed), self._head_dim)
        grown[:, :, :, :, : self._position] = self.data[:, :, :, :, : self._position]
        self.data = grown

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores one layer's keys and values of the new tokens after the current position.

        Args:
            layer: layer index.
            keys: (B, H, T, E) keys of the T new tokens (RoPE applied).
            values: (B, H, T, E) their values.

        Returns:
            (keys, values) of positions 0 .. position+T-1 of this layer, (B, H, S, E) views.
        """
        end = self._position + keys.shape[2]
        if end > self.capacity:
            raise ValueError(f"KVCache: write up to {end} past capacity {self.capacity}; reserve()")
        self.data[layer, 0, :, :, self._position : end] = keys
        self.data[layer, 1, :, :, self._position : end] = values
        return self.data[layer, 0, :, :, :end], self.data[layer, 1, :, :, :end]

    def advance(self, count: int) -> None:
        """Moves the position past `count` tokens whose keys and values every layer wrote."""
        if count < 0 or self._position + count > self.capacity:
            raise ValueError(
                f"KVCache: cannot advance by {count} from {self._position} "
                f"(capacity {self.capacity})"
            )
        self._position += count

    def truncate(self, position: int) -> None:
        """Moves the position back to `position`; later entries become scratch.

        Raises:
            ValueError: if `position` is negative or past the current position.
        """
        if not 0 <= position <= self._position:
            raise ValueError(f"KVCache: can only truncate to 0..{self._position}, got {position}")
        self._position = position

    def reset(self) -> None:
        """Empties the cache (keeps the memory)."""
        self._position = 0


def _blocks(positions: int) -> int:
    return -(-positions // BLOCK) * BLOCK
