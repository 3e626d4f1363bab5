"""The six graphs of the 2019 SGP code, reproduced from their phone-book rules.

Each rank ``r`` owns an ordered list of candidate peers, its *phone book*. At step ``t``
(``t = 0`` for a static graph) rank ``r`` sends to ``book[(i + t * k) % len(book)]`` for
``i = 0 .. k - 1``, where ``k = peers_per_itr``. Duplicates are dropped from a book with
the first occurrence keeping its place, and a rank never lists itself. ``L(b)`` below is
``floor(log_b(n - 1))`` computed exactly with integers.

See Assran et al., *Stochastic Gradient Push for Distributed Deep Learning*, ICML 2019,
[arXiv:1811.10792](https://arxiv.org/abs/1811.10792).
"""

from __future__ import annotations

import functools
import math
from abc import abstractmethod
from collections.abc import Iterable
from typing import ClassVar

from gossip_topology._checks import check_rank, floor_log
from gossip_topology.topology import Topology

__all__ = [
    "DynamicBipartiteExponential",
    "DynamicBipartiteLinear",
    "DynamicDirectedExponential",
    "DynamicDirectedLinear",
    "NPeerDynamicDirectedExponential",
    "PhoneBookTopology",
    "Ring",
]


class PhoneBookTopology(Topology):
    """A graph whose schedule walks through each rank's phone book ``k`` entries a step.

    Args:
        world_size: Number of ranks, at least 1.
        peers_per_itr: Out-peers per step, between 1 and the shortest phone book.

    Raises:
        ValueError: If ``peers_per_itr`` exceeds a phone book, or the graph cannot be
            built for ``world_size``.
    """

    #: Integer id of the graph in the 2019 SGP code's ``--graph_type`` flag.
    legacy_id: ClassVar[int]
    #: Static graphs always use step 0 of the schedule.
    static: ClassVar[bool] = False

    def __init__(self, world_size: int, peers_per_itr: int = 1) -> None:
        super().__init__(world_size, peers_per_itr)
        n, k = self.world_size, self.peers_per_itr
        self._books: tuple[tuple[int, ...], ...] = tuple(
            _dedupe((c % n for c in self._candidates(r)), exclude=r) if n > 1 else ()
            for r in range(n)
        )
        if n > 1:
            shortest = min(len(b) for b in self._books)
            if shortest == 0:
                raise ValueError(
                    f"{type(self).__name__}(world_size={n}) leaves a rank without peers"
                )
            if k > shortest:
                raise ValueError(
                    f"peers_per_itr must be between 1 and {shortest} for "
                    f"{type(self).__name__}(world_size={n}); got {k}"
                )

    @abstractmethod
    def _candidates(self, rank: int) -> Iterable[int]:
        """Raw candidate peers of ``rank`` in book order (any integers; reduced mod n)."""

    def phone_book(self, rank: int) -> list[int]:
        """The ordered, de-duplicated candidate peers of ``rank``.

        Raises:
            ValueError: If ``rank`` is out of range.
        """
        return list(self._books[check_rank(rank, self.world_size)])

    @functools.cached_property
    def period(self) -> int:
        """Steps until every rank's walk through its book returns to the start."""
        if self.static or self.world_size == 1:
            return 1
        k = self.peers_per_itr
        return math.lcm(*(len(b) // math.gcd(len(b), k) for b in self._books))

    def _out_peers(self, rank: int, phase: int) -> list[int]:
        book = self._books[rank]
        if not book:
            return []
        t = 0 if self.static else phase
        k = self.peers_per_itr
        return [book[(i + t * k) % len(book)] for i in range(k)]


def _dedupe(values: Iterable[int], *, exclude: int) -> tuple[int, ...]:
    seen: dict[int, None] = {}
    for v in values:
        if v != exclude:
            seen.setdefault(v, None)
    return tuple(seen)


class _Bipartite(PhoneBookTopology):
    """Shared rule of ids 1 and 3: even ranks are passive; pairs ``(r + d, r - d)``."""

    def __init__(self, world_size: int, peers_per_itr: int = 1) -> None:
        if world_size > 1 and world_size % 2 == 1:
            raise ValueError(
                f"world_size must be even (or 1) for {type(self).__name__}: even ranks are "
                f"passive and odd ranks active, which an odd ring of ranks cannot pair; "
                f"got {world_size}"
            )
        super().__init__(world_size, peers_per_itr)

    @abstractmethod
    def _offsets(self) -> Iterable[int]:
        """Offsets ``d`` in book order."""

    def _candidates(self, rank: int) -> Iterable[int]:
        n = self.world_size
        passive = rank % 2 == 0
        for d in self._offsets():
            f, b = (rank + d) % n, (rank - d) % n
            f_passive, b_passive = f % 2 == 0, b % 2 == 0
            if (not passive and f_passive and b_passive) or (
                passive and not f_passive and not b_passive
            ):
                yield f
                yield b

    @property
    def is_bipartite(self) -> bool:
        """Always ``True``: even ranks are passive, odd ranks active."""
        return True

    def is_passive(self, rank: int) -> bool:
        """Even ranks are passive."""
        return check_rank(rank, self.world_size) % 2 == 0


class DynamicDirectedExponential(PhoneBookTopology):
    """Graph 0: book ``r + 2^i, r - 2^i`` for ``i = 0 .. L(2)``."""

    name = "dynamic-directed-exponential"
    legacy_id = 0

    def _candidates(self, rank: int) -> Iterable[int]:
        for i in range(floor_log(2, self.world_size - 1) + 1):
            yield rank + 2**i
            yield rank - 2**i


class DynamicBipartiteExponential(_Bipartite):
    """Graph 1: offsets ``d = 1`` then ``d = 1 + 2^i`` for ``i = 1 .. L(2)``; bipartite."""

    name = "dynamic-bipartite-exponential"
    legacy_id = 1

    def _offsets(self) -> Iterable[int]:
        for i in range(floor_log(2, self.world_size - 1) + 1):
            yield 1 if i == 0 else 1 + 2**i


class DynamicDirectedLinear(PhoneBookTopology):
    """Graph 2: book ``r + i, r - i`` for odd ``i`` in ``1 .. n - 1``."""

    name = "dynamic-directed-linear"
    legacy_id = 2

    def _candidates(self, rank: int) -> Iterable[int]:
        for i in range(1, self.world_size, 2):
            yield rank + i
            yield rank - i


class DynamicBipartiteLinear(_Bipartite):
    """Graph 3: offsets ``d = 1 .. n - 1``; bipartite."""

    name = "dynamic-bipartite-linear"
    legacy_id = 3

    def _offsets(self) -> Iterable[int]:
        return range(1, self.world_size)


class Ring(PhoneBookTopology):
    """Graph 4: book ``r + 1, r - 1``; static. With ``peers_per_itr=1`` it is a directed ring."""

    name = "ring"
    legacy_id = 4
    static = True

    def _candidates(self, rank: int) -> Iterable[int]:
        return (rank + 1, rank - 1)


class NPeerDynamicDirectedExponential(PhoneBookTopology):
    """Graph 5 (the default): book ``r + j (k+1)^i`` for ``i = 0 .. L(k+1)``, ``j = 1 .. k``."""

    name = "npeer-dynamic-directed-exponential"
    legacy_id = 5

    def _candidates(self, rank: int) -> Iterable[int]:
        k = self.peers_per_itr
        for i in range(floor_log(k + 1, self.world_size - 1) + 1):
            for j in range(1, k + 1):
                yield rank + j * (k + 1) ** i
