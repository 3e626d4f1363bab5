"""Cache-sized chunks and reused scratch buffers for the compressors' CPU loops.

A pass over a whole 100 MB message streams it through memory; a mixed-dtype pass (an
int8 or bf16 payload added into float32) takes a slow path on CPU on top of that. Done
chunk by chunk through a small float buffer that stays in cache, the same arithmetic
gives the same bits several times faster.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch

__all__ = ["CHUNK", "Scratch", "spans"]

#: Elements a CPU compressor handles at a time: 1 MiB of float32 stays in cache, so a
#: widen-then-add costs about a fifth of one mixed-dtype pass over the whole message.
CHUNK = 1 << 18


def spans(numel: int, device: torch.device, step: int = CHUNK) -> list[tuple[int, int]]:
    """``(start, stop)`` spans covering ``numel`` elements: cache-sized on CPU, one on GPU."""
    if device.type != "cpu":
        return [(0, numel)]
    return [(i, min(i + step, numel)) for i in range(0, numel, step)]


class Scratch:
    """Reused float buffers, one per (thread, size, dtype, device): no allocation per message.

    A responder thread and a training thread may encode at once, so each thread has its own.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int, int, torch.dtype, torch.device], torch.Tensor] = {}

    def get(
        self, numel: int, dtype: torch.dtype, device: torch.device, slot: int = 0
    ) -> torch.Tensor:
        """This thread's buffer number ``slot`` of ``numel`` elements (contents as left)."""
        key = (threading.get_ident(), slot, numel, dtype, device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf

    def for_spans(
        self,
        numel: int,
        dtype: torch.dtype,
        device: torch.device,
        step: int = CHUNK,
        slot: int = 0,
    ) -> torch.Tensor:
        """A buffer that holds the longest of ``spans(numel, device, step)``."""
        size = min(step, numel) if device.type == "cpu" else numel
        return self.get(size, dtype, device, slot)

    def chunks(
        self, numel: int, dtype: torch.dtype, device: torch.device, step: int = CHUNK
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, work)`` over ``spans(numel, device, step)``, ``work`` this
        thread's buffer number 0 cut to the span's length."""
        work = self.for_spans(numel, dtype, device, step)
        for start, stop in spans(numel, device, step):
            yield start, stop, work[: stop - start]

    def __getstate__(self) -> dict[str, object]:
        return {"_buffers": {}}  # buffers are per process: never pickled
