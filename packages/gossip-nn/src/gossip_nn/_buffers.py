"""Floating-point buffers (BatchNorm statistics): averaged, local or broadcast.

``"average"`` binds them into flat buffers that the gossip step mixes with the
parameters; ``"broadcast"`` copies the group's rank 0 buffers after every step, like
DDP's ``broadcast_buffers``; ``"local"`` leaves them alone. Whatever the mode, the
evaluation average holds their exact mean. Integer buffers are never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup

from gossip_comm import FlatBuffer

__all__ = ["BufferSync", "floating_buffers", "restored_on_exit"]


@contextmanager
def restored_on_exit(tensors: list[torch.Tensor]) -> Iterator[None]:
    """Inside the block ``tensors`` may change; on exit they hold their values from before."""
    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, old in zip(tensors, saved, strict=True):
                t.copy_(old)


def floating_buffers(module: nn.Module) -> list[torch.Tensor]:
    """The module's floating-point buffers, each once."""
    return [b for b in module.buffers() if b.is_floating_point()]


class BufferSync:
    """What happens to a module's floating buffers under one ``buffers`` mode.

    Args:
        module: The wrapped model; its floating buffers are re-bound as views into flat
            buffers (one per dtype and device).
        mode: ``"average"``, ``"local"`` or ``"broadcast"``.
        group: The training group.
        bind: ``False`` when the caller binds the buffers itself (AD-PSGD's
            ``"average"``): this object then does nothing.
    """

    def __init__(
        self, module: nn.Module, mode: str, group: ProcessGroup, *, bind: bool = True
    ) -> None:
        self.mode, self.group = mode, group
        tensors = floating_buffers(module) if bind else []
        self.flat: FlatBuffer | None = None
        if tensors:
            with torch.no_grad():
                self.flat = FlatBuffer([t.detach() for t in tensors])
                for t, view in zip(tensors, self.flat.views(), strict=True):
                    t.data = view
        self._src = dist.get_global_rank(group, 0)

    @property
    def gossiped(self) -> list[torch.Tensor]:
        """The flat buffers the gossip step mixes (``"average"`` mode only)."""
        return self.flat.buffers if self.flat is not None and self.mode == "average" else []

    def after_step(self) -> None:
        """``"broadcast"``: copy the group's rank 0 buffers to every rank."""
        if self.flat is not None and self.mode == "broadcast":
            for buf in self.flat.buffers:
                dist.broadcast(buf, src=self._src, group=self.group)

    @torch.no_grad()
    def average_in_place(self) -> None:
        """Replace every floating buffer by its mean over the group (a collective)."""
        if self.flat is None:
            return
        size = dist.get_world_size(self.group)
        for b in self.flat.buffers:
            dist.all_reduce(b, group=self.group)
            b.div_(size)

    @contextmanager
    def plain_average(self, *, gossiped_too: bool = False) -> Iterator[None]:
        """Hold the buffers' mean over the group inside the block; restore on exit.

        A collective over the group. Buffers that gossip mixes (``"average"`` mode) are
        left to the gossip wrapper's weighted average unless ``gossiped_too``.
        """
        if self.flat is None or (self.mode == "average" and not gossiped_too):
            yield
            return
        with restored_on_exit(self.flat.buffers):
            self.average_in_place()
            yield
