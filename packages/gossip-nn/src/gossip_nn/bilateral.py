r"""BilateralGossipDataParallel: AD-PSGD behind the plain PyTorch training loop.

Lian et al., *Asynchronous Decentralized Parallel Stochastic Gradient Descent*, ICML 2018
([arXiv:1710.06952](https://arxiv.org/abs/1710.06952)). No rank waits for a global step:

- an **active** rank, after its optimizer step, asks its partner to average a snapshot of
  its parameters and goes on computing; at its next optimizer step it adopts the pair's
  average (its gradient was computed before it, so it is stale by one exchange);
- a **passive** rank answers requests from a responder thread, on a shared copy of its
  parameters guarded by a lock; each optimizer step adopts that copy (averages included)
  and adds its own update to it. The parameters a forward pass sees are only ever
  written by the training thread, so no forward sees a half-applied update.

Each exchange replaces both ends by their average, so the sum of the models over all ranks
changes only by the optimizer updates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gossip_comm import AsyncBilateral, GossipHandle
from gossip_comm.backend import group_size, resolve_group
from gossip_comm.wire import FlatBuffer
from gossip_nn.options import GossipOptions
from gossip_nn.validate import checked_parameters

__all__ = ["BilateralGossipDataParallel"]


class BilateralGossipDataParallel(nn.Module):
    """AD-PSGD: asynchronous pairwise gossip on a bipartite graph.

    Args:
        module: The model, identical on every rank; all trainable parameters must share
            one dtype and device.
        optimizer: The optimizer over exactly ``module``'s trainable parameters.
        options: ``topology`` must be bipartite with one peer per step (for example
            ``"dynamic-bipartite-exponential"``); ``overlap`` and ``nprocs_per_node > 1``
            do not apply.

    Raises:
        ValueError: If the topology is not bipartite, the model differs across ranks, or
            an option does not apply.

    Call [`close`][gossip_nn.BilateralGossipDataParallel.close] on every rank when
    training ends: actives tell their passives they are done, and passives answer until
    every active has.
    """

    algorithm = "adpsgd"

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        options: GossipOptions | None = None,
    ) -> None:
        super().__init__()
        options = (
            GossipOptions(topology="dynamic-bipartite-exponential") if options is None else options
        )
        if options.overlap or options.nprocs_per_node != 1:
            raise ValueError(
                "AD-PSGD is asynchronous already: overlap and nprocs_per_node > 1 do not apply"
            )
        self.module, self.options = module, options
        group, self._params = checked_parameters(module, optimizer, options.process_group)
        if len({(p.dtype, p.device) for p in self._params}) != 1:
            raise ValueError(
                "AD-PSGD needs every trainable parameter in one dtype and on one device"
            )
        topology = options.build_topology(group_size(group))
        with torch.no_grad():
            self._flat = FlatBuffer([p.detach() for p in self._params])
            for p, view in zip(self._params, self._flat.views(), strict=True):
                p.data = view
        self._buf = self._flat.buffers[0]
        self._pairs = AsyncBilateral(
            topology, self._buf, process_group=options.process_group, timeout=options.timeout
        )
        self.topology = topology
        self.ps_weight = 1.0
        self._pending: GossipHandle[torch.Tensor] | None = None
        self._shared: torch.Tensor | None = None
        self._published: torch.Tensor | None = None  # the shared value as of the last sync
        self._before: torch.Tensor | None = None
        if self._pairs.is_passive:
            self._shared = self._buf.detach().to("cpu", copy=True)
            self._published = self._shared.clone()
            self._pairs.serve(self._shared)
        self._closed = False
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    @property
    def is_passive(self) -> bool:
        """Whether this rank answers (passive) rather than asks (active)."""
        return self._pairs.is_passive

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped module."""
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def finish_gossip(self) -> None:
        """Adopt every average completed so far (an active waits for its open request)."""
        if self._pairs.is_passive:
            assert self._shared is not None and self._published is not None
            with self._pairs.lock:
                # adopt the averages made since the last sync; publish any local edit
                self._buf.add_((self._shared - self._published).to(self._buf.device))
                self._shared.copy_(self._buf)
                self._published.copy_(self._shared)
        elif self._pending is not None:
            self._buf.copy_(self._pending.wait())
            self._pending = None

    @torch.no_grad()
    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.finish_gossip()
        if self._pairs.is_passive:
            self._before = self._buf.clone()

    @torch.no_grad()
    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        if self._pairs.is_passive:
            assert self._shared is not None and self._published is not None
            assert self._before is not None
            delta = (self._buf - self._before).to(self._shared.device)
            with self._pairs.lock:
                self._shared.add_(delta)  # the update joins whatever averages happened
                self._published.add_(delta)
        else:
            self._pending = self._pairs.request(self._buf.clone())

    def train(self, mode: bool = True) -> BilateralGossipDataParallel:
        """Switch mode; ``eval()`` first adopts every completed average."""
        if not mode:
            self.finish_gossip()
        super().train(mode)
        return self

    @contextmanager
    def average_for_eval(self) -> Iterator[None]:
        """Temporarily hold the exact network average (one all-reduce; all ranks enter)."""
        self.finish_gossip()
        group = resolve_group(self.options.process_group)
        saved = self._buf.clone()
        with torch.no_grad():
            dist.all_reduce(self._buf, group=group)
            self._buf.div_(group_size(group))
        try:
            yield
        finally:
            with torch.no_grad():
                self._buf.copy_(saved)

    def close(self) -> None:
        """End gossip on this rank (every rank must call it) and adopt the final state."""
        if self._closed:
            return
        self.finish_gossip()
        self._closed = True
        self._pairs.finish()
        self.finish_gossip()
        for h in self._handles:
            h.remove()

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Adopt completed averages, then save parameters and the exchange counter."""
        self.finish_gossip()
        return super().state_dict(*args, **kwargs)

    def get_extra_state(self) -> dict[str, Any]:
        """The exchange counter, in the layout the other wrappers use."""
        return {"algorithm": "adpsgd", "ps_weight": 1.0, "gossip": [{"step": self._pairs.step}]}

    def set_extra_state(self, state: Any) -> None:
        """Restore the exchange counter.

        Raises:
            ValueError: If the checkpoint is from another algorithm.
        """
        if state.get("algorithm") != "adpsgd":
            raise ValueError(
                f"checkpoint is from algorithm {state.get('algorithm')!r}, "
                "this wrapper runs 'adpsgd'"
            )
        self._pairs.step = int(state["gossip"][0]["step"])
        if self._shared is not None and self._published is not None:
            with self._pairs.lock:
                self._shared.copy_(self._buf)
                self._published.copy_(self._buf)
