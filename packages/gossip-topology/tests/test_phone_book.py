"""Hand-checked phone books and schedules of the six 2019 SGP graphs."""

from __future__ import annotations

import pytest

from gossip_topology import (
    LEGACY_IDS,
    DynamicBipartiteExponential,
    DynamicBipartiteLinear,
    DynamicDirectedExponential,
    DynamicDirectedLinear,
    NPeerDynamicDirectedExponential,
    Ring,
    make_topology,
)

# (class, world_size, peers_per_itr) -> {rank: phone book}, worked out by hand from the rules.
BOOKS = [
    (DynamicDirectedExponential, 8, 1, {0: [1, 7, 2, 6, 4], 3: [4, 2, 5, 1, 7]}),
    (DynamicDirectedExponential, 6, 1, {0: [1, 5, 2, 4], 1: [2, 0, 3, 5]}),
    (DynamicDirectedExponential, 3, 1, {0: [1, 2], 2: [0, 1]}),
    (DynamicBipartiteExponential, 8, 1, {0: [1, 7, 3, 5], 1: [2, 0, 4, 6], 6: [7, 5, 1, 3]}),
    (DynamicBipartiteExponential, 4, 1, {0: [1, 3], 1: [2, 0]}),
    (DynamicDirectedLinear, 8, 1, {0: [1, 7, 3, 5], 1: [2, 0, 4, 6]}),
    (DynamicDirectedLinear, 5, 1, {0: [1, 4, 3, 2], 2: [3, 1, 0, 4]}),
    (DynamicBipartiteLinear, 8, 1, {0: [1, 7, 3, 5], 1: [2, 0, 4, 6]}),
    (DynamicBipartiteLinear, 6, 1, {0: [1, 5, 3], 3: [4, 2, 0]}),
    (Ring, 5, 1, {0: [1, 4], 4: [0, 3]}),
    (NPeerDynamicDirectedExponential, 8, 1, {0: [1, 2, 4], 5: [6, 7, 1]}),
    (NPeerDynamicDirectedExponential, 8, 2, {0: [1, 2, 3, 6]}),
    (NPeerDynamicDirectedExponential, 8, 3, {0: [1, 2, 3, 4]}),
    (NPeerDynamicDirectedExponential, 6, 2, {0: [1, 2, 3]}),
]


@pytest.mark.parametrize(("cls", "n", "k", "books"), BOOKS)
def test_phone_books_match_hand_computation(cls, n, k, books) -> None:  # type: ignore[no-untyped-def]
    topo = cls(n, k)
    for rank, book in books.items():
        assert topo.phone_book(rank) == book


def test_schedule_walks_the_book_k_entries_per_step() -> None:
    one = DynamicDirectedExponential(8, 1)
    assert [one.out_peers(0, t)[0] for t in range(6)] == [1, 7, 2, 6, 4, 1]
    assert one.period == 5
    two = DynamicDirectedExponential(8, 2)
    assert [two.out_peers(0, t) for t in range(3)] == [[1, 7], [2, 6], [4, 1]]
    assert two.period == 5
    bip = DynamicBipartiteExponential(8, 2)
    assert [bip.out_peers(1, t) for t in range(3)] == [[2, 0], [4, 6], [2, 0]]
    assert bip.period == 2


def test_ring_is_static_and_directed_with_one_peer() -> None:
    ring = Ring(6)
    assert not ring.is_dynamic
    assert all(ring.out_peers(2, t) == [3] for t in range(10))
    assert ring.in_peers(2, 7) == [1]
    assert Ring(6, 2).out_peers(0, 3) == [1, 5]


def test_npeer_default_sends_to_growing_powers() -> None:
    topo = make_topology("npeer-dynamic-directed-exponential", 16)
    assert [topo.out_peers(3, t) for t in range(5)] == [[4], [5], [7], [11], [4]]
    assert topo.in_peers(3, 2) == [15]


def test_bipartite_roles_and_edges_only_cross_sides() -> None:
    for cls in (DynamicBipartiteExponential, DynamicBipartiteLinear):
        topo = cls(8)
        assert topo.is_bipartite
        assert [topo.is_passive(r) for r in range(4)] == [True, False, True, False]
        for t in range(topo.period):
            for r in range(8):
                assert all(topo.is_passive(p) != topo.is_passive(r) for p in topo.out_peers(r, t))


@pytest.mark.parametrize("graph_id", sorted(LEGACY_IDS))
def test_legacy_ids_and_names_build_the_same_graph(graph_id: int) -> None:
    by_id, by_name = make_topology(graph_id, 8), make_topology(LEGACY_IDS[graph_id], 8)
    assert type(by_id) is type(by_name)
    assert by_id.name == LEGACY_IDS[graph_id]
    assert all(by_id.phone_book(r) == by_name.phone_book(r) for r in range(8))  # type: ignore[attr-defined]


@pytest.mark.parametrize("graph_id", sorted(LEGACY_IDS))
def test_world_size_two_and_one(graph_id: int) -> None:
    two = make_topology(graph_id, 2)
    assert [two.out_peers(r, t) for r in range(2) for t in range(3)] == [[1]] * 3 + [[0]] * 3
    one = make_topology(graph_id, 1)
    assert one.out_peers(0, 5) == [] and one.in_peers(0, 5) == []
