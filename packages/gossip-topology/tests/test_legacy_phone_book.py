"""``legacy_phone_book=True`` reproduces the 2019 SGP code's peer schedule exactly.

The oracle below is a separate, plain statement of the 2019 rules: books keep their
duplicates (that code's duplicate test never matched) and ``L(b)`` is the float
``int(math.log(n - 1, b))``.
"""

from __future__ import annotations

import math

import pytest

from gossip_topology import (
    LEGACY_IDS,
    TOPOLOGY_NAMES,
    DynamicBipartiteLinear,
    DynamicDirectedExponential,
    NPeerDynamicDirectedExponential,
    PhoneBookTopology,
    Ring,
    make_topology,
)

RING = 4
BIPARTITE = (1, 3)


def legacy_log(n: int, base: int) -> int:
    """``L(base)`` as the 2019 code computed it."""
    return int(math.log(n - 1, base))


def bipartite_book(r: int, n: int, offsets: list[int]) -> list[int]:
    """Pairs ``(r + d, r - d)`` kept only if both lie on the other side (even = passive)."""
    book = []
    for d in offsets:
        f, b = (r + d) % n, (r - d) % n
        if r % 2 == 1 and f % 2 == 0 and b % 2 == 0:
            book += [f, b]
        if r % 2 == 0 and f % 2 == 1 and b % 2 == 1:
            book += [f, b]
    return book


def raw_book(graph: int, r: int, n: int, k: int) -> list[int]:
    """Rank ``r``'s book under the 2019 rules, duplicates kept, reduced mod ``n``."""
    if graph == 0:
        raw = []
        for i in range(legacy_log(n, 2) + 1):
            raw += [r + 2**i, r - 2**i]
    elif graph == 1:
        offsets = [1] + [1 + 2**i for i in range(1, legacy_log(n, 2) + 1)]
        raw = bipartite_book(r, n, offsets)
    elif graph == 2:
        raw = []
        for i in range(1, n, 2):
            raw += [r + i, r - i]
    elif graph == 3:
        raw = bipartite_book(r, n, list(range(1, n)))
    elif graph == 4:
        raw = [r + 1, r - 1]
    else:
        raw = []
        for i in range(legacy_log(n, k + 1) + 1):
            for j in range(1, k + 1):
                raw.append(r + j * (k + 1) ** i)
    return [x % n for x in raw]


def oracle_peers(graph: int, book: list[int], k: int, t: int) -> list[int]:
    step = 0 if graph == RING else t
    return [book[(i + step * k) % len(book)] for i in range(k)]


