r"""Local SGD and DiLoCo: many local steps, then one average and an outer step.

Each rank runs the user's optimizer (the *inner* optimizer) on its own data, without any
communication, for ``average_every`` steps $H$; then the ranks average their models
exactly (one all-reduce per flat buffer) and take an outer step
([`OuterOptimizer`][gossip_topology.OuterOptimizer]) from the outer model $x_0$ of the
previous average:

- ``"localsgd"`` (model averaging): $x_0 \leftarrow \bar x$;
- ``"diloco"`` (Douillard et al. 2023, [arXiv:2311.08105](https://arxiv.org/abs/2311.08105)):
  Nesterov SGD on the pseudo-gradient $x_0 - \bar x$, learning rate 0.7 and momentum 0.9
  by default (``outer=`` changes them).

Every rank then goes on from the new $x_0$. The step is the one outer-step policy that
SlowMo uses too; its numpy oracle is
[`simulate_local_sgd`][gossip_topology.simulate_local_sgd].
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from gossip_nn._base import DataParallelModule, bind_flat, network_average
from gossip_nn._buffers import BufferSync
from gossip_nn._outer import OuterStep
from gossip_nn.options import GossipOptions
from gossip_nn.validate import check_wrapper_arguments, checked_parameters
from gossip_topology import OuterOptimizer

__all__ = ["OUTER_ALGORITHMS", "LocalSGDDataParallel"]

OUTER_ALGORITHMS: tuple[str, ...] = ("localsgd", "diloco")
"""The algorithms that average every ``average_every`` steps and take an outer step."""


class LocalSGDDataParallel(DataParallelModule):
    """Local SGD or DiLoCo around the user's (inner) optimizer.

    Every ``options.average_every`` optimizer steps (counted by the step hooks, so a
    step a gradient scaler skips still counts on every rank through
    [`scaler_step`][gossip_nn.DataParallelModule.scaler_step]) the wrapper all-reduces
    the parameters and the floating buffers (``buffers="average"``; ``"broadcast"``
    copies rank 0's, ``"local"`` keeps each rank's) and takes the outer step. The inner
    optimizer's own state (momentum, Adam's moments) stays each rank's own, as in
    DiLoCo.

    Args:
        module: The model, identical on every rank.
        optimizer: The inner optimizer over exactly ``module``'s trainable parameters.
        algorithm: ``"localsgd"`` or ``"diloco"``.
        options: ``average_every``, ``outer`` (DiLoCo), ``buffers`` and
            ``process_group`` are used; other options set away from their defaults
            raise a ``UserWarning``.

    Attributes:
        options: The options in force.

    Raises:
        ValueError: For another algorithm, a model that differs across ranks, or an
            optimizer that does not own the model.
        TypeError: For arguments of the wrong type.
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        *,
        algorithm: str,
        options: GossipOptions | None = None,
    ) -> None:
        super().__init__()
        if algorithm not in OUTER_ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {', '.join(OUTER_ALGORITHMS)}; got {algorithm!r}"
            )
        check_wrapper_arguments(module, optimizer, options)
        self.options = GossipOptions() if options is None else options
        self.options.check_fault_tolerance(algorithm)
        self._algorithm = algorithm
        self._group, params = checked_parameters(module, optimizer, algorithm, self.options)
        self.module = module
        self.options.warn_ignored(algorithm)
        self._flat = bind_flat(params)
        self._buffer_sync = BufferSync(module, self.options.buffers, self._group)
        outer = OuterOptimizer.local_sgd() if algorithm == "localsgd" else self.options.outer
        self._outer = OuterStep(
            OuterOptimizer.diloco() if outer is None else outer,
            self.options.average_every,
            self._flat.buffers,
            name="DiLoCo" if algorithm == "diloco" else "local SGD",
        )
        self._n = dist.get_world_size(self._group)
        averaged = self._flat.buffers + self._buffer_sync.gossiped
        # a bandwidth-optimal (ring) all-reduce sends 2(n-1)/n of the data from each rank
        self._ring = 2 * (self._n - 1) * sum(b.numel() * b.element_size() for b in averaged)
        self._ring //= self._n
        self._sent = 0
        self._hook(optimizer)

    @property
    def algorithm(self) -> str:
        """``"localsgd"`` or ``"diloco"``."""
        return self._algorithm

    @property
    def outer_optimizer(self) -> OuterOptimizer:
        """The outer step's settings (local SGD's: learning rate 1, no momentum)."""
        return self._outer.optimizer

    @property
    def bytes_sent(self) -> int:
        r"""What a ring all-reduce of the averages sends from each rank so far: per
        average, $2(n-1)/n$ times the bytes of the parameters (and of the floating
        buffers with ``buffers="average"``). Computed, not counted."""
        return self._sent

    @torch.no_grad()
    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._outer.advance():
            return
        for buf in self._flat.buffers:
            dist.all_reduce(buf, group=self._group)
            buf.div_(self._n)
        if self._buffer_sync.mode == "average":
            self._buffer_sync.average_in_place()
        self._buffer_sync.after_step()
        self._sent += self._ring
        lr = float(optimizer.param_groups[0]["lr"])
        self._outer.apply(self._flat.buffers, lr)

    def finish_gossip(self) -> None:
        """Nothing is in flight between steps."""

    def close(self) -> None:
        """Remove the optimizer hooks; each rank keeps its own model."""
        self._unhook()

    @contextmanager
    def average_for_eval(self) -> Iterator[None]:
        """Hold the exact mean of the ranks' models (and floating buffers) in the block."""
        with (
            network_average(self._flat.buffers, 1.0, self._group),
            self._buffer_sync.plain_average(gossiped_too=True),
        ):
            yield

    def _gossip_state(self) -> dict[str, Any]:
        return {"ps_weight": 1.0, "gossip": [], "outer": self._outer.state_dict()}

    def _load_gossip_state(self, state: dict[str, Any]) -> None:
        """Restore the outer model, its momentum and the step counter.

        Raises:
            ValueError: If the checkpoint has no outer state.
        """
        if "outer" not in state:
            raise ValueError(
                f"checkpoint has no outer state, but this wrapper runs {self.algorithm}"
            )
        self._outer.load_state_dict(state["outer"])
