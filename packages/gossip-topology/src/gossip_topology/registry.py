"""Build a topology from its name, or from the 2019 code's integer graph id."""

from __future__ import annotations

from collections.abc import Callable

from gossip_topology import graphs, phone_book
from gossip_topology._checks import check_int
from gossip_topology.topology import Topology

__all__ = ["LEGACY_IDS", "TOPOLOGY_NAMES", "make_topology"]

_PHONE_BOOKS: dict[str, type[phone_book.PhoneBookTopology]] = {
    cls.name: cls
    for cls in (
        phone_book.DynamicDirectedExponential,
        phone_book.DynamicBipartiteExponential,
        phone_book.DynamicDirectedLinear,
        phone_book.DynamicBipartiteLinear,
        phone_book.Ring,
        phone_book.NPeerDynamicDirectedExponential,
    )
}
_FIXED: dict[str, Callable[[int], Topology]] = {
    cls.name: cls
    for cls in (
        graphs.StaticExponential,
        graphs.OnePeerExponential,
        graphs.Torus2D,
        graphs.Star,
        graphs.Complete,
        graphs.Hypercube,
    )
}

TOPOLOGY_NAMES: tuple[str, ...] = (
    "dynamic-directed-exponential",
    "dynamic-bipartite-exponential",
    "dynamic-directed-linear",
    "dynamic-bipartite-linear",
    "ring",
    "npeer-dynamic-directed-exponential",
    "static-exponential",
    "one-peer-exponential",
    "torus-2d",
    "star",
    "complete",
    "hypercube",
)
"""Every name `make_topology` accepts: the 2019 code's six graphs, then the fixed ones."""

LEGACY_IDS: dict[int, str] = {cls.legacy_id: name for name, cls in _PHONE_BOOKS.items()}
"""The 2019 code's ``--graph_type`` ids and the names they map to."""


def make_topology(
    name: str | int,
    world_size: int,
    peers_per_itr: int = 1,
    *,
    legacy_phone_book: bool = False,
) -> Topology:
    """Build a topology by kebab-case name or by 2019 integer id (0-5).

    Args:
        name: One of ``TOPOLOGY_NAMES``, case-insensitive
            with ``_`` accepted for ``-``, or an id in ``LEGACY_IDS``.
        world_size: Number of ranks, at least 1.
        peers_per_itr: Out-peers per step. Graphs with a fixed out-degree (static
            exponential, torus, star, complete, hypercube, one-peer exponential) accept only
            the default 1 or their own out-degree.
        legacy_phone_book: For the 2019 graphs 0-5 only: build the phone books exactly as
            the 2019 code did, as the paper's runs used them. Duplicate book entries are
            kept (that code's duplicate test never matched) and ``L(b)`` is the float
            ``int(math.log(n - 1, b))`` (4, not 5, for ``n = 244``, ``b = 3``). Settings
            where those rules make a rank its own peer, or send to one peer twice in a
            step, raise ``ValueError``.

    Returns:
        The topology.

    Raises:
        ValueError: For an unknown name or id, arguments the graph rejects, or
            ``legacy_phone_book=True`` with a graph other than ids 0-5.
        TypeError: If ``name`` is neither a string nor an int, or ``legacy_phone_book``
            is not a bool.

    Examples:
        >>> make_topology(0, 8).out_peers(0, step=1)
        [7]
        >>> make_topology("ring", 4, peers_per_itr=2).out_peers(0, step=0)
        [1, 3]
        >>> make_topology(0, 4, legacy_phone_book=True).phone_book(0)
        [1, 3, 2, 2]
    """
    if isinstance(name, bool):
        raise TypeError("name must be a str or an int; got bool")
    if isinstance(name, int):
        if int(name) not in LEGACY_IDS:
            raise ValueError(f"name: unknown graph id {name}; known ids are {sorted(LEGACY_IDS)}")
        key = LEGACY_IDS[int(name)]
    elif isinstance(name, str):
        key = name.strip().lower().replace("_", "-")
    else:
        raise TypeError(f"name must be a str or an int; got {type(name).__name__}")
    if key in _PHONE_BOOKS:
        return _PHONE_BOOKS[key](world_size, peers_per_itr, legacy_phone_book=legacy_phone_book)
    if key in _FIXED:
        if legacy_phone_book:
            raise ValueError(
                f"legacy_phone_book=True applies only to the 2019 graphs 0-5 "
                f"({', '.join(_PHONE_BOOKS)}); got {key!r}"
            )
        k = check_int("peers_per_itr", peers_per_itr, minimum=1)
        topo = _FIXED[key](world_size)
        if k not in (1, topo.peers_per_itr):
            raise ValueError(
                f"peers_per_itr must be 1 or {topo.peers_per_itr} for {key} with "
                f"world_size={topo.world_size}, whose out-degree is fixed; got {k}"
            )
        return topo
    raise ValueError(f"name: unknown topology {name!r}; choose one of {', '.join(TOPOLOGY_NAMES)}")
