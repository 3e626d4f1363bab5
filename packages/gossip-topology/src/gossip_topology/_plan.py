"""Private: a sparse, reusable form of W(t) that applies to an (n, d) array fast.

Every simulator and analysis routine goes through `MixPlan`, so one implementation
of ``x <- W x`` is tested once and used everywhere. The edges of W(t) are split greedily
into *slots*, sets of edges with distinct receivers:

- a slot that reaches every rank is a permutation, applied with one ``np.take``;
- a partial slot is a fancy-indexed in-place add (receivers are distinct, so it is exact);
- edges that do not fit in ``_MAX_SLOTS`` slots (into hubs such as a star's centre) form
  a dense block with one row per hub, applied as one matrix product.

When every weight is the same constant ``c`` (uniform mixing on a regular graph), the
update is ``c * (x + sum of permuted x)``, with no per-row multiplies.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gossip_topology.mixing import Mixing, schedule_period
from gossip_topology.topology import Topology

__all__: list[str] = []

Array = NDArray[np.float64]
Index = NDArray[np.intp]
_MAX_SLOTS = 8


class MixPlan:
    """``x <- W x`` for one step of a topology under a mixing rule."""

    def __init__(self, topology: Topology, step: int, mixing: Mixing) -> None:
        n = self.n = topology.world_size
        self_weight = np.empty(n)
        slots: list[tuple[list[int], list[int], list[float]]] = []  # (dst, src, w)
        used: list[set[int]] = []
        left: list[tuple[int, int, float]] = []  # (dst, src, w)
        for j in range(n):
            self_w, peer_w = mixing.weights(topology, j, step)
            self_weight[j] = self_w
            for p, w in zip(topology.out_peers(j, step), peer_w, strict=True):
                s = next((i for i, taken in enumerate(used) if p not in taken), len(used))
                if s == len(used):
                    if s == _MAX_SLOTS:
                        left.append((p, j, w))
                        continue
                    used.append(set())
                    slots.append(([], [], []))
                used[s].add(p)
                slots[s][0].append(p)
                slots[s][1].append(j)
                slots[s][2].append(w)

        self.self_col = self_weight[:, None]
        self.full: list[tuple[Index, Array]] = []
        self.partial: list[tuple[Index, Index, Array]] = []
        for dst_list, src_list, w_list in slots:
            d = np.array(dst_list, np.intp)
            sr = np.array(src_list, np.intp)
            wt = np.array(w_list)
            if len(d) == n:
                order = np.argsort(d)
                self.full.append((sr[order], wt[order][:, None]))
            else:
                self.partial.append((d, sr, wt[:, None]))
        # Hub edges: a dense block H (one row per hub receiver) applied with BLAS.
        self.left: tuple[Index, Array] | None = None
        if left:
            hubs = sorted({e[0] for e in left})
            row = {h: i for i, h in enumerate(hubs)}
            H = np.zeros((len(hubs), n))
            for p, j, w in left:
                H[row[p], j] += w
            self.left = (np.array(hubs, np.intp), H)
        weights = [self_weight] + [w for _, w in self.full]
        first = float(self_weight[0]) if n else 0.0
        self.uniform: float | None = (
            first
            if not self.partial and self.left is None and all(np.all(w == first) for w in weights)
            else None
        )

    def apply(self, x: Array, out: Array | None = None, tmp: Array | None = None) -> Array:
        """Return ``W @ x`` for ``x`` of shape ``(n, d)``; ``out`` and ``tmp`` may be given."""
        if out is None:
            out = np.empty_like(x)
        if tmp is None:
            tmp = np.empty_like(x) if self.full else x  # only the full slots use tmp
        if self.uniform is not None:
            np.copyto(out, x)
            for src, _ in self.full:
                np.take(x, src, axis=0, out=tmp)
                out += tmp
            out *= self.uniform
            return out
        np.multiply(self.self_col, x, out=out)
        for src, w in self.full:
            np.take(x, src, axis=0, out=tmp)
            tmp *= w
            out += tmp
        for dst, src, w in self.partial:
            out[dst] += w * x[src]
        if self.left is not None:
            hubs, H = self.left
            out[hubs] += H @ x
        return out


class PlanCache:
    """Lazily built plans for each phase of ``lcm(topology.period, mixing.period)``."""

    def __init__(self, topology: Topology, mixing: Mixing) -> None:
        self.topology, self.mixing = topology, mixing
        self.period = schedule_period(topology, mixing)
        self._plans: dict[int, MixPlan] = {}

    def __getitem__(self, step: int) -> MixPlan:
        phase = step % self.period
        plan = self._plans.get(phase)
        if plan is None:
            plan = self._plans[phase] = MixPlan(self.topology, phase, self.mixing)
        return plan
