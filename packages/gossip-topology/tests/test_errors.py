"""Bad input raises early, with an error naming the argument and the rule."""

from __future__ import annotations

import numpy as np
import pytest

import gossip_topology
from gossip_topology import (
    CustomMixing,
    DynamicBipartiteExponential,
    DynamicBipartiteLinear,
    DynamicDirectedExponential,
    FromAdjacency,
    Hypercube,
    MetropolisHastings,
    OnePeerExponential,
    Quadratic,
    Ring,
    Torus2D,
    make_topology,
    mixing_matrix,
    rounds_to_consensus,
    simulate_push_pull,
    simulate_push_sum,
)
from gossip_topology._checks import check_int, check_unit_fraction


@pytest.mark.parametrize("n", [0, -3])
def test_world_size_below_one(n: int) -> None:
    with pytest.raises(ValueError, match=r"world_size must be >= 1; got"):
        DynamicDirectedExponential(n)
    with pytest.raises(ValueError, match="world_size"):
        make_topology("complete", n)


def test_world_size_wrong_type() -> None:
    with pytest.raises(TypeError, match="world_size must be an int"):
        Ring(4.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="world_size must be an int"):
        Ring(True)


def test_rank_and_step_out_of_range() -> None:
    topo = Ring(4)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\].*got 4"):
        topo.out_peers(4, 0)
    with pytest.raises(ValueError, match=r"rank must be in"):
        topo.in_peers(-1, 0)
    with pytest.raises(ValueError, match=r"step must be >= 0; got -1"):
        topo.out_peers(0, -1)
    with pytest.raises(ValueError, match="rank"):
        topo.is_passive(9)


def test_peers_per_itr_larger_than_the_book() -> None:
    with pytest.raises(
        ValueError,
        match=(
            r"peers_per_itr must be between 1 and 5 for "
            r"DynamicDirectedExponential\(world_size=8\); got 7"
        ),
    ):
        DynamicDirectedExponential(8, 7)
    with pytest.raises(ValueError, match="peers_per_itr must be >= 1"):
        Ring(4, 0)
    with pytest.raises(ValueError, match="peers_per_itr must be 1 or 3 for hypercube"):
        make_topology("hypercube", 8, peers_per_itr=2)


@pytest.mark.parametrize("cls", [DynamicBipartiteExponential, DynamicBipartiteLinear])
def test_bipartite_with_odd_world_size(cls: type) -> None:
    with pytest.raises(ValueError, match="world_size must be even"):
        cls(5)


def test_power_of_two_requirements() -> None:
    with pytest.raises(ValueError, match="power of two for Hypercube; got 6"):
        Hypercube(6)
    with pytest.raises(ValueError, match="power of two for exact averaging"):
        OnePeerExponential(12, require_exact=True)
    assert OnePeerExponential(12).world_size == 12


def test_custom_mixing_must_be_column_stochastic() -> None:
    with pytest.raises(ValueError, match=r"column-stochastic.*column 1 sums to 0\.9"):
        CustomMixing([[0.5, 0.5], [0.5, 0.4]])
    with pytest.raises(ValueError, match="non-negative"):
        CustomMixing([[1.5, 0.5], [-0.5, 0.5]])
    with pytest.raises(ValueError, match="square"):
        CustomMixing([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])


def test_custom_mixing_must_fit_the_graph() -> None:
    full = CustomMixing(np.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="not its out-peers"):
        mixing_matrix(Ring(3), 0, full)
    with pytest.raises(ValueError, match="world_size=4"):
        mixing_matrix(Ring(4), 0, full)


def test_metropolis_hastings_needs_an_undirected_graph() -> None:
    with pytest.raises(ValueError, match="undirected"):
        mixing_matrix(Ring(4), 0, MetropolisHastings())


def test_adjacency_checks() -> None:
    with pytest.raises(ValueError, match="square"):
        FromAdjacency([[0, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="binary"):
        FromAdjacency([[0, 2], [1, 0]])
    with pytest.raises(ValueError, match="zero diagonal"):
        FromAdjacency([[1, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"adjacency\[1\] has size 3"):
        FromAdjacency([np.zeros((2, 2)), np.zeros((3, 3))])


def test_torus_shape_must_match() -> None:
    with pytest.raises(ValueError, match=r"rows \* cols == world_size=6"):
        Torus2D(6, shape=(2, 2))


def test_unknown_names_and_ids() -> None:
    with pytest.raises(ValueError, match="unknown topology 'mesh'"):
        make_topology("mesh", 4)
    with pytest.raises(ValueError, match="unknown graph id 9"):
        make_topology(9, 4)
    with pytest.raises(TypeError, match="name must be a str or an int"):
        make_topology(1.0, 4)  # type: ignore[arg-type]


def test_simulator_and_analysis_arguments() -> None:
    topo = Ring(4)
    with pytest.raises(ValueError, match=r"x0 must have shape \(world_size, d\) = \(4, d\)"):
        simulate_push_sum(topo, np.zeros((3, 2)), 1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        simulate_push_sum(topo, np.zeros((4, 2)), -1)
    with pytest.raises(ValueError, match="weights0"):
        simulate_push_sum(topo, np.zeros((4, 2)), 1, weights0=np.zeros(4))
    with pytest.raises(ValueError, match="lr must be finite"):
        simulate_push_sum(topo, np.zeros((4, 2)), 1, lr=float("nan"))
    with pytest.raises(ValueError, match="objective has shape"):
        simulate_push_sum(
            topo, np.zeros((4, 2)), 1, objective=Quadratic(np.ones((4, 3)), np.ones((4, 3)))
        )
    with pytest.raises(ValueError, match="doubly-stochastic"):
        simulate_push_pull(make_topology("star", 4), np.zeros((4, 1)), 1)
    with pytest.raises(ValueError, match="not strongly connected"):
        rounds_to_consensus(FromAdjacency(np.zeros((3, 3))), 0.1)
    with pytest.raises(ValueError, match=r"eps must be in \(0, 2\)"):
        rounds_to_consensus(topo, 0.0)
    with pytest.raises(ValueError, match="curvature must have shape"):
        Quadratic(np.ones((4, 2)), np.ones((4, 3)))


def test_shared_argument_checks() -> None:
    """The private checks gossip-comm and gossip-nn import from ``gossip_topology._checks``."""
    assert "check_int" not in gossip_topology.__all__
    assert not hasattr(gossip_topology, "check_int")
    value = check_int("steps", np.int64(3), minimum=0)
    assert value == 3 and type(value) is int
    with pytest.raises(TypeError, match="steps must be an int; got bool True"):
        check_int("steps", True)
    with pytest.raises(TypeError, match=r"steps must be an int; got float 1\.0"):
        check_int("steps", 1.0)
    with pytest.raises(ValueError, match="steps must be >= 0; got -1"):
        check_int("steps", -1, minimum=0)
    assert check_unit_fraction("fraction", 1) == 1.0
    with pytest.raises(TypeError, match="fraction must be a real number; got bool"):
        check_unit_fraction("fraction", True)
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
            check_unit_fraction("fraction", bad)
