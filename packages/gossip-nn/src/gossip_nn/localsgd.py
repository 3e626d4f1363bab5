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

Every rank then goes on from the new $x_0$. With ``average_by="sgp"`` the average is one
push-sum gossip round on ``topology`` instead (each rank mixes $w_i x_i$ and its weight
$w_i$ with its peers and takes the outer step from its own estimate
$\bar x_i = (Wwx)_i / (Ww)_i$): no collective over every rank remains, and the
push-sum mass $\sum_i w_i x_i$ is conserved. ``"dpsgd"`` mixes with a doubly-stochastic
matrix instead. The step is the one outer-step policy that SlowMo uses too; its numpy
oracle is [`simulate_local_sgd`][gossip_topology.simulate_local_sgd].
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from gossip_comm import Gossiper, PushPull, PushSum
from gossip_nn._base import DataParallelModule, bind_flat, network_average
from gossip_nn._buffers import BufferSync
from gossip_nn._outer import OuterStep
from gossip_nn.options import GossipOptions
from gossip_nn.validate import check_wrapper_arguments, checked_parameters
from gossip_topology import OuterOptimizer, Topology

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
        options: ``average_every``, ``average_by``, ``outer`` (DiLoCo), ``buffers`` and
            ``process_group`` are used, and with gossip averaging the graph
            (``topology``, ``peers_per_itr``, ``mixing``) and the communication options
            (``timeout``, ``wire_dtype``, ``chunk_bytes``, ``check_finite``); other
            options set away from their defaults raise a ``UserWarning``.

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
        self._averaged = self._flat.buffers + self._buffer_sync.gossiped
        # a bandwidth-optimal (ring) all-reduce sends 2(n-1)/n of the data from each rank
        size = sum(b.numel() * b.element_size() for b in self._averaged)
        self._ring = 2 * (self._n - 1) * size // self._n
        self._sent = 0
        self._weight = 1.0
        self._gossipers: list[Gossiper] = []
        self._topology: Topology | None = None
        if self.options.average_by != "allreduce":
            self._topology = topology = self.options.build_topology(self._n)
            config = self.options.comm_config(self._group)
            kind = PushSum if self.options.average_by == "sgp" else PushPull
            self._gossipers = [kind(topology, b, config=config) for b in self._averaged]
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
    def topology(self) -> Topology | None:
        """The graph the averages gossip on (``None`` with ``average_by="allreduce"``)."""
        return self._topology

    @property
    def ps_weight(self) -> float:
        """This rank's push-sum weight (1 unless ``average_by="sgp"``)."""
        return self._weight

    @property
    def bytes_sent(self) -> int:
        r"""Bytes sent from this rank for the averages so far. With ``"allreduce"``
        computed, not counted: per average, what a ring all-reduce sends, $2(n-1)/n$
        times the bytes of the parameters (and of the floating buffers with
        ``buffers="average"``). With gossip, the messages counted."""
        return self._sent + sum(g.bytes_sent for g in self._gossipers)

    @torch.no_grad()
    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._outer.advance():
            return
        if self._gossipers:
            self._gossip_round()
        else:
            for buf in self._averaged:
                dist.all_reduce(buf, group=self._group)
                buf.div_(self._n)
            self._sent += self._ring
        self._buffer_sync.after_step()
        lr = float(optimizer.param_groups[0]["lr"])
        self._outer.apply(self._flat.buffers, lr)

    def _gossip_round(self) -> None:
        """One gossip round of every averaged buffer: each ends holding this rank's
        estimate of the average (de-biased by the new push-sum weight)."""
        weight = self._weight
        for buf, gossiper in zip(self._averaged, self._gossipers, strict=True):
            buf.mul_(weight)  # the numerator w x
            _, new_weight = gossiper.mix(buf, weight)
            buf.div_(new_weight)
        if self._gossipers:
            self._weight = new_weight

    def finish_gossip(self) -> None:
        """Nothing is in flight between steps."""

    def close(self) -> None:
        """Remove the optimizer hooks and close the gossipers; each rank keeps its own
        model."""
        self._unhook()
        for gossiper in self._gossipers:
            gossiper.close()

    @contextmanager
    def average_for_eval(self) -> Iterator[None]:
        """Hold the exact network average (weighted by the push-sum weights) of the
        ranks' models and floating buffers in the block."""
        with network_average(self._averaged, self._weight, self._group):
            if self._buffer_sync.mode == "average":
                yield
            else:
                with self._buffer_sync.plain_average(gossiped_too=True):
                    yield

    def _gossip_state(self) -> dict[str, Any]:
        return {
            "ps_weight": self._weight,
            "gossip": [g.state_dict() for g in self._gossipers],
            "outer": self._outer.state_dict(),
        }

    def _load_gossip_state(self, state: dict[str, Any]) -> None:
        """Restore the outer model, its momentum and the step counter.

        Raises:
            ValueError: If the checkpoint has no outer state.
        """
        if not isinstance(state.get("outer"), dict):
            raise ValueError(
                f"checkpoint has no outer state, but this wrapper runs {self.algorithm}"
            )
        if len(state.get("gossip", [])) != len(self._gossipers):
            raise ValueError(
                "checkpoint holds the gossip state of another averaging (average_by); "
                f"this wrapper averages by {self.options.average_by!r}"
            )
        self._outer.load_state_dict(state["outer"])
        self._weight = float(state["ps_weight"])
        for gossiper, saved in zip(self._gossipers, state["gossip"], strict=True):
            gossiper.load_state_dict(saved)
