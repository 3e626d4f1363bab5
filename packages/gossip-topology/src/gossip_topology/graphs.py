"""Graphs beyond the 2019 set: exponential, torus, star, complete, hypercube, custom."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from gossip_topology._checks import (
    as_matrix_list,
    ceil_log2,
    check_int,
    check_rank,
    floor_log,
    is_power_of_two,
)
from gossip_topology.topology import Topology

__all__ = [
    "Complete",
    "EvenOddExponential",
    "FromAdjacency",
    "Hypercube",
    "OnePeerExponential",
    "Star",
    "StaticExponential",
    "StaticTopology",
    "Torus2D",
]


class StaticTopology(Topology):
    """A graph that is the same at every step, given by each rank's out-peers.

    ``peers_per_itr`` is the largest out-degree. Subclasses pass the table to
    ``__init__``; for an arbitrary graph use
    [`FromAdjacency`][gossip_topology.FromAdjacency].
    """

    def __init__(self, world_size: int, table: Sequence[Sequence[int]]) -> None:
        self._table = tuple(tuple(peers) for peers in table)
        super().__init__(world_size, max((len(p) for p in self._table), default=0) or 1)

    @property
    def period(self) -> int:
        """Always 1."""
        return 1

    def _out_peers(self, rank: int, phase: int) -> list[int]:
        return list(self._table[rank])


def _offsets_table(n: int, offsets: Sequence[int]) -> list[list[int]]:
    table = []
    for r in range(n):
        peers: dict[int, None] = {}
        for d in offsets:
            p = (r + d) % n
            if p != r:
                peers.setdefault(p, None)
        table.append(list(peers))
    return table


class StaticExponential(StaticTopology):
    """Every rank sends to ``r + 2^i`` for all ``i = 0 .. floor(log2(n - 1))`` at once.

    Args:
        world_size: Number of ranks, at least 1.
    """

    name = "static-exponential"

    def __init__(self, world_size: int) -> None:
        n = check_int("world_size", world_size, minimum=1)
        hops = [2**i for i in range(floor_log(2, n - 1) + 1)] if n > 1 else []
        super().__init__(n, _offsets_table(n, hops))


class OnePeerExponential(Topology):
    """At step ``t`` rank ``r`` sends to ``r + 2^(t mod tau)``, with ``tau = ceil(log2 n)``.

    For ``n`` a power of two, uniform mixing averages *exactly* after ``tau`` steps:
    Ying et al., *Exponential Graph is Provably Efficient for Decentralized Deep Training*,
    NeurIPS 2021, [arXiv:2110.13363](https://arxiv.org/abs/2110.13363).

    Args:
        world_size: Number of ranks, at least 1.
        require_exact: Raise unless ``world_size`` is a power of two, so that exact
            averaging in ``tau`` steps is guaranteed.

    Raises:
        ValueError: If ``require_exact`` and ``world_size`` is not a power of two.
    """

    name = "one-peer-exponential"

    def __init__(self, world_size: int, *, require_exact: bool = False) -> None:
        super().__init__(world_size, 1)
        if require_exact and not is_power_of_two(self.world_size):
            raise ValueError(
                "world_size must be a power of two for exact averaging on "
                f"OnePeerExponential; got {self.world_size}"
            )
        self._tau = ceil_log2(self.world_size)

    @property
    def period(self) -> int:
        """``tau = ceil(log2 n)`` (1 when ``n = 1``)."""
        return max(self._tau, 1)

    def _out_peers(self, rank: int, phase: int) -> list[int]:
        if self.world_size == 1:
            return []
        return [(rank + 2**phase) % self.world_size]


class EvenOddExponential(Topology):
    """A bipartite one-peer graph at every size: odd ranks ask even ranks.

    Even ranks are passive (``p = ceil(n / 2)`` of them), odd ranks active
    (``floor(n / 2)``). At phase ``t`` the ``i``-th active, rank ``2i + 1``, sends to the
    passive of index ``(i + d_t) mod p``, with offsets ``d = 0, 1, 2, 4, ...`` below
    ``p``; no passive is asked twice at a step. It exists at odd sizes, where the 2019
    bipartite graphs do not, which makes it the graph AD-PSGD falls back to when a
    fault-tolerant job loses a rank (see
    [`topology_at`][gossip_topology.topology_at]).

    Args:
        world_size: Number of ranks, at least 1.

    Examples:
        >>> g = EvenOddExponential(5)
        >>> [g.out_peers(1, t) for t in range(g.period)]
        [[0], [2], [4]]
        >>> g.is_bipartite, g.is_passive(4)
        (True, True)
    """

    name = "even-odd-exponential"

    def __init__(self, world_size: int) -> None:
        super().__init__(world_size, 1)
        passives = (self.world_size + 1) // 2
        self._passives = passives
        hops = floor_log(2, passives - 1) + 1 if passives > 1 else 0
        self._offsets = [0] + [2**i for i in range(hops)]

    @property
    def is_bipartite(self) -> bool:
        """Always ``True``: even ranks are passive, odd ranks active."""
        return True

    def is_passive(self, rank: int) -> bool:
        """Even ranks are passive."""
        return check_rank(rank, self.world_size) % 2 == 0

    @property
    def period(self) -> int:
        """How many offsets there are: ``2 + floor(log2(p - 1))`` for ``p > 1`` passives
        (1 for one passive)."""
        return len(self._offsets)

    def _out_peers(self, rank: int, phase: int) -> list[int]:
        if rank % 2 == 0:
            return []  # passive: it answers
        return [2 * (((rank - 1) // 2 + self._offsets[phase]) % self._passives)]


def _torus_shape(n: int) -> tuple[int, int]:
    rows = max(d for d in range(1, int(np.sqrt(n)) + 1) if n % d == 0)
    return rows, n // rows


class Torus2D(StaticTopology):
    """A 2-D wrap-around grid: each rank sends to its left, right, up and down neighbours.

    Args:
        world_size: Number of ranks, at least 1.
        shape: ``(rows, cols)`` with ``rows * cols == world_size``. By default the most
            nearly square factorisation (a prime ``world_size`` gives a ring).

    Attributes:
        shape: ``(rows, cols)`` of the grid; rank ``r`` sits at row ``r // cols``,
            column ``r % cols``.

    Raises:
        ValueError: If ``shape`` does not multiply to ``world_size``.
    """

    name = "torus-2d"

    def __init__(self, world_size: int, shape: tuple[int, int] | None = None) -> None:
        n = check_int("world_size", world_size, minimum=1)
        rows, cols = _torus_shape(n) if shape is None else shape
        if rows < 1 or cols < 1 or rows * cols != n:
            raise ValueError(
                f"shape must be (rows, cols) with rows * cols == world_size={n}; got {shape}"
            )
        self.shape = (rows, cols)
        table = []
        for r in range(n):
            i, j = divmod(r, cols)
            cand = [
                i * cols + (j + 1) % cols,
                i * cols + (j - 1) % cols,
                ((i + 1) % rows) * cols + j,
                ((i - 1) % rows) * cols + j,
            ]
            table.append(list(dict.fromkeys(p for p in cand if p != r)))
        super().__init__(n, table)


class Star(StaticTopology):
    """Rank 0 sends to every other rank; every other rank sends to rank 0. Not regular."""

    name = "star"

    def __init__(self, world_size: int) -> None:
        n = check_int("world_size", world_size, minimum=1)
        super().__init__(n, [list(range(1, n))] + [[0] for _ in range(1, n)])


class Complete(StaticTopology):
    """Every rank sends to every other rank. Uniform mixing averages in one step."""

    name = "complete"

    def __init__(self, world_size: int) -> None:
        n = check_int("world_size", world_size, minimum=1)
        super().__init__(n, [[p for p in range(n) if p != r] for r in range(n)])


class Hypercube(StaticTopology):
    """Rank ``r`` sends to ``r XOR 2^i`` for every bit ``i``; needs ``n`` a power of two.

    Raises:
        ValueError: If ``world_size`` is not a power of two.
    """

    name = "hypercube"

    def __init__(self, world_size: int) -> None:
        n = check_int("world_size", world_size, minimum=1)
        if not is_power_of_two(n):
            raise ValueError(f"world_size must be a power of two for Hypercube; got {n}")
        bits = n.bit_length() - 1
        super().__init__(n, [[r ^ (1 << i) for i in range(bits)] for r in range(n)])


class FromAdjacency(Topology):
    """A user-supplied graph: one 0/1 adjacency matrix, or a list for a periodic schedule.

    ``adjacency[i][j] == 1`` means rank ``i`` sends to rank ``j`` (row = sender). The
    diagonal must be zero: every rank keeps a share of its own value implicitly. With a
    list, step ``t`` uses ``adjacency[t % len(adjacency)]``.

    Args:
        adjacency: A square 0/1 matrix, or a non-empty sequence of them of equal size.

    Raises:
        ValueError: If a matrix is not square, not 0/1, has a non-zero diagonal, or the
            matrices differ in size.

    Examples:
        >>> ring3 = FromAdjacency([[0, 1, 0], [0, 0, 1], [1, 0, 0]])
        >>> ring3.out_peers(2, step=0)
        [0]
    """

    name = "from-adjacency"

    def __init__(self, adjacency: ArrayLike | Sequence[ArrayLike]) -> None:
        mats = as_matrix_list(adjacency, "adjacency")
        n = mats[0].shape[0] if mats[0].ndim == 2 else -1
        tables = []
        for t, m in enumerate(mats):
            where = f"adjacency[{t}]" if len(mats) > 1 else "adjacency"
            if m.ndim != 2 or m.shape[0] != m.shape[1]:
                raise ValueError(f"{where} must be a square matrix; got shape {m.shape}")
            if m.shape[0] != n:
                raise ValueError(
                    f"{where} has size {m.shape[0]} but adjacency[0] has size {n}; "
                    "all matrices must describe the same ranks"
                )
            if not np.isin(m, (0, 1)).all():
                raise ValueError(f"{where} must be binary (0/1 entries only)")
            if np.any(np.diag(m) != 0):
                raise ValueError(f"{where} must have a zero diagonal; self-weights are implicit")
            tables.append(tuple(tuple(int(j) for j in np.flatnonzero(row)) for row in m))
        self._tables = tuple(tables)
        super().__init__(n, max((len(p) for tb in tables for p in tb), default=0) or 1)

    @property
    def period(self) -> int:
        """Number of matrices given."""
        return len(self._tables)

    def _out_peers(self, rank: int, phase: int) -> list[int]:
        return list(self._tables[phase][rank])
