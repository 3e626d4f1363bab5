"""One rank's view of ``W(t)``: whom it sends to, whom it hears from, and with what weights.

This is the bridge from the maths to communication, in the spirit of Bluefog's receive
weights: a communication layer asks for its own row and column of ``W(t)`` and gets plain
Python numbers, computed once per phase of the schedule and cached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gossip_topology._checks import check_int, check_rank
from gossip_topology.mixing import Mixing, UniformMixing, schedule_period
from gossip_topology.topology import Topology

__all__ = ["RankSchedule", "RankStep"]


@dataclass(frozen=True)
class RankStep:
    """What one rank does at one step.

    Attributes:
        out_peers: Ranks it sends its (unscaled) value to.
        in_peers: Ranks it receives from, in increasing order.
        self_weight: ``W[rank, rank]``.
        in_weights: ``W[rank, q]`` for each ``q`` in ``in_peers``: the receiver applies the
            weight, so senders never make scaled copies.
        out_weights: ``W[j, rank]`` for each ``j`` in ``out_peers``, as
            [`Mixing.weights`][gossip_topology.Mixing.weights] returns them (compressed
            gossip scales the sender's own public copies by them); empty when not given.
    """

    out_peers: tuple[int, ...]
    in_peers: tuple[int, ...]
    self_weight: float
    in_weights: tuple[float, ...]
    out_weights: tuple[float, ...] = ()

    @property
    def row_sum(self) -> float:
        """``sum_j W[rank, j]``; 1 when ``W`` is doubly stochastic."""
        return self.self_weight + math.fsum(self.in_weights)


class RankSchedule:
    """The steps of ``topology`` under ``mixing`` as seen by ``rank``, cached per phase.

    Args:
        topology: The graph.
        mixing: The mixing rule; uniform by default.
        rank: The rank whose view this is.

    Attributes:
        topology: The graph.
        mixing: The mixing rule (``UniformMixing()`` when none was given).
        rank: The rank whose view this is.
        period: Steps after which the rank's view repeats: the schedule period of the
            topology and the mixing rule together (``schedule_period``).

    Raises:
        ValueError: If ``rank`` is not in ``[0, world_size)``.

    Examples:
        >>> from gossip_topology import make_topology
        >>> RankSchedule(make_topology("ring", 4), rank=1)[0]  # doctest: +NORMALIZE_WHITESPACE
        RankStep(out_peers=(2,), in_peers=(0,), self_weight=0.5, in_weights=(0.5,),
                 out_weights=(0.5,))
    """

    def __init__(self, topology: Topology, mixing: Mixing | None = None, *, rank: int) -> None:
        self.topology = topology
        self.mixing = UniformMixing() if mixing is None else mixing
        self.rank = check_rank(rank, topology.world_size)
        self.period = schedule_period(topology, self.mixing)
        self._cache: dict[int, RankStep] = {}

    def __getitem__(self, step: int) -> RankStep:
        phase = check_int("step", step, minimum=0) % self.period
        cached = self._cache.get(phase)
        if cached is not None:
            return cached
        topo, r = self.topology, self.rank
        self_w, out_w = self.mixing.weights(topo, r, phase)
        in_peers = tuple(topo.in_peers(r, phase))
        in_w = []
        for q in in_peers:
            _, q_weights = self.mixing.weights(topo, q, phase)
            in_w.append(q_weights[topo.out_peers(q, phase).index(r)])
        info = RankStep(
            out_peers=tuple(topo.out_peers(r, phase)),
            in_peers=in_peers,
            self_weight=self_w,
            in_weights=tuple(in_w),
            out_weights=tuple(out_w),
        )
        self._cache[phase] = info
        return info

    @property
    def weight_is_constant(self) -> bool:
        """Whether push-sum weights provably stay equal on every rank (``W`` doubly stochastic).

        True for uniform mixing on a regular graph: then the weight need not travel.
        """
        return isinstance(self.mixing, UniformMixing) and self.topology.is_regular
