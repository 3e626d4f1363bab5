r"""How each synchronous gossip algorithm mixes, around the optimizer's update.

One small object per algorithm, chosen at construction; the wrapper's optimizer hooks
decide *when* (``before_update`` in the pre-step hook, ``after_update`` in the post-step
hook), these objects decide *how*. The parameters live in ``buffers`` and hold the
de-biased model $z_i = x_i / w_i$ between optimizer steps.

- **SGP** (Assran et al., ICML 2019, Algorithm 1, [arXiv:1811.10792](https://arxiv.org/abs/1811.10792)):
  $x_i \leftarrow x_i - \gamma\,d_i(z_i)$, then one push-sum step on $(x, w)$.
- **OSGP**: the push-sum messages of step $t$ carry $x_i$ from *before* step $t$'s update;
  rank $i$ keeps $W_{ii} x_i$ and $W_{ii} w_i$, applies its update to that, and adds the
  messages of step $t$ at step $t + 1 + \tau$, $\tau$ = ``synch_freq``.
- **D-PSGD** (Lian et al., NeurIPS 2017, [arXiv:1705.09056](https://arxiv.org/abs/1705.09056)):
  $x_i \leftarrow \sum_j W_{ij} x_j - \gamma\,d_i(x_i)$ with a doubly-stochastic $W$
  (``"mix-then-update"``), or the 2019 code's order $x \leftarrow W(x - \gamma\,d(x))$
  (``"update-then-mix"``).

On an *exact* step (``exact=True``: Gossip-PGA's periodic average, the all-reduce
warm-up) the mixing matrix is replaced by the exact average $\frac1n \mathbf{1}\mathbf{1}^\top$:
one all-reduce of the numerators and one of the weights, after which every weight is 1.

With a hierarchy (``nprocs_per_node > 1``) each process gossips only its share of each
buffer (``Shards.views``) and the node reassembles the buffers right after every
operation that changes the shares; scalar steps (the weight's multiply and divide) and
the optimizer's update act on the whole buffers, identically on the node's processes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from gossip_comm import (
    GossipConfig,
    Gossiper,
    OverlapRound,
    PushPull,
    PushSum,
    Settled,
    resolve_group,
)
from gossip_nn.hierarchy import Shards
from gossip_topology import Topology

__all__ = [
    "GOSSIP_ALGORITHMS",
    "Compression",
    "DPSGDStep",
    "GossipStep",
    "OSGPStep",
    "SGPStep",
    "build_step",
]

Posted = Callable[[int, int], "bool | None"]
"""What a settling gossiper asks: did ``rank`` post gossip step ``step``? ``None``: lost."""


class GossipStep:
    """The common part: one gossiper per flat buffer, a push-sum weight, a state dict."""

    algorithm: ClassVar[str]

    def __init__(self, shards: Shards, gossipers: list[Gossiper], group: ProcessGroup) -> None:
        self.shards, self.gossipers, self.group = shards, gossipers, group
        self.buffers, self.views = shards.full, shards.views
        self.weight = 1.0

    def before_update(self, exact: bool = False) -> None:
        """Runs before ``optimizer.step()``; ``exact``: this step averages exactly."""

    def after_update(self, exact: bool = False) -> None:
        """Runs after ``optimizer.step()``; ``exact``: this step averages exactly."""

    def finish(self) -> None:
        """Fold in whatever is still in flight (nothing, for synchronous steps)."""

    @property
    def gossip_steps(self) -> int:
        """Gossip steps posted so far (the schedule position of the first gossiper)."""
        return self.gossipers[0].step if self.gossipers else 0

    @property
    def interrupted(self) -> bool:
        """Fault tolerance: whether a gossip step failed and awaits ``settle``."""
        return False

    def settle(self, posted: Posted) -> list[Settled]:
        """Fault tolerance: finish each gossiper's failed step with what was delivered.

        Raises:
            RuntimeError: For an algorithm that cannot settle (the overlapped ones).
        """
        raise RuntimeError(f"{self.algorithm} cannot settle a failed gossip step")

    def _settle_each(
        self, gossipers: Sequence[PushSum] | Sequence[PushPull], posted: Posted
    ) -> list[Settled]:
        """Settle every interrupted gossiper, then reassemble the buffers if any was."""
        settled = [g.settle(posted) for g in gossipers if g.interrupted]
        if settled:
            self.shards.reassemble()
        return settled

    def _scale(self, factor: float) -> None:
        if factor != 1.0:
            for buf in self.buffers:
                buf.mul_(factor)

    def average_numerators(self) -> None:
        r"""Buffers hold numerators $x_i$: replace them by $\sum_j x_j / \sum_j w_j$, $w_i = 1$.

        A collective over the gossip group; nothing may be in flight.
        """
        total = torch.tensor([self.weight], dtype=torch.float64, device=self.buffers[0].device)
        dist.all_reduce(total, group=self.group)
        for view in self.views:
            dist.all_reduce(view, group=self.group)
            view.div_(float(total.item()))
        self.shards.reassemble()
        self.weight = 1.0

    def exact_average(self) -> None:
        r"""Between steps (buffers de-biased): every rank takes $\sum_j w_j z_j / \sum_j w_j$."""
        self.finish()
        self._scale(self.weight)
        self.average_numerators()

    @property
    def bytes_sent(self) -> int:
        """Bytes this process has sent in gossip messages so far."""
        return sum(g.bytes_sent for g in self.gossipers)

    @property
    def in_flight(self) -> int:
        """Steps whose messages have been sent but not yet folded in."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        """The push-sum weight and each gossiper's step counter."""
        return {"ps_weight": self.weight, "gossip": [g.state_dict() for g in self.gossipers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``'s output.

        Raises:
            ValueError: If the checkpoint has another number of parameter groups.
        """
        if len(state["gossip"]) != len(self.gossipers):
            raise ValueError(
                f"checkpoint has {len(state['gossip'])} parameter groups, this model "
                f"{len(self.gossipers)}"
            )
        self.weight = float(state["ps_weight"])
        for g, s in zip(self.gossipers, state["gossip"], strict=True):
            g.load_state_dict(s)

    def close(self, *, wait: bool = True) -> None:
        """Release the gossipers' threads (``wait=False``: without waiting for them)."""
        for g in self.gossipers:
            g.close(wait=wait)


@dataclass(frozen=True, kw_only=True)
class Compression:
    """What compressed gossip needs per gossiped view, beyond the configuration.

    Attributes:
        layouts: The tensor shapes each view concatenates (for per-tensor compressors).
        references: Each view's common starting value for the public copies, or ``None``
            where the ranks started from different values.
    """

    layouts: list[list[torch.Size]]
    references: list[torch.Tensor | None]

    def gossiper_args(self, index: int) -> dict[str, Any]:
        """``layout`` and ``reference`` keywords for the gossiper of view ``index``."""
        return {"layout": self.layouts[index], "reference": self.references[index]}


def _gossiper_args(compression: Compression | None, index: int) -> dict[str, Any]:
    return {} if compression is None else compression.gossiper_args(index)


def _push_sum(
    shards: Shards,
    topology: Topology,
    config: GossipConfig,
    always_send_weight: bool,
    compression: Compression | None,
) -> list[PushSum]:
    return [
        PushSum(
            topology,
            v,
            config=config,
            always_send_weight=always_send_weight,
            **_gossiper_args(compression, i),
        )
        for i, v in enumerate(shards.views)
    ]


class SGPStep(GossipStep):
    """SGP: update the numerator, then one blocking push-sum step."""

    algorithm = "sgp"

    def __init__(self, shards: Shards, push_sum: list[PushSum], group: ProcessGroup) -> None:
        super().__init__(shards, list(push_sum), group)
        self.push_sum = push_sum
        # With a constant weight (regular graph, uniform mixing) z == x: skip the
        # bookkeeping ("lazy mixing"); the result is the same.
        self.lazy = not any(g.sends_weight for g in self.push_sum)

    def before_update(self, exact: bool = False) -> None:
        if not self.lazy:
            self._scale(self.weight)  # z -> x: the optimizer updates the numerator

    def after_update(self, exact: bool = False) -> None:
        if exact:
            self.average_numerators()
            return
        weight = new_weight = self.weight
        for g, view in zip(self.push_sum, self.views, strict=True):
            _, new_weight = g.mix(view, weight)  # every group mixes the same weight
        self.weight = new_weight
        self.shards.reassemble()
        if not self.lazy:
            for buf in self.buffers:
                buf.div_(self.weight)  # x -> z for the next forward

    @property
    def interrupted(self) -> bool:
        return any(g.interrupted for g in self.push_sum)

    def settle(self, posted: Posted) -> list[Settled]:
        """Settle the failed ``after_update`` (fault tolerance: the weight travels, so the
        buffers then hold numerators): weight, reassembly, de-biasing as it would have."""
        settled = self._settle_each(self.push_sum, posted)
        if settled:
            self.weight = settled[-1].weight
            for buf in self.buffers:
                buf.div_(self.weight)  # x -> z, as after_update ends
        return settled


class OSGPStep(GossipStep):
    """OSGP: send before the update, fold in ``synch_freq + 1`` steps later."""

    algorithm = "osgp"

    def __init__(
        self,
        shards: Shards,
        push_sum: list[PushSum],
        group: ProcessGroup,
        synch_freq: int,
        *,
        fault_tolerant: bool = False,
    ) -> None:
        super().__init__(shards, list(push_sum), group)
        self.push_sum = push_sum
        self.synch_freq = synch_freq
        # fault tolerance: a round leaves the queue only once folded (or settled), and the
        # buffers are known to hold numerators from before_update to after_update
        self.fault_tolerant = fault_tolerant
        self._numerators = False
        # each round in flight pairs its messages with the snapshots they are sent from;
        # a folded round's snapshots are reused, so steady state allocates nothing
        self._inflight: deque[list[tuple[OverlapRound, torch.Tensor]]] = deque()
        self._spare: list[list[torch.Tensor]] = []

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def before_update(self, exact: bool = False) -> None:
        self._scale(self.weight)  # 1 in steady state on a regular graph, synch_freq 0
        self._numerators = True
        if self.fault_tolerant:
            self._fold_due_then_send()
            return
        if exact:  # everything comes home; the update then applies to the numerator
            while self._inflight:
                self._fold(self._inflight.popleft())
            self.shards.reassemble()
            return
        due = []
        while len(self._inflight) > self.synch_freq:
            due.append(self._inflight.popleft())
        for rounds in due[:-1]:
            self._fold(rounds)
        if due:
            # fold the last due round straight into its own snapshot buffers, which
            # become the next message's payload: snap = share + messages, in one pass
            snapshots = [snap for _, snap in due[-1]]
            received = [
                g.receive(rnd, snap, base=view)
                for g, (rnd, snap), view in zip(self.push_sum, due[-1], self.views, strict=True)
            ]
            self.weight += received[0]
        else:
            snapshots = self._spare.pop() if self._spare else [v.clone() for v in self.views]
            for snap, view in zip(snapshots, self.views, strict=True):
                snap.copy_(view)  # the message's payload: the share keeps changing meanwhile
        rounds = []
        for g, view, snap in zip(self.push_sum, self.views, snapshots, strict=True):
            rnd = g.send(snap, self.weight)
            rnd.keep(snap, out=view)  # keep only the own share
            rounds.append((rnd, snap))
        self.weight *= rounds[0][0].self_weight
        self._inflight.append(rounds)
        self.shards.reassemble()

    def after_update(self, exact: bool = False) -> None:
        self._numerators = False
        if exact:
            self.average_numerators()
            return
        for buf in self.buffers:
            buf.div_(self.weight)

    def _fold_due_then_send(self) -> None:
        """Fault tolerance: fold the due rounds one at a time, each leaving the queue only
        once folded, so that a failure leaves every unfolded round to `settle`; then send
        this step's round from a snapshot of its own (no fused fold-and-snapshot)."""
        while len(self._inflight) > self.synch_freq:
            self._fold(self._inflight[0])
            self._inflight.popleft()
        snapshots = self._spare.pop() if self._spare else [v.clone() for v in self.views]
        for snap, view in zip(snapshots, self.views, strict=True):
            snap.copy_(view)
        rounds = []
        for g, view, snap in zip(self.push_sum, self.views, snapshots, strict=True):
            rnd = g.send(snap, self.weight)
            rnd.keep(snap, out=view)
            rounds.append((rnd, snap))
        self.weight *= rounds[0][0].self_weight
        self._inflight.append(rounds)
        self.shards.reassemble()

    @property
    def interrupted(self) -> bool:
        """Fault tolerance: rounds in flight must be settled before the group goes."""
        return self.fault_tolerant and bool(self._inflight)

    def settle(self, posted: Posted) -> list[Settled]:
        """Settle every round in flight, oldest first, with what was delivered.

        Between steps the buffers hold the de-biased model and do so again after; after
        a failure inside ``before_update`` they hold numerators, as the update expects.
        """
        debiased = not self._numerators
        if debiased:
            self._scale(self.weight)
        settled = []
        while self._inflight:
            rounds = self._inflight[0]
            done = [
                g.settle_round(rnd, view, posted)
                for g, (rnd, _), view in zip(self.push_sum, rounds, self.views, strict=True)
            ]
            self.weight += done[0].weight
            settled += done
            self._spare.append([snap for _, snap in rounds])
            self._inflight.popleft()
        self.shards.reassemble()
        if debiased:
            for buf in self.buffers:
                buf.div_(self.weight)
        return settled

    def _fold(self, rounds: list[tuple[OverlapRound, torch.Tensor]]) -> None:
        received = [
            g.receive(rnd, view)
            for g, (rnd, _), view in zip(self.push_sum, rounds, self.views, strict=True)
        ]
        self.weight += received[0]
        self._spare.append([snap for _, snap in rounds])  # its sends are complete

    def finish(self) -> None:
        if not self._inflight:
            return
        self._scale(self.weight)
        while self._inflight:
            self._fold(self._inflight.popleft())
        self.shards.reassemble()
        for buf in self.buffers:
            buf.div_(self.weight)
        self._numerators = False

    def state_dict(self) -> dict[str, Any]:
        """Also the rounds in flight, as the messages they delivered (see
        `gossip_comm.PushSum.round_state`): saving folds nothing in, so a run restored
        from the checkpoint continues exactly as the saving run does."""
        state = super().state_dict()
        state["in_flight"] = [
            [g.round_state(rnd) for g, (rnd, _) in zip(self.push_sum, rounds, strict=True)]
            for rounds in self._inflight
        ]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._inflight.clear()
        super().load_state_dict(state)
        for saved in state.get("in_flight", []):
            if len(saved) != len(self.push_sum):
                raise ValueError(
                    f"checkpoint has a round in flight for {len(saved)} parameter groups, "
                    f"this model has {len(self.push_sum)}"
                )
            self._inflight.append(
                [
                    (g.restore_round(s), view.clone())
                    for g, s, view in zip(self.push_sum, saved, self.views, strict=True)
                ]
            )


class DPSGDStep(GossipStep):
    """D-PSGD: mix with the neighbours before the local update, or after it."""

    algorithm = "dpsgd"

    def __init__(
        self, shards: Shards, push_pull: list[PushPull], group: ProcessGroup, order: str
    ) -> None:
        super().__init__(shards, list(push_pull), group)
        self.push_pull = push_pull
        self.mix_first = order == "mix-then-update"

    @property
    def interrupted(self) -> bool:
        return any(g.interrupted for g in self.push_pull)

    def settle(self, posted: Posted) -> list[Settled]:
        """Settle the failed mix; the update (if it comes after) then applies as usual."""
        return self._settle_each(self.push_pull, posted)

    def _mix(self, exact: bool) -> None:
        if exact:
            self.average_numerators()  # every weight is 1: the plain mean
            return
        for g, view in zip(self.gossipers, self.views, strict=True):
            g.mix(view)
        self.shards.reassemble()

    def before_update(self, exact: bool = False) -> None:
        if self.mix_first:
            self._mix(exact)  # x <- W x, then the update applies (Lian et al.)

    def after_update(self, exact: bool = False) -> None:
        if not self.mix_first:
            self._mix(exact)  # x <- W (x - lr g): the 2019 code's order


GOSSIP_ALGORITHMS: tuple[str, ...] = ("sgp", "osgp", "dpsgd")
"""The synchronous gossip algorithms, in the order the docs list them."""


def build_step(
    algorithm: str,
    shards: Shards,
    topology: Topology,
    config: GossipConfig,
    *,
    synch_freq: int = 0,
    dpsgd_order: str = "mix-then-update",
    always_send_weight: bool = False,
    compression: Compression | None = None,
) -> GossipStep:
    """The step object for ``algorithm``; the one place that knows which may overlap.

    Raises:
        ValueError: For an unknown algorithm, or ``synch_freq`` with one that does not
            overlap.
    """
    if algorithm not in GOSSIP_ALGORITHMS:
        raise ValueError(
            f"algorithm must be one of {', '.join(GOSSIP_ALGORITHMS)}; got {algorithm!r}"
        )
    if synch_freq and algorithm != "osgp":
        raise ValueError(
            f"synch_freq={synch_freq} only applies to algorithm='osgp' (overlapped SGP); "
            f"{algorithm!r} does not overlap"
        )
    group = resolve_group(config.process_group)
    if algorithm == "dpsgd":
        push_pull = [
            PushPull(topology, v, config=config, **_gossiper_args(compression, i))
            for i, v in enumerate(shards.views)
        ]
        return DPSGDStep(shards, push_pull, group, dpsgd_order)
    push_sum = _push_sum(shards, topology, config, always_send_weight, compression)
    if algorithm == "osgp":
        return OSGPStep(shards, push_sum, group, synch_freq, fault_tolerant=config.fault_tolerant)
    return SGPStep(shards, push_sum, group)