def oracle(graph: int, n: int, k: int) -> tuple[list[list[int]], int] | None:
    """The 2019 books and period, or ``None`` where the configuration is invalid."""
    if graph in BIPARTITE and n % 2 == 1:
        return None
    books = [raw_book(graph, r, n, k) for r in range(n)]
    if any(r in book for r, book in enumerate(books)):
        return None  # a rank would be its own peer
    if k > min(len(book) for book in books):
        return None
    period = 1
    if graph != RING:
        period = math.lcm(*(len(b) // math.gcd(len(b), k) for b in books))
    for book in books:
        for t in range(period):
            peers = oracle_peers(graph, book, k, t)
            if len(set(peers)) < len(peers):
                return None  # one peer twice in one step
    return books, period


def build(graph: int | str, n: int, k: int = 1, *, legacy: bool = True) -> PhoneBookTopology:
    topo = make_topology(graph, n, k, legacy_phone_book=legacy)
    assert isinstance(topo, PhoneBookTopology)
    return topo


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("graph", sorted(LEGACY_IDS))
def test_legacy_schedule_matches_the_2019_rules(graph: int, k: int) -> None:
    valid = 0
    for n in range(4, 65):
        expected = oracle(graph, n, k)
        if expected is None:
            with pytest.raises(ValueError):
                make_topology(graph, n, k, legacy_phone_book=True)
            continue
        valid += 1
        books, period = expected
        topo = build(graph, n, k)
        assert topo.period == period, (graph, n, k)
        assert [topo.phone_book(r) for r in range(n)] == books, (graph, n, k)
        for t in range(2 * period + 1):
            got = [topo.out_peers(r, t) for r in range(n)]
            assert got == [oracle_peers(graph, b, k, t) for b in books], (graph, n, k, t)
    assert valid > 0 or (graph == RING and k > 2)  # a ring's book has 2 entries


def test_float_log_drops_a_level_at_244() -> None:
    assert int(math.log(243, 3)) == 4  # 243 = 3**5: the float logarithm rounds down
    legacy, exact = build(5, 244, 2), build(5, 244, 2, legacy=False)
    assert legacy.phone_book(0) == [1, 2, 3, 6, 9, 18, 27, 54, 81, 162]  # L = 4: 5 levels
    assert exact.phone_book(0) == [1, 2, 3, 6, 9, 18, 27, 54, 81, 162, 243, 242]  # L = 5
    assert (legacy.period, exact.period) == (5, 6)
    assert legacy.out_peers(0, 4) == [81, 162] and exact.out_peers(0, 5) == [243, 242]


def test_duplicates_are_kept_and_visited_twice() -> None:
    legacy = build(0, 4)
    assert legacy.phone_book(0) == [1, 3, 2, 2]  # r + 2 and r - 2 are the same rank
    assert legacy.period == 4
    walk = [legacy.out_peers(0, t)[0] for t in range(legacy.period)]
    assert walk == [1, 3, 2, 2] and walk.count(2) == 2
    default = build(0, 4, legacy=False)
    assert default.phone_book(0) == [1, 3, 2]
    assert default.period == 3


def test_default_mode_is_unchanged() -> None:
    assert DynamicDirectedExponential(8).phone_book(0) == [1, 7, 2, 6, 4]
    assert DynamicDirectedExponential(8).period == 5
    assert NPeerDynamicDirectedExponential(6, 2).phone_book(0) == [1, 2, 3]
    assert Ring(2).phone_book(0) == [1]
    for graph in sorted(LEGACY_IDS):
        plain, off = make_topology(graph, 8), build(graph, 8, legacy=False)
        assert repr(plain) == repr(off) and "legacy" not in repr(plain)
        assert off.legacy_phone_book is False
        assert all(plain.out_peers(r, t) == off.out_peers(r, t) for r in range(8) for t in range(9))


def test_flag_is_a_property_and_shows_in_repr() -> None:
    topo = DynamicBipartiteLinear(8, legacy_phone_book=True)
    assert topo.legacy_phone_book is True
    assert repr(topo) == (
        "DynamicBipartiteLinear(world_size=8, peers_per_itr=1, legacy_phone_book=True)"
    )
    assert topo.phone_book(0) == build(3, 8).phone_book(0) == [1, 7, 3, 5, 5, 3, 7, 1]
    with pytest.raises(AttributeError):
        topo.legacy_phone_book = False  # type: ignore[misc]


def test_small_world_sizes() -> None:
    for graph in sorted(LEGACY_IDS):
        one = make_topology(graph, 1, legacy_phone_book=True)
        assert one.out_peers(0, 3) == [] and one.period == 1
        two = make_topology(graph, 2, legacy_phone_book=True)
        assert all(two.out_peers(r, t) == [1 - r] for r in range(2) for t in range(4))


def test_self_peer_raises() -> None:
    with pytest.raises(
        ValueError,
        match=(
            r"NPeerDynamicDirectedExponential\(world_size=6, peers_per_itr=2, "
            r"legacy_phone_book=True\): the 2019 rules make rank 0 its own peer "
            r"\(candidate 6 is 0 mod 6\).*legacy_phone_book=False"
        ),
    ):
        make_topology(5, 6, 2, legacy_phone_book=True)


def test_same_peer_twice_in_one_step_raises() -> None:
    with pytest.raises(
        ValueError,
        match=(
            r"DynamicDirectedExponential\(world_size=4, peers_per_itr=2, "
            r"legacy_phone_book=True\): rank 0 would send to peer 2 twice at step 1 .*"
            r"use peers_per_itr=1 or legacy_phone_book=False"
        ),
    ):
        make_topology(0, 4, 2, legacy_phone_book=True)
    with pytest.raises(ValueError, match=r"Ring\(world_size=2.*peer 1 twice at step 0"):
        Ring(2, 2, legacy_phone_book=True)


def test_existing_checks_still_apply() -> None:
    with pytest.raises(
        ValueError,
        match=(
            r"peers_per_itr must be between 1 and 4 for "
            r"DynamicDirectedExponential\(world_size=4, legacy_phone_book=True\); got 5"
        ),
    ):
        make_topology(0, 4, 5, legacy_phone_book=True)
    with pytest.raises(ValueError, match="world_size must be even"):
        make_topology(1, 7, legacy_phone_book=True)


@pytest.mark.parametrize("name", [n for n in TOPOLOGY_NAMES if n not in LEGACY_IDS.values()])
def test_flag_on_a_fixed_graph_raises(name: str) -> None:
    with pytest.raises(ValueError, match="legacy_phone_book=True applies only to the 2019 graphs"):
        make_topology(name, 8, legacy_phone_book=True)
    make_topology(name, 8, legacy_phone_book=False)


def test_flag_is_keyword_only_and_a_bool() -> None:
    with pytest.raises(TypeError):
        make_topology(0, 8, 1, True)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        DynamicDirectedExponential(8, 1, True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="legacy_phone_book must be a bool; got int 1"):
        make_topology(0, 8, legacy_phone_book=1)  # type: ignore[arg-type]
