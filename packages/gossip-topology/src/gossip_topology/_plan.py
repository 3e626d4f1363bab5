"""Private: a sparse, reusable form of W(t) that applies to an (n, d) array fast.

Every simulator and analysis routine goes through :class:`MixPlan`, so that one
implementation of "x <- W x" is tested once and used everywhere.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from gossip_topology.mixing import Mixing
from gossip_topology.topology import Topology

__all__: list[str] = []

Array = NDArray[np.float64]


class MixPlan:
    """``x <- W x`` for one step, as permutation slots when possible, else a sparse sum."""

    def __init__(self, topology: Topology, step: int, mixing: Mixing) -> None:
        n = topology.world_size
        self.n = n
        src: list[int] = []
        dst: list[int] = []
        wts: list[float] = []
        self.self_weight = np.empty(n)
        peers_of = [topology.out_peers(j, step) for j in range(n)]
        for j in range(n):
            self_w, peer_w = mixing.weights(topology, j, step)
            self.self_weight[j] = self_w
            for p, w in zip(peers_of[j], peer_w, strict=True):
                src.append(j)
                dst.append(p)
                wts.append(w)
        # Fast path: every rank has k peers and slot s of all ranks is a permutation.
        degrees = {len(p) for p in peers_of}
        self.slots: list[tuple[NDArray[np.intp], Array]] | None = None
        if len(degrees) == 1:
            k = degrees.pop()
            slots = []
            for s in range(k):
                targets = np.array([peers_of[j][s] for j in range(n)], dtype=np.intp)
                if len(np.unique(targets)) != n:
                    break
                inverse = np.empty(n, dtype=np.intp)
                inverse[targets] = np.arange(n)
                w_s = np.array([wts[j * k + s] for j in range(n)])
                slots.append((inverse, w_s[inverse][:, None]))
            else:
                self.slots = slots
        # General path: all edges, self-edges included, sorted by destination.
        order = np.lexsort((np.array(src + list(range(n))), np.array(dst + list(range(n)))))
        self.src = np.array(src + list(range(n)), dtype=np.intp)[order]
        self.w = np.concatenate([np.array(wts), self.self_weight])[order][:, None]
        dst_sorted = np.array(dst + list(range(n)), dtype=np.intp)[order]
        self.starts = np.flatnonzero(np.r_[True, dst_sorted[1:] != dst_sorted[:-1]])
        self.self_col = self.self_weight[:, None]

    def apply(self, x: Array, out: Array | None = None, tmp: Array | None = None) -> Array:
        """Return ``W @ x`` for ``x`` of shape ``(n, d)``, writing into ``out`` if given."""
        if self.slots is not None:
            out = np.multiply(self.self_col, x, out=out)
            tmp = np.empty_like(x) if tmp is None else tmp
            for inverse, w in self.slots:
                np.take(x, inverse, axis=0, out=tmp)
                tmp *= w
                out += tmp
            return out
        result = np.add.reduceat(self.w * x[self.src], self.starts, axis=0)
        if out is None:
            return result
        out[...] = result
        return out


def plan_period(topology: Topology, mixing: Mixing) -> int:
    """Steps after which topology and mixing rule both repeat."""
    return math.lcm(topology.period, mixing.period)


class PlanCache:
    """Lazily built plans for each phase of ``lcm(topology.period, mixing.period)``."""

    def __init__(self, topology: Topology, mixing: Mixing) -> None:
        self.topology, self.mixing = topology, mixing
        self.period = plan_period(topology, mixing)
        self._plans: dict[int, MixPlan] = {}

    def __getitem__(self, step: int) -> MixPlan:
        phase = step % self.period
        plan = self._plans.get(phase)
        if plan is None:
            plan = self._plans[phase] = MixPlan(self.topology, phase, self.mixing)
        return plan
