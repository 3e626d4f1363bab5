"""Hand-checked schedules of the graphs beyond the 2019 set."""

from __future__ import annotations

import numpy as np
import pytest

from gossip_topology import (
    TOPOLOGY_NAMES,
    Complete,
    EvenOddExponential,
    FromAdjacency,
    Hypercube,
    OnePeerExponential,
    Star,
    StaticExponential,
    Torus2D,
    make_topology,
)


def test_static_exponential() -> None:
    topo = StaticExponential(8)
    assert topo.out_peers(0, 3) == [1, 2, 4]
    assert topo.in_peers(0, 3) == [4, 6, 7]
    assert topo.peers_per_itr == 3 and not topo.is_dynamic and topo.is_regular


def test_even_odd_exponential_by_hand() -> None:
    topo = EvenOddExponential(5)  # passives 0, 2, 4; actives 1, 3
    assert topo.period == 3
    assert [topo.out_peers(1, t) for t in range(3)] == [[0], [2], [4]]
    assert [topo.out_peers(3, t) for t in range(3)] == [[2], [4], [0]]
    assert [topo.in_peers(4, t) for t in range(3)] == [[], [3], [1]]
    assert topo.out_peers(2, 0) == []  # passives only answer


@pytest.mark.parametrize("n", range(2, 12))
def test_even_odd_exponential_pairs_every_rank_at_every_size(n: int) -> None:
    topo = EvenOddExponential(n)
    assert topo.is_bipartite and topo.peers_per_itr == 1
    assert [topo.is_passive(r) for r in range(n)] == [r % 2 == 0 for r in range(n)]
    reached: set[int] = set()
    for t in range(topo.period):
        asked = [p for a in range(1, n, 2) for p in topo.out_peers(a, t)]
        assert len(asked) == n // 2 and all(p % 2 == 0 for p in asked)
        assert len(set(asked)) == len(asked)  # no passive is asked twice at a step
        reached.update(asked)
    assert reached == set(range(0, n, 2))  # every passive takes part within a period


def test_one_peer_exponential_cycles_through_powers_of_two() -> None:
    topo = OnePeerExponential(8)
    assert topo.period == 3
    assert [topo.out_peers(5, t) for t in range(4)] == [[6], [7], [1], [6]]
    odd = OnePeerExponential(6)
    assert [odd.out_peers(0, t) for t in range(3)] == [[1], [2], [4]]


def test_torus_neighbours() -> None:
    topo = Torus2D(6)
    assert topo.shape == (2, 3)
    assert topo.out_peers(0, 0) == [1, 2, 3]
    assert Torus2D(9).out_peers(4, 0) == [5, 3, 7, 1]
    assert Torus2D(12, shape=(2, 6)).out_peers(0, 0) == [1, 5, 6]
    assert Torus2D(7).out_peers(0, 0) == [1, 6]  # prime: a 1 x 7 ring


def test_star_is_not_regular() -> None:
    topo = Star(4)
    assert topo.out_peers(0, 0) == [1, 2, 3] and topo.out_peers(2, 0) == [0]
    assert topo.in_peers(0, 0) == [1, 2, 3]
    assert not topo.is_regular  # in = out degree per node, but not one common degree
    assert topo.peers_per_itr == 3


def test_regularity_detects_unequal_degrees() -> None:
    lopsided = FromAdjacency([[0, 1, 1], [1, 0, 0], [0, 1, 0]])
    assert not lopsided.is_regular
    assert lopsided.in_peers(1, 0) == [0, 2]


def test_complete_and_hypercube() -> None:
    assert Complete(4).out_peers(2, 9) == [0, 1, 3]
    assert Hypercube(8).out_peers(5, 0) == [4, 7, 1]
    assert Hypercube(1).out_peers(0, 0) == []


def test_hypercube_and_even_ring_are_bipartite_but_complete_is_not() -> None:
    cube = Hypercube(8)
    assert cube.is_bipartite
    assert [cube.is_passive(r) for r in range(8)] == [
        True,
        False,
        False,
        True,
        False,
        True,
        True,
        False,
    ]
    assert make_topology("ring", 6).is_bipartite
    assert not make_topology("ring", 5).is_bipartite
    assert not Complete(4).is_bipartite and not Complete(4).is_passive(0)


def test_from_adjacency_time_varying() -> None:
    a = np.array([[0, 1], [0, 0]])
    b = np.array([[0, 0], [1, 0]])
    topo = FromAdjacency([a, b])
    assert topo.period == 2
    assert [topo.out_peers(0, t) for t in range(3)] == [[1], [], [1]]
    assert [topo.in_peers(0, t) for t in range(2)] == [[], [1]]


@pytest.mark.parametrize("name", TOPOLOGY_NAMES)
def test_every_name_works_at_world_size_two(name: str) -> None:
    topo = make_topology(name, 2)
    assert topo.out_peers(0, 0) == [1] and topo.out_peers(1, 0) == [0]


@pytest.mark.parametrize("name", TOPOLOGY_NAMES)
def test_every_name_works_at_world_size_one(name: str) -> None:
    topo = make_topology(name, 1)
    assert topo.out_peers(0, 0) == []


def test_names_are_forgiving_about_case_and_underscores() -> None:
    assert isinstance(make_topology("One_Peer_Exponential", 4), OnePeerExponential)
    assert make_topology("hypercube", 8, peers_per_itr=3).peers_per_itr == 3


def test_the_written_out_names_are_the_registered_classes() -> None:
    """TOPOLOGY_NAMES is spelled out so the reference shows it; it must name the classes."""
    from gossip_topology.registry import _FIXED, _PHONE_BOOKS

    assert (*_PHONE_BOOKS, *_FIXED) == TOPOLOGY_NAMES
