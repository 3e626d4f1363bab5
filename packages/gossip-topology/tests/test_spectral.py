"""Spectral analysis, connectivity and exact averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gossip_topology import (
    Complete,
    FromAdjacency,
    NPeerDynamicDirectedExponential,
    OnePeerExponential,
    Ring,
    consensus_error,
    is_exact_averaging,
    is_strongly_connected,
    mixing_matrix,
    period_product,
    rounds_to_consensus,
    second_singular_value,
    spectral_gap,
)


@pytest.mark.parametrize("n", [2**e for e in range(1, 11)])
def test_one_peer_exponential_averages_exactly_in_log2_n_steps(n: int) -> None:
    tau = int(math.log2(n))
    topo = OnePeerExponential(n, require_exact=True)
    assert is_exact_averaging(topo, tau)
    if n > 2:
        assert not is_exact_averaging(topo, tau - 1)


@pytest.mark.parametrize("n", [4, 16, 64])
def test_2019_npeer_graph_with_one_peer_also_averages_exactly(n: int) -> None:
    topo = NPeerDynamicDirectedExponential(n, 1)
    assert is_exact_averaging(topo, int(math.log2(n)))
    assert second_singular_value(period_product(topo)) < 1e-12


def test_one_peer_exponential_is_not_exact_for_other_sizes() -> None:
    topo = OnePeerExponential(6)
    assert not any(is_exact_averaging(topo, s) for s in range(1, 10))


def test_ring_spectral_gap_closed_form() -> None:
    # Undirected ring, uniform weights 1/3: eigenvalues (1 + 2 cos(2 pi j / n)) / 3.
    n = 10
    W = mixing_matrix(Ring(n, 2), 0)
    eig = sorted(abs((1 + 2 * np.cos(2 * np.pi * j / n)) / 3) for j in range(n))
    assert second_singular_value(W) == pytest.approx(eig[-2], abs=1e-12)
    assert spectral_gap(W) == pytest.approx(1 - eig[-2], abs=1e-12)
    assert second_singular_value(np.eye(1)) == 0.0


def test_complete_graph_is_exact_in_one_step() -> None:
    assert is_exact_averaging(Complete(7), 1)
    assert rounds_to_consensus(Complete(7), 1e-9) == 1
    assert rounds_to_consensus(Complete(1), 1e-9) == 0


def test_rounds_to_consensus_matches_brute_force() -> None:
    topo = Ring(8)
    eps = 1e-3
    t = rounds_to_consensus(topo, eps)
    M = np.eye(8)
    for _ in range(t - 1):
        M = mixing_matrix(topo, 0) @ M
    assert consensus_error(M) > eps
    assert consensus_error(mixing_matrix(topo, 0) @ M) <= eps


def test_strong_connectivity() -> None:
    assert is_strongly_connected(Ring(5))
    one_way = FromAdjacency([[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert not is_strongly_connected(one_way)
    # connected only through the union of two steps
    a = np.zeros((3, 3))
    a[0, 1] = a[1, 2] = 1
    b = np.zeros((3, 3))
    b[2, 0] = 1
    assert is_strongly_connected(FromAdjacency([a, b]))
    assert not is_strongly_connected(FromAdjacency(a))


def test_consensus_error_of_the_averaging_matrix_is_zero() -> None:
    assert consensus_error(np.full((5, 5), 0.2)) == pytest.approx(0.0, abs=1e-15)
    assert consensus_error(np.eye(4)) == pytest.approx(1.5)
