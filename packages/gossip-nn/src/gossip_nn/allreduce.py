"""AllReduceDataParallel: AR-SGD through torch DDP, with the gossip wrappers' API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gossip_nn._base import DataParallelModule, make_ddp
from gossip_nn._buffers import BufferSync
from gossip_nn.options import GossipOptions
from gossip_nn.validate import checked_parameters

__all__ = ["AllReduceDataParallel"]


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

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        options: GossipOptions | None = None,
    ) -> None:
        super().__init__()
        self.options = GossipOptions() if options is None else options
        group, _ = checked_parameters(module, optimizer, self.options.process_group)
        self.module = module
        self.options.warn_ignored("ar")
        # Not registered as a submodule, so checkpoints keep the plain ``module.*`` keys.
        self._ddp: DistributedDataParallel
        self._buffer_sync = BufferSync(module, self.options.buffers, group)
        self.__dict__["_ddp"] = make_ddp(
            module, self.options.process_group, sync_buffers=self.options.buffers == "broadcast"
        )
        self._hook(optimizer)

    @property
    def algorithm(self) -> str:
        """``"ar"``."""
        return "ar"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module through DDP, which all-reduces gradients in backward."""
        return self._ddp(*args, **kwargs)

    def _skipped_update(self, optimizer: torch.optim.Optimizer) -> None:
        """Every rank skipped together (the gradients were all-reduced): nothing to do."""

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
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
