"""Generations, sponsors, the carried-over state and the graph rebuilt at a new size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gossip_topology import (
    FALLBACK_TOPOLOGY,
    EvenOddExponential,
    FromAdjacency,
    Generation,
    StaticExponential,
    TopologyFallbackWarning,
    carry_over,
    make_topology,
    topology_at,
)


def _same_graph(a: object, b: object, steps: int = 6) -> bool:
    n = a.world_size  # type: ignore[attr-defined]
    return n == b.world_size and all(  # type: ignore[attr-defined]
        a.out_peers(r, t) == b.out_peers(r, t)  # type: ignore[attr-defined]
        for r in range(n)
        for t in range(steps)
    )


# ---------------------------------------------------------------- Generation


def test_ranks_follow_the_sorted_member_ids() -> None:
    g = Generation(3, (2, 5, 9))
    assert g.world_size == 3
    assert [g.rank(m) for m in (2, 5, 9)] == [0, 1, 2]
    with pytest.raises(ValueError, match="member 4 is not in generation 3"):
        g.rank(4)


@pytest.mark.parametrize(
    ("number", "members", "match"),
    [
        (0, (), "must not be empty"),
        (0, (3, 1), "sorted and distinct"),
        (0, (1, 1), "sorted and distinct"),
        (-1, (0,), "number"),
        (0, (-2, 0), "member id"),
    ],
)
def test_bad_generations_are_refused(number: int, members: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Generation(number, members)


def test_next_generation_drops_the_lost_and_admits_joiners() -> None:
    g = Generation(0, (0, 1, 2, 3))
    nxt = g.next(alive=[0, 1, 3], joined=[7])
    assert nxt == Generation(1, (0, 1, 3, 7))
    with pytest.raises(ValueError, match=r"alive members \[8\] are not in generation 0"):
        g.next(alive=[0, 8])
    with pytest.raises(ValueError, match=r"joiners \[2\] are already members"):
        g.next(alive=[0, 1], joined=[2])


def test_sponsors_are_distinct_while_there_are_enough_continuing_members() -> None:
    prev = Generation(0, (0, 1, 2, 3))
    g = Generation(1, (1, 3, 4, 5))  # 0 and 2 lost, 4 and 5 joined
    assert g.sponsors(prev) == {4: 1, 5: 3}
    crowded = Generation(1, (2, 10, 11, 12))  # one continuing member sponsors three
    assert crowded.sponsors(Generation(0, (2, 5))) == {10: 2, 11: 2, 12: 2}
    assert Generation(1, (0, 1)).sponsors(Generation(0, (0, 1, 2))) == {}
    with pytest.raises(ValueError, match="no member continues"):
        Generation(1, (8, 9)).sponsors(Generation(0, (0, 1)))


def test_carry_over_splits_the_sponsor_exactly_in_half() -> None:
    prev = Generation(0, (0, 1, 2))
    g = Generation(1, (0, 2, 6))  # 1 lost, 6 joins; sponsor: 0
    x = np.array([[3.0, -1.0], [5.0, 5.0], [0.25, 8.0]])
    w = np.array([0.75, 1.5, 0.75])
    x_new, w_new = carry_over(prev, g, x, w)
    np.testing.assert_array_equal(x_new, [[1.5, -0.5], [0.25, 8.0], [1.5, -0.5]])
    np.testing.assert_array_equal(w_new, [0.375, 0.75, 0.375])
    # what the members held is unchanged, and the joiner's de-biased value is its sponsor's
    np.testing.assert_array_equal(x_new.sum(0), x[[0, 2]].sum(0))
    assert w_new.sum() == w[[0, 2]].sum()
    np.testing.assert_array_equal(x_new[2] / w_new[2], x[0] / w[0])
    with pytest.raises(ValueError, match="must have 3 rows"):
        carry_over(prev, g, x[:2], w)


# ---------------------------------------------------------------- topology_at


@pytest.mark.parametrize("name", ["ring", "dynamic-directed-exponential", "complete", "torus-2d"])
def test_the_same_family_at_the_new_size(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _same_graph(topology_at(name, 5), make_topology(name, 5))
        assert _same_graph(topology_at(make_topology(name, 8), 5), make_topology(name, 5))


def test_a_phone_book_keeps_its_peer_count_and_a_fixed_graph_its_rule() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ring2 = topology_at(make_topology("ring", 8, peers_per_itr=2), 5)
        assert ring2.peers_per_itr == 2
        assert _same_graph(ring2, make_topology("ring", 5, peers_per_itr=2))
        # a static exponential graph's degree follows from its size (3 at 8, 3 at 5)
        assert _same_graph(topology_at(StaticExponential(8), 5), StaticExponential(5))


@pytest.mark.parametrize(
    ("topology", "n"),
    [
        ("hypercube", 6),
        ("dynamic-bipartite-exponential", 3),
        (FromAdjacency([[0, 1], [1, 0]]), 3),
    ],
)
def test_a_graph_missing_at_the_new_size_falls_back_with_a_warning(
    topology: object, n: int
) -> None:
    with pytest.warns(TopologyFallbackWarning, match=f"for {n} ranks") as caught:
        built = topology_at(topology, n)  # type: ignore[arg-type]
    assert FALLBACK_TOPOLOGY in str(caught[0].message)
    assert _same_graph(built, make_topology(FALLBACK_TOPOLOGY, n))


def test_fallback_lowers_peers_when_the_size_cannot_take_them() -> None:
    with pytest.warns(TopologyFallbackWarning):
        built = topology_at("hypercube", 2, peers_per_itr=4, fallback="ring")
    assert built.world_size == 2 and built.name == "ring"


def test_a_bipartite_graph_falls_back_to_one_that_exists_at_odd_sizes() -> None:
    """AD-PSGD's fallback: still bipartite with one peer per step, so pairs still form."""
    with pytest.warns(TopologyFallbackWarning, match="even-odd-exponential"):
        built = topology_at("dynamic-bipartite-exponential", 3, fallback=EvenOddExponential)
    assert isinstance(built, EvenOddExponential) and built.world_size == 3
    assert built.is_bipartite and built.peers_per_itr == 1
    # an even size has the chosen graph again, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = topology_at("dynamic-bipartite-exponential", 4, fallback=EvenOddExponential)
    assert again.name == "dynamic-bipartite-exponential"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="world_size"):
        topology_at("ring", 0)
    with pytest.raises(ValueError, match="fallback must be one of"):
        topology_at("ring", 4, fallback="moebius")
    with pytest.raises(ValueError, match="or a function of the size"):
        topology_at("ring", 4, fallback=3)  # type: ignore[arg-type]
