"""Generations of a job whose ranks come and go, and the graph each generation gossips on.

A fault-tolerant job gives every process a *member id* that never changes (the order in
which it registered) and, for each *generation*, a rank: the member's position among the
generation's members, sorted. When a member is lost or a new one is admitted the job
moves to the next generation, with new ranks and the same graph family rebuilt at the new
size ([`topology_at`][gossip_topology.topology_at]).

A joiner receives half of its sponsor's push-sum numerator and weight, so the sum over
the members is unchanged by the admission;
[`Generation.sponsors`][gossip_topology.Generation.sponsors] says who sponsors whom.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gossip_topology._checks import check_int
from gossip_topology.phone_book import PhoneBookTopology
from gossip_topology.registry import TOPOLOGY_NAMES, make_topology
from gossip_topology.topology import Topology

__all__ = [
    "FALLBACK_TOPOLOGY",
    "Generation",
    "TopologyFallbackWarning",
    "carry_over",
    "topology_at",
]

FALLBACK_TOPOLOGY = "dynamic-directed-exponential"
"""The graph a generation uses when the chosen one does not exist at its size.

It exists at every size, each rank has one in-peer and one out-peer per step (so uniform
mixing is doubly stochastic, as D-PSGD needs), and it is the 2019 code's default graph."""


class TopologyFallbackWarning(UserWarning):
    """The chosen graph does not exist at a generation's size; the fallback is used."""


@dataclass(frozen=True)
class Generation:
    """One membership of a job: its number and its members' ids, in rank order.

    Attributes:
        number: The generation number, ``0`` for the job's first membership.
        members: The member ids, sorted and distinct; member ``members[r]`` has rank ``r``.

    Raises:
        ValueError: If ``number`` is negative, or ``members`` is empty, unsorted, has
            duplicates or a negative id.
        TypeError: If ``number`` or an id is not an int.
    """

    number: int
    members: tuple[int, ...]

    def __post_init__(self) -> None:
        check_int("number", self.number, minimum=0)
        ids = tuple(check_int("member id", m, minimum=0) for m in self.members)
        if not ids:
            raise ValueError("members must not be empty")
        if list(ids) != sorted(set(ids)):
            raise ValueError(f"members must be sorted and distinct; got {list(ids)}")
        object.__setattr__(self, "members", ids)

    @property
    def world_size(self) -> int:
        """The number of members."""
        return len(self.members)

    def rank(self, member: int) -> int:
        """The rank of ``member`` in this generation.

        Raises:
            ValueError: If ``member`` is not a member.
        """
        if member not in self.members:
            raise ValueError(
                f"member {member} is not in generation {self.number} (members {list(self.members)})"
            )
        return self.members.index(member)

    def next(self, *, alive: Iterable[int], joined: Iterable[int] = ()) -> Generation:
        """The generation after this one: the members still ``alive`` plus the ``joined``.

        Raises:
            ValueError: If a member of ``alive`` is not a member of this generation, a
                joiner already is one, or nobody is left.
        """
        alive, joined = set(alive), set(joined)
        if not alive <= set(self.members):
            raise ValueError(
                f"alive members {sorted(alive - set(self.members))} are not in generation "
                f"{self.number}"
            )
        if joined & set(self.members):
            raise ValueError(
                f"joiners {sorted(joined & set(self.members))} are already members of "
                f"generation {self.number}"
            )
        return Generation(self.number + 1, tuple(sorted(alive | joined)))

    def sponsors(self, previous: Generation) -> dict[int, int]:
        """Who hands each new member its state: ``{joiner: sponsor}``, as member ids.

        Joiners (members not in ``previous``) are taken in id order, and each is given the
        continuing member of lowest rank that sponsors the fewest joiners so far, so
        sponsors are distinct while there are enough continuing members.

        Raises:
            ValueError: If no member continues from ``previous`` while some joined (the
                joiners would have nobody to receive a model from).
        """
        continuing = [m for m in self.members if m in previous.members]
        joiners = [m for m in self.members if m not in previous.members]
        if joiners and not continuing:
            raise ValueError(
                f"generation {self.number} has joiners {joiners} but no member continues from "
                f"generation {previous.number}: nobody holds a model to hand over"
            )
        load = dict.fromkeys(continuing, 0)
        out = {}
        for joiner in joiners:
            sponsor = min(continuing, key=lambda m: (load[m], m))
            load[sponsor] += 1
            out[joiner] = sponsor
        return out


