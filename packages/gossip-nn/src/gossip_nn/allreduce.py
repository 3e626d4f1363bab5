"""AllReduceDataParallel: AR-SGD through torch DDP, with the gossip wrappers' API."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from gossip_nn._base import DataParallelModule, make_ddp
from gossip_nn._buffers import BufferSync
from gossip_nn._steps import GOSSIP_ALGORITHMS
from gossip_nn.options import GossipOptions
from gossip_nn.validate import check_wrapper_arguments, checked_parameters

__all__ = ["AllReduceDataParallel"]


def _ring_bytes(tensors: Sequence[torch.Tensor], n: int) -> int:
    """What each rank sends in a ring all-reduce of ``tensors`` over ``n`` ranks."""
    return 2 * (n - 1) * sum(t.numel() * t.element_size() for t in tensors) // n


class AllReduceDataParallel(DataParallelModule):
    """AR-SGD: gradients are all-reduced by `DistributedDataParallel` during backward.

    A thin layer so that AR-SGD shares the gossip wrappers' constructor, options,
    ``average_for_eval`` and checkpoint format (``module.*`` keys plus an extra state
    with ``ps_weight = 1``).

    Args:
        module: The model, identical on every rank.
        optimizer: The optimizer over exactly ``module``'s trainable parameters.
        options: Only ``process_group`` and ``buffers`` are used: ``"broadcast"`` is
            DDP's ``broadcast_buffers``, ``"average"`` all-reduces floating buffers
            after each optimizer step, ``"local"`` leaves them alone. Other options
            set away from their defaults raise a ``UserWarning``.

    Attributes:
        options: The options in force (``GossipOptions()`` when none were given).

    Raises:
        ValueError: If the model differs across ranks or the optimizer does not own it.
    """

    algorithm = "ar"
    """``"ar"``."""

    _ddp: DistributedDataParallel

    def __init__(
        self, module: nn.Module, optimizer: Optimizer, *, options: GossipOptions | None = None
    ) -> None:
        super().__init__()
        check_wrapper_arguments(module, optimizer, options)
        self.options = GossipOptions() if options is None else options
        self.options.check_fault_tolerance("ar")
        group, params = checked_parameters(module, optimizer, "ar", self.options)
        self.module = module
        self.options.warn_ignored("ar")
        self._buffer_sync = BufferSync(module, self.options.buffers, group)
        self._hold_ddp(
            make_ddp(
                module, self.options.process_group, sync_buffers=self.options.buffers == "broadcast"
            )
        )
        n = dist.get_world_size(group)
        averaged = self._buffer_sync.gossiped if self.options.buffers == "average" else []
        # what a ring all-reduce sends per step, for bytes_sent: the gradients in every
        # step, the averaged buffers in every step that is not skipped
        self._ring_grads = _ring_bytes(params, n)
        self._ring_buffers = _ring_bytes(averaged, n)
        self._sent = 0
        self._hook(optimizer)

    @property
    def bytes_sent(self) -> int:
        r"""What a ring all-reduce sends from each rank for the steps taken so far.

        Computed, not counted (DDP's collectives are torch's): per optimizer step,
        $2(n-1)/n$ times the bytes of the gradients (and, with ``buffers="average"``,
        of the floating buffers), the traffic of a bandwidth-optimal all-reduce. A
        skipped mixed-precision step counts its gradients, which were all-reduced too.
        """
        return self._sent

    def _fixed_topology_reason(self) -> str:
        return (
            "AR-SGD all-reduces over every rank and has no gossip topology to set; "
            f"set_topology applies to the gossip algorithms ({', '.join(GOSSIP_ALGORITHMS)})"
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module through DDP, which all-reduces gradients in backward."""
        return self._ddp(*args, **kwargs)

    def _skipped_update(self, optimizer: Optimizer) -> None:
        """Every rank skipped together (the gradients were all-reduced): nothing to do."""
        self._sent += self._ring_grads

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._sent += self._ring_grads + self._ring_buffers
        if self._buffer_sync.mode == "average":
            self._buffer_sync.average_in_place()  # one all-reduce of the buffers a step

    def finish_gossip(self) -> None:
        """Nothing is ever in flight between steps with all-reduce."""

    def close(self) -> None:
        """Remove the optimizer hook (if any); DDP holds nothing else to release here."""
        self._unhook()

    @contextmanager
    def average_for_eval(self) -> Iterator[None]:
        """All ranks hold the same parameters; hold the floating buffers' exact mean too."""
        with self._buffer_sync.plain_average(gossiped_too=True):
            yield

    def _gossip_state(self) -> dict[str, Any]:
        return {"ps_weight": 1.0, "gossip": []}

    def _load_gossip_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore: all-reduce keeps no gossip state."""
