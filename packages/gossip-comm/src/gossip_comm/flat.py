"""Flat buffers: tensors grouped by dtype and device, one contiguous buffer per group."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["FlatBuffer"]


class FlatBuffer:
    """Tensors grouped by ``(dtype, device)``, one contiguous buffer per group, reused.

    ``pack`` copies the tensors into the buffers and ``unpack`` copies them back; neither
    allocates after construction.

    Args:
        tensors: The tensors to flatten, for example a model's parameters.

    Attributes:
        keys: The ``(dtype, device)`` of each group, in order of first appearance.
        indices: For each group, the positions in ``tensors`` of its members.
        shapes: The shape of each tensor, in the order given.
        buffers: One contiguous 1-D buffer per group, holding its members end to end.

    Raises:
        ValueError: If ``tensors`` is empty.

    Example:
        ```python
        a, b, c = torch.ones(2, 3), torch.zeros(4), torch.ones(2, dtype=torch.float64)
        flat = FlatBuffer([a, b, c])
        [tuple(buf.shape) for buf in flat.buffers]  # [(10,), (2,)]: float32 and float64
        ```
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        if not isinstance(tensors, Sequence) or not all(
            isinstance(t, torch.Tensor) for t in tensors
        ):
            raise TypeError(f"tensors must be a sequence of torch.Tensor; got {tensors!r:.80}")
        if not tensors:
            raise ValueError("tensors must not be empty")
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((t.dtype, t.device), []).append(i)
        self.keys = list(groups)
        self.indices = [groups[k] for k in self.keys]
        self.shapes = [t.shape for t in tensors]
        self.buffers = [
            torch.empty(sum(tensors[i].numel() for i in idx), dtype=dt, device=dev)
            for (dt, dev), idx in zip(self.keys, self.indices, strict=True)
        ]
        self.pack(tensors)

    def _slices(self, g: int, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out, offset = [], 0
        for i in self.indices[g]:
            n = tensors[i].numel()
            out.append(self.buffers[g][offset : offset + n])
            offset += n
        return out

    def views(self) -> list[torch.Tensor]:
        """One view per original tensor, in the original order and shape, into the buffers.

        Rebinding parameters to these views (``p.data = view``) makes the buffers the
        parameters' storage, so gossip needs no packing at all.
        """
        out: list[torch.Tensor | None] = [None] * len(self.shapes)
        for g, buffer in enumerate(self.buffers):
            offset = 0
            for i in self.indices[g]:
                n = math.prod(self.shapes[i])
                out[i] = buffer[offset : offset + n].view(self.shapes[i])
                offset += n
        return [v for v in out if v is not None]

    def pack(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy ``tensors`` (same shapes, dtypes and devices as at construction) in."""
        for g in range(len(self.buffers)):
            for view, i in zip(self._slices(g, tensors), self.indices[g], strict=True):
                view.copy_(tensors[i].reshape(-1))

    def unpack(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy the buffers back out into ``tensors``."""
        for g in range(len(self.buffers)):
            for view, i in zip(self._slices(g, tensors), self.indices[g], strict=True):
                tensors[i].copy_(view.view(self.shapes[i]))
