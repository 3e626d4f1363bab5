r"""GossipDataParallel: SGP, OSGP and D-PSGD behind the plain PyTorch training loop.

The wrapped module's trainable parameters are re-bound as views into one flat buffer per
dtype and device, so gossip touches them without packing. Between optimizer steps the
parameters hold the de-biased model $z_i = x_i / w_i$ that forward and backward see;
an optimizer *pre*-step hook turns them into the numerator $x_i$ (and, for D-PSGD, mixes
them) and a *post*-step hook mixes and de-biases again. The training loop is unchanged.

- **SGP** (Assran et al., ICML 2019, Algorithm 1, [arXiv:1811.10792](https://arxiv.org/abs/1811.10792)):
  $x_i \leftarrow x_i - \gamma\,d_i(z_i)$, then one push-sum step on $(x, w)$.
- **OSGP**: the push-sum messages of step $t$ carry $x_i$ from *before* step $t$'s update;
  rank $i$ keeps $W_{ii} x_i$ and $W_{ii} w_i$, applies its update to that, and adds the
  messages of step $t$ at step $t + 1 + \tau$, $\tau$ = ``synch_freq``.
- **D-PSGD** (Lian et al., NeurIPS 2017): $x_i \leftarrow \sum_j W_{ij} x_j - \gamma\,d_i(x_i)$
  with a doubly-stochastic $W$.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gossip_comm import OverlapRound, PushPull, PushSum
from gossip_comm.backend import group_size, resolve_group
from gossip_comm.wire import FlatBuffer
from gossip_nn.hierarchy import Hierarchy, build_hierarchy
from gossip_nn.options import GossipOptions
from gossip_nn.validate import checked_parameters

__all__ = ["GossipDataParallel"]


class GossipDataParallel(nn.Module):
    """Decentralised data parallelism by gossip: SGP, OSGP (``overlap``) or D-PSGD.

    Args:
        module: The model, identical on every rank.
        optimizer: The optimizer over exactly ``module``'s trainable parameters; the
            wrapper hooks its ``step``.
        push_sum: ``True`` for SGP/OSGP, ``False`` for D-PSGD (push-pull).
        options: Topology, mixing, overlap and communication settings.

    Raises:
        ValueError: If the model differs across ranks, the optimizer does not own the
            parameters, the topology does not fit the group or the algorithm, or an
            unsupported option is set.
        RuntimeError: If ``torch.distributed`` is not initialised.

    Example:
        ```python
        model = GossipDataParallel(net, opt, options=GossipOptions(topology="ring"))
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()          # gossip happens here, through the optimizer's hooks
        opt.zero_grad()
        ```
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        push_sum: bool = True,
        options: GossipOptions | None = None,
    ) -> None:
        super().__init__()
        options = GossipOptions() if options is None else options
        if options.overlap and not push_sum:
            raise ValueError("overlap=True needs push_sum=True (OSGP); D-PSGD does not overlap")
        self.module = module
        self.options, self.push_sum = options, push_sum
        group, self._params = checked_parameters(module, optimizer, options.process_group)
        self._hierarchy: Hierarchy | None = None
        self._grad_flat: FlatBuffer | None = None
        gossip_group = options.process_group
        participants = group_size(group)
        if options.nprocs_per_node > 1:
            self._hierarchy = build_hierarchy(group, options.nprocs_per_node)
            gossip_group, participants = self._hierarchy.plane_group, self._hierarchy.nodes
        topology = options.build_topology(participants)
        with torch.no_grad():
            self._flat = FlatBuffer([p.detach() for p in self._params])
            for p, view in zip(self._params, self._flat.views(), strict=True):
                p.data = view
        common: dict[str, Any] = {
            "mixing": options.mixing,
            "process_group": gossip_group,
            "wire_dtype": options.wire_dtype,
            "timeout": options.timeout,
        }
        self._gossipers: list[PushSum | PushPull] = [
            PushSum(topology, buf, **common) if push_sum else PushPull(topology, buf, **common)
            for buf in self._flat.buffers
        ]
        self.topology = topology
        self.ps_weight = 1.0
        # With a constant weight (regular graph, uniform mixing, no overlap) z == x: skip
        # the bookkeeping ("lazy mixing"); the result is the same.
        self._lazy = not push_sum or (
            not options.overlap and not any(g.sends_weight for g in self._ps())
        )
        self._inflight: deque[list[tuple[OverlapRound, torch.Tensor]]] = deque()
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    # ----------------------------------------------------------------- helpers
    def _ps(self) -> list[PushSum]:
        return [g for g in self._gossipers if isinstance(g, PushSum)]

    @property
    def algorithm(self) -> str:
        """``"sgp"``, ``"osgp"`` or ``"dpsgd"``."""
        if not self.push_sum:
            return "dpsgd"
        return "osgp" if self.options.overlap else "sgp"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped module on the de-biased parameters."""
        return self.module(*args, **kwargs)

    # ------------------------------------------------------------------- hooks
    @torch.no_grad()
    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._hierarchy is not None:
            self._average_node_gradients()
        if not self.push_sum:
            for g, buf in zip(self._gossipers, self._flat.buffers, strict=True):
                g.mix(buf)  # type: ignore[call-arg]  # x <- W x, then the update applies
            return
        if not self._lazy:
            for buf in self._flat.buffers:
                buf.mul_(self.ps_weight)  # z -> x: the optimizer updates the numerator
        if self.options.overlap:
            while len(self._inflight) > self.options.synch_freq:
                self._fold(self._inflight.popleft())
            rounds = []
            weight = self.ps_weight
            for g, buf in zip(self._ps(), self._flat.buffers, strict=True):
                snapshot = buf.clone()
                rnd = g.send(snapshot, weight)
                buf.mul_(rnd.self_weight)
                rounds.append((rnd, snapshot))
            self.ps_weight = weight * rounds[0][0].self_weight
            self._inflight.append(rounds)

    def _average_node_gradients(self) -> None:
        assert self._hierarchy is not None
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # every process must join the all-reduce
        grads = [p.grad for p in self._params if p.grad is not None]
        if self._grad_flat is None:  # allocated once, reused every step
            self._grad_flat = FlatBuffer(grads)
        else:
            self._grad_flat.pack(grads)
        self._hierarchy.average_gradients(self._grad_flat.buffers)
        self._grad_flat.unpack(grads)

    @torch.no_grad()
    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self.push_sum:
            return
        if not self.options.overlap:
            weight = new_weight = self.ps_weight
            for g, buf in zip(self._ps(), self._flat.buffers, strict=True):
                _, new_weight = g.mix(buf, weight)  # every group mixes the same weight
            self.ps_weight = new_weight
        if not self._lazy:
            for buf in self._flat.buffers:
                buf.div_(self.ps_weight)  # x -> z for the next forward

    def _fold(self, rounds: list[tuple[OverlapRound, torch.Tensor]]) -> None:
        received = [
            g.receive(rnd, buf)
            for g, (rnd, _), buf in zip(self._ps(), rounds, self._flat.buffers, strict=True)
        ]
        self.ps_weight += received[0]

    @torch.no_grad()
    def finish_gossip(self) -> None:
        """Fold in every in-flight overlapped message; parameters stay de-biased."""
        if not self._inflight:
            return
        for buf in self._flat.buffers:
            buf.mul_(self.ps_weight)
        while self._inflight:
            self._fold(self._inflight.popleft())
        for buf in self._flat.buffers:
            buf.div_(self.ps_weight)

    def train(self, mode: bool = True) -> GossipDataParallel:
        """Switch mode; ``eval()`` first finishes in-flight gossip."""
        if not mode:
            self.finish_gossip()
        super().train(mode)
        return self

    @contextmanager
    def average_for_eval(self) -> Iterator[None]:
        r"""Temporarily replace every rank's parameters with the exact network average.

        Computes $\sum_i x_i / \sum_i w_i$ with one all-reduce (a collective: every rank
        must enter) and restores the local de-biased parameters on exit.
        """
        self.finish_gossip()
        group = resolve_group(self.options.process_group)
        saved = [buf.clone() for buf in self._flat.buffers]
        with torch.no_grad():
            for buf in self._flat.buffers:
                buf.mul_(self.ps_weight)
                dist.all_reduce(buf, group=group)
            total = torch.tensor(
                [self.ps_weight], dtype=torch.float64, device=self._flat.buffers[0].device
            )
            dist.all_reduce(total, group=group)
            for buf in self._flat.buffers:
                buf.div_(float(total.item()))
        try:
            yield
        finally:
            with torch.no_grad():
                for buf, old in zip(self._flat.buffers, saved, strict=True):
                    buf.copy_(old)

    # ----------------------------------------------------------- checkpoints
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Finish in-flight gossip, then save de-biased parameters and the gossip state."""
        self.finish_gossip()
        return super().state_dict(*args, **kwargs)

    def get_extra_state(self) -> dict[str, Any]:
        """The push-sum weight and the gossipers' step counters."""
        return {
            "algorithm": self.algorithm,
            "ps_weight": self.ps_weight,
            "gossip": [g.state_dict() for g in self._gossipers],
        }

    def set_extra_state(self, state: Any) -> None:
        """Restore what [`get_extra_state`][gossip_nn.GossipDataParallel.get_extra_state] saved.

        Raises:
            ValueError: If the checkpoint is from another algorithm or layout.
        """
        if state.get("algorithm") != self.algorithm:
            raise ValueError(
                f"checkpoint is from algorithm {state.get('algorithm')!r}, this wrapper runs "
                f"{self.algorithm!r}"
            )
        if len(state["gossip"]) != len(self._gossipers):
            raise ValueError("checkpoint has a different number of parameter groups")
        self._inflight.clear()
        self.ps_weight = float(state["ps_weight"])
        for g, s in zip(self._gossipers, state["gossip"], strict=True):
            g.load_state_dict(s)

    def close(self) -> None:
        """Remove the optimizer hooks and release gossip threads."""
        self.finish_gossip()
        for h in self._handles:
            h.remove()
        for g in self._gossipers:
            g.close()
