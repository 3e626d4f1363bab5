"""One rank's view of a gossip schedule: whom it sends to, hears from, and with what weights.

This is the bridge from gossip-topology's pure maths to communication: everything here is
plain Python numbers, computed once per phase and cached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gossip_topology import Mixing, Topology, UniformMixing

__all__ = ["RankSchedule", "RankStep"]


@dataclass(frozen=True)
class RankStep:
    """What one rank does at one step.

    Attributes:
        out_peers: Ranks it sends its (unscaled) buffer to.
        in_peers: Ranks it receives from, in increasing order.
        self_weight: ``W[rank, rank]``.
        in_weights: ``W[rank, q]`` for each ``q`` in ``in_peers``: the receiver applies the
            weight, so senders never make scaled copies.
    """

    out_peers: tuple[int, ...]
    in_peers: tuple[int, ...]
    self_weight: float
    in_weights: tuple[float, ...]

    @property
    def row_sum(self) -> float:
        """``sum_j W[rank, j]``; 1 when ``W`` is doubly stochastic."""
        return self.self_weight + math.fsum(self.in_weights)


class RankSchedule:
    """The steps of ``topology`` under ``mixing`` as seen by ``rank``, cached per phase.

    Args:
        topology: The graph.
        mixing: The mixing rule.
        rank: The rank whose view this is.
    """

    def __init__(self, topology: Topology, mixing: Mixing, rank: int) -> None:
        self.topology, self.mixing, self.rank = topology, mixing, rank
        self.period = math.lcm(topology.period, mixing.period)
        self._cache: dict[int, RankStep] = {}

    def __getitem__(self, step: int) -> RankStep:
        phase = step % self.period
        cached = self._cache.get(phase)
        if cached is not None:
            return cached
        topo, r = self.topology, self.rank
        self_w, _ = self.mixing.weights(topo, r, phase)
        in_peers = tuple(topo.in_peers(r, phase))
        in_w = []
        for q in in_peers:
            _, q_weights = self.mixing.weights(topo, q, phase)
            in_w.append(q_weights[topo.out_peers(q, phase).index(r)])
        step_info = RankStep(tuple(topo.out_peers(r, phase)), in_peers, self_w, tuple(in_w))
        self._cache[phase] = step_info
        return step_info

    @property
    def weight_is_constant(self) -> bool:
        """Whether push-sum weights provably stay equal on every rank (``W`` doubly stochastic).

        True for uniform mixing on a regular graph: then the weight need not travel.
        """
        return isinstance(self.mixing, UniformMixing) and self.topology.is_regular