def topology_at(
    topology: Topology | str | int,
    world_size: int,
    peers_per_itr: int | None = None,
    *,
    fallback: str | Callable[[int], Topology] = FALLBACK_TOPOLOGY,
) -> Topology:
    """The graph family of ``topology``, built for ``world_size`` ranks.

    When the family does not exist at that size (a hypercube at 6, a bipartite graph at an
    odd size) or cannot be rebuilt (a graph given as an adjacency matrix), warns with a
    [`TopologyFallbackWarning`][gossip_topology.TopologyFallbackWarning] and returns
    ``fallback`` at that size instead.

    Args:
        topology: A registry name or 2019 id, or a topology whose family (``name``) to
            rebuild; a phone-book graph's ``peers_per_itr`` is the default.
        world_size: The new number of ranks, at least 1.
        peers_per_itr: Out-peers per step; the topology's own (1 for a name) by default.
            Lowered to what the fallback accepts at this size if needed.
        fallback: A registry name that exists at every size, or a function that builds
            the fallback graph at a size (AD-PSGD, which needs a bipartite graph, passes
            [`EvenOddExponential`][gossip_topology.EvenOddExponential]).

    Returns:
        The topology for ``world_size`` ranks.

    Raises:
        ValueError: If ``world_size < 1`` or ``fallback`` is not a registry name.

    Examples:
        >>> topology_at("ring", 3).world_size
        3
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     topology_at("hypercube", 6).name
        'dynamic-directed-exponential'
    """
    world_size = check_int("world_size", world_size, minimum=1)
    if not callable(fallback) and fallback not in TOPOLOGY_NAMES:
        raise ValueError(
            f"fallback must be one of {', '.join(TOPOLOGY_NAMES)} or a function of the "
            f"size; got {fallback!r}"
        )
    if isinstance(topology, Topology):
        name: str | int = topology.name
        # a fixed graph's out-degree follows from its size: rebuild it with the default
        own = topology.peers_per_itr if isinstance(topology, PhoneBookTopology) else 1
        k = own if peers_per_itr is None else peers_per_itr
    else:
        name, k = topology, 1 if peers_per_itr is None else peers_per_itr
    try:
        if name not in TOPOLOGY_NAMES and not isinstance(name, int):
            raise ValueError(f"{name!r} is not a registry graph and cannot be rebuilt")
        return make_topology(name, world_size, k)
    except ValueError as err:
        reason = str(err)
    if callable(fallback):
        built = fallback(world_size)
        warnings.warn(
            f"graph {name!r} does not exist for {world_size} ranks ({reason}); gossiping on "
            f"{built.name!r} instead",
            TopologyFallbackWarning,
            stacklevel=2,
        )
        return built
    warnings.warn(
        f"graph {name!r} does not exist for {world_size} ranks ({reason}); gossiping on "
        f"{fallback!r} instead",
        TopologyFallbackWarning,
        stacklevel=2,
    )
    try:
        return make_topology(fallback, world_size, k)
    except ValueError:
        return make_topology(fallback, world_size, 1)


def carry_over(
    previous: Generation, generation: Generation, x: ArrayLike, w: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The numerators and weights a new generation starts from.

    Continuing members keep theirs (re-indexed to their new ranks); each joiner receives
    half of its sponsor's numerator and weight, and the sponsor keeps the other half, so
    the sums over the members do not change and the de-biased values ``x / w`` of sponsor
    and joiner are equal.

    Args:
        previous: The generation that ended.
        generation: The one that starts.
        x: The settled numerators of ``previous``, shape ``(previous.world_size, d)`` or
            ``(previous.world_size,)``; rows of members that left are ignored.
        w: The settled weights of ``previous``, shape ``(previous.world_size,)``.

    Returns:
        ``(x, w)`` for ``generation``'s ranks.

    Raises:
        ValueError: On shapes that do not match ``previous``, or as
            [`Generation.sponsors`][gossip_topology.Generation.sponsors].
    """
    x_old = np.array(x, dtype=np.float64)
    w_old = np.array(w, dtype=np.float64)
    if x_old.shape[:1] != (previous.world_size,) or w_old.shape != (previous.world_size,):
        raise ValueError(
            f"x and w must have {previous.world_size} rows (generation {previous.number}); "
            f"got shapes {x_old.shape} and {w_old.shape}"
        )
    x_new = np.zeros((generation.world_size, *x_old.shape[1:]))
    w_new = np.zeros(generation.world_size)
    for member in generation.members:
        if member in previous.members:
            old, new = previous.rank(member), generation.rank(member)
            x_new[new], w_new[new] = x_old[old], w_old[old]
    for joiner, sponsor in generation.sponsors(previous).items():
        s, j = generation.rank(sponsor), generation.rank(joiner)
        x_new[s] /= 2
        w_new[s] /= 2
        x_new[j], w_new[j] = x_new[s], w_new[s]
    return x_new, w_new
