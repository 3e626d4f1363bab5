"""The `Topology` abstraction: a time-varying directed graph over ranks."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections import deque

from gossip_topology._checks import check_int, check_rank

__all__ = ["Topology"]


class Topology(ABC):
    """A time-varying directed communication graph over ``world_size`` ranks.

    At every step ``t`` each rank ``r`` sends to ``out_peers(r, t)``. The schedule is
    periodic: step ``t`` and step ``t + period`` use the same graph. Self-loops are never
    listed; every rank always keeps a share of its own value (see
    [`Mixing`][gossip_topology.Mixing]).

    Subclasses implement `_out_peers(rank, phase)` for a phase in
    ``[0, period)`` and set `period`; everything else is derived here.

    Args:
        world_size: Number of ranks, at least 1.
        peers_per_itr: Number of out-peers each rank uses per step, at least 1.

    Raises:
        ValueError: If ``world_size < 1`` or ``peers_per_itr < 1``.
        TypeError: If either argument is not an int.
    """

    name: str = "topology"
    """Kebab-case registry name of the graph family, as ``make_topology`` takes it."""

    def __init__(self, world_size: int, peers_per_itr: int) -> None:
        self._world_size = check_int("world_size", world_size, minimum=1)
        self._peers_per_itr = check_int("peers_per_itr", peers_per_itr, minimum=1)

    # ------------------------------------------------------------------ basics
    @property
    def world_size(self) -> int:
        """Number of ranks in the graph."""
        return self._world_size

    @property
    def peers_per_itr(self) -> int:
        """Out-peers per rank and step (the largest out-degree for fixed graphs)."""
        return self._peers_per_itr

    @property
    @abstractmethod
    def period(self) -> int:
        """Number of steps after which the schedule repeats (1 for a static graph)."""

    @abstractmethod
    def _out_peers(self, rank: int, phase: int) -> list[int]:
        """Out-peers of ``rank`` at ``phase`` in ``[0, period)``; arguments already checked."""

    @property
    def is_dynamic(self) -> bool:
        """Whether the graph changes from step to step (``period > 1``)."""
        return self.period > 1

    # --------------------------------------------------------------- schedule
    def _phase(self, step: int) -> int:
        s = check_int("step", step, minimum=0)
        return s % self.period

    def out_peers(self, rank: int, step: int) -> list[int]:
        """Ranks that ``rank`` sends to at ``step``.

        Args:
            rank: A rank in ``[0, world_size)``.
            step: A step, ``>= 0``.

        Returns:
            The out-peers, in schedule order, never containing ``rank`` itself.

        Raises:
            ValueError: If ``rank`` or ``step`` is out of range.
        """
        r = check_rank(rank, self._world_size)
        return list(self._out_peers(r, self._phase(step)))

    def in_peers(self, rank: int, step: int) -> list[int]:
        """Ranks that send to ``rank`` at ``step``, in increasing order.

        This is every ``q`` with ``rank in out_peers(q, step)``.

        Raises:
            ValueError: If ``rank`` or ``step`` is out of range.
        """
        r = check_rank(rank, self._world_size)
        return list(self._in_table(self._phase(step))[r])

    @functools.lru_cache(maxsize=64)  # noqa: B019 - topologies are immutable and few
    def _out_table(self, phase: int) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(self._out_peers(r, phase)) for r in range(self._world_size))

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _in_table(self, phase: int) -> tuple[tuple[int, ...], ...]:
        incoming: list[list[int]] = [[] for _ in range(self._world_size)]
        for q, peers in enumerate(self._out_table(phase)):
            for p in peers:
                incoming[p].append(q)
        return tuple(tuple(sorted(lst)) for lst in incoming)

    # ------------------------------------------------------------- properties
    @functools.cached_property
    def is_regular(self) -> bool:
        """Whether, at every step, every rank has the same in-degree and out-degree ``k``.

        Uniform mixing on a regular graph is doubly stochastic, so push-sum weights stay 1
        and need not be communicated. (Equal in- and out-degree per rank is not enough:
        a star has that, yet uniform weights on it are not doubly stochastic.)
        """
        for phase in range(self.period):
            outs, ins = self._out_table(phase), self._in_table(phase)
            if len({len(p) for p in outs} | {len(p) for p in ins}) > 1:
                return False
        return True

    def union_edges(self) -> set[tuple[int, int]]:
        """All directed edges ``(sender, receiver)`` used during one period."""
        edges: set[tuple[int, int]] = set()
        for phase in range(self.period):
            for q, peers in enumerate(self._out_table(phase)):
                edges.update((q, p) for p in peers)
        return edges

    @functools.cached_property
    def _two_colouring(self) -> tuple[int, ...] | None:
        """Colour 0/1 per rank if the undirected union graph is bipartite with an edge."""
        n = self._world_size
        neighbours: list[set[int]] = [set() for _ in range(n)]
        for a, b in self.union_edges():
            neighbours[a].add(b)
            neighbours[b].add(a)
        if not any(neighbours):
            return None
        colour = [-1] * n
        for start in range(n):
            if colour[start] != -1:
                continue
            colour[start] = 0
            queue = deque([start])
            while queue:
                u = queue.popleft()
                for v in neighbours[u]:
                    if colour[v] == -1:
                        colour[v] = 1 - colour[u]
                        queue.append(v)
                    elif colour[v] == colour[u]:
                        return None
        return tuple(colour)

    @property
    def is_bipartite(self) -> bool:
        """Whether ranks split into passive and active sets with edges only between them.

        The 2019 bipartite graphs declare their roles (even ranks passive). Other graphs are
        bipartite when the undirected union graph over one period is 2-colourable; the
        colour of the lowest rank of each component is the passive one.
        """
        return self._two_colouring is not None

    def is_passive(self, rank: int) -> bool:
        """Whether ``rank`` is on the passive side of a bipartite graph.

        Always ``False`` for a graph that is not bipartite.

        Raises:
            ValueError: If ``rank`` is out of range.
        """
        r = check_rank(rank, self._world_size)
        colouring = self._two_colouring
        return colouring is not None and colouring[r] == 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(world_size={self._world_size}, "
            f"peers_per_itr={self._peers_per_itr})"
        )
