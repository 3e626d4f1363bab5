"""The six graphs of the 2019 SGP code, reproduced from their phone-book rules.

Each rank ``r`` owns an ordered list of candidate peers, its *phone book*. At step ``t``
(``t = 0`` for a static graph) rank ``r`` sends to ``book[(i + t * k) % len(book)]`` for
``i = 0 .. k - 1``, where ``k = peers_per_itr``. Duplicates are dropped from a book with
the first occurrence keeping its place, and a rank never lists itself. ``L(b)`` below is
``floor(log_b(n - 1))`` computed exactly with integers.

With ``legacy_phone_book=True`` the books follow the 2019 code exactly, as the paper's
runs used it. That code differs in two ways. Its duplicate test never matched, so a book
keeps its duplicates (after reduction mod ``n``) in candidate order, and a peer listed
twice is visited twice per walk through the book; the period is computed from these
longer books. It also computed ``L(b)`` as the float ``int(math.log(n - 1, b))``, which
can differ from the exact value when ``n - 1`` is a power of ``b`` (``n = 244``,
``b = 3``: 4, not 5). Where those rules would make a rank its own peer, or make one
step's out-peers name the same peer twice, the constructor raises ``ValueError``: the
transport cannot send to a rank itself, nor to one peer twice in a step.

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
        legacy_phone_book: Build the books exactly as the 2019 code did (duplicates kept,
            float ``L(b)``; see the module docstring) instead of the exact rules.

    Raises:
        ValueError: If ``peers_per_itr`` exceeds a phone book, or the graph cannot be
            built for ``world_size``; with ``legacy_phone_book=True``, also if the 2019
            rules make a rank its own peer or send to one peer twice in a step.
        TypeError: If ``legacy_phone_book`` is not a bool.
    """

    legacy_id: ClassVar[int]
    """Integer id of the graph in the 2019 SGP code's ``--graph_type`` flag."""
    static: ClassVar[bool] = False
    """Whether the graph is static: a static graph always uses step 0 of the schedule."""

    def __init__(
        self, world_size: int, peers_per_itr: int = 1, *, legacy_phone_book: bool = False
    ) -> None:
        super().__init__(world_size, peers_per_itr)
        if not isinstance(legacy_phone_book, bool):
            raise TypeError(
                f"legacy_phone_book must be a bool; got "
                f"{type(legacy_phone_book).__name__} {legacy_phone_book!r}"
            )
        self._rules = _LEGACY_RULES if legacy_phone_book else _EXACT_RULES
        n, k = self.world_size, self.peers_per_itr
        self._books: tuple[tuple[int, ...], ...] = tuple(
            self._rules.book(self, r, self._candidates(r)) if n > 1 else () for r in range(n)
        )
        if n > 1:
            label = f"{type(self).__name__}(world_size={n}{self._rules.repr_suffix})"
            shortest = min(len(b) for b in self._books)
            if shortest == 0:
                raise ValueError(f"{label} leaves a rank without peers")
            if k > shortest:
                raise ValueError(
                    f"peers_per_itr must be between 1 and {shortest} for {label}; got {k}"
                )
            self._rules.check_steps(self)

    @abstractmethod
    def _candidates(self, rank: int) -> Iterable[int]:
        """Raw candidate peers of ``rank`` in book order (any integers; reduced mod n)."""

    def _max_exponent(self, base: int) -> int:
        """``L(base)``: ``floor(log_base(n - 1))``, exact or as the 2019 code computed it."""
        return self._rules.max_exponent(base, self.world_size - 1)

    @property
    def legacy_phone_book(self) -> bool:
        """Whether the books follow the 2019 code exactly (duplicates kept, float ``L``)."""
        return self._rules.legacy

    def phone_book(self, rank: int) -> list[int]:
        """The ordered candidate peers of ``rank``, reduced mod ``world_size``.

        De-duplicated by default; with ``legacy_phone_book=True`` duplicates are kept.

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

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(world_size={self.world_size}, "
            f"peers_per_itr={self.peers_per_itr}{self._rules.repr_suffix})"
        )


class _ExactRules:
    """The default book rules: exact ``L(b)``; duplicates and the rank itself dropped."""

    legacy: ClassVar[bool] = False
    repr_suffix: ClassVar[str] = ""

    def max_exponent(self, base: int, value: int) -> int:
        """Exact ``floor(log_base(value))``."""
        return floor_log(base, value)

    def book(
        self, owner: PhoneBookTopology, rank: int, candidates: Iterable[int]
    ) -> tuple[int, ...]:
        """The book of ``rank``: candidates mod ``n``, duplicates and ``rank`` dropped."""
        n = owner.world_size
        seen: dict[int, None] = {}
        for c in candidates:
            if c % n != rank:
                seen.setdefault(c % n, None)
        return tuple(seen)

    def check_steps(self, owner: PhoneBookTopology) -> None:
        """Nothing to check: de-duplicated books never repeat a peer within a step."""


class _LegacyRules(_ExactRules):
    """The 2019 code's book rules: float ``L(b)``; duplicates kept; a self-peer is an error."""

    legacy: ClassVar[bool] = True
    repr_suffix: ClassVar[str] = ", legacy_phone_book=True"

    def max_exponent(self, base: int, value: int) -> int:
        """``int(math.log(value, base))``, the 2019 code's float version of ``L(b)``."""
        if value < 1:
            raise ValueError(f"max_exponent needs value >= 1; got base={base}, value={value}")
        return int(math.log(value, base))

    def book(
        self, owner: PhoneBookTopology, rank: int, candidates: Iterable[int]
    ) -> tuple[int, ...]:
        """The book of ``rank``: every candidate mod ``n``, duplicates kept, in order."""
        n = owner.world_size
        book: list[int] = []
        for c in candidates:
            if c % n == rank:
                raise ValueError(
                    f"{owner!r}: the 2019 rules make rank {rank} its own peer (candidate "
                    f"{c} is {rank} mod {n}); choose another world_size or peers_per_itr, "
                    f"or use legacy_phone_book=False, which drops it"
                )
            book.append(c % n)
        return tuple(book)

    def check_steps(self, owner: PhoneBookTopology) -> None:
        """Raise if some step's out-peers name one peer twice (only books with duplicates)."""
        k = owner.peers_per_itr
        if k == 1:
            return
        for rank in range(owner.world_size):
            book = owner.phone_book(rank)
            if len(set(book)) == len(book):
                continue
            steps = 1 if owner.static else len(book) // math.gcd(len(book), k)
            for step in range(steps):
                peers = owner.out_peers(rank, step)
                twice = next((p for i, p in enumerate(peers) if p in peers[:i]), None)
                if twice is not None:
                    raise ValueError(
                        f"{owner!r}: rank {rank} would send to peer {twice} twice at step "
                        f"{step} (phone book {book}, out-peers {peers}); the transport "
                        f"cannot send to one peer twice in a step: use peers_per_itr=1 or "
                        f"legacy_phone_book=False"
                    )


_EXACT_RULES = _ExactRules()
_LEGACY_RULES = _LegacyRules()


class _Bipartite(PhoneBookTopology):
    """Shared rule of ids 1 and 3: even ranks are passive; pairs ``(r + d, r - d)``."""

    def __init__(
        self, world_size: int, peers_per_itr: int = 1, *, legacy_phone_book: bool = False
    ) -> None:
        if world_size > 1 and world_size % 2 == 1:
            raise ValueError(
                f"world_size must be even (or 1) for {type(self).__name__}: even ranks are "
                f"passive and odd ranks active, which an odd ring of ranks cannot pair; "
                f"got {world_size}"
            )
        super().__init__(world_size, peers_per_itr, legacy_phone_book=legacy_phone_book)

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
        for i in range(self._max_exponent(2) + 1):
            yield rank + 2**i
            yield rank - 2**i


class DynamicBipartiteExponential(_Bipartite):
    """Graph 1: offsets ``d = 1`` then ``d = 1 + 2^i`` for ``i = 1 .. L(2)``; bipartite."""

    name = "dynamic-bipartite-exponential"
    legacy_id = 1

    def _offsets(self) -> Iterable[int]:
        for i in range(self._max_exponent(2) + 1):
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
        for i in range(self._max_exponent(k + 1) + 1):
            for j in range(1, k + 1):
                yield rank + j * (k + 1) ** i
