"""Mixing matrices against hand-computed values."""

from __future__ import annotations

import numpy as np

from gossip_topology import (
    CustomMixing,
    MetropolisHastings,
    Ring,
    Star,
    UniformMixing,
    is_column_stochastic,
    is_doubly_stochastic,
    make_topology,
    mixing_matrix,
)


def test_uniform_mixing_on_two_peers() -> None:
    topo = make_topology("npeer-dynamic-directed-exponential", 4, peers_per_itr=2)
    # book of r with k=2, n=4: L(3) = 1 -> r+1, r+2, r+3, (r+6 = r+2 dup) -> [r+1, r+2, r+3]
    assert topo.out_peers(0, 0) == [1, 2]
    W = mixing_matrix(topo, 0)
    third = 1 / 3
    expected = np.array(
        [
            [third, 0, third, third],
            [third, third, 0, third],
            [third, third, third, 0],
            [0, third, third, third],
        ]
    )
    np.testing.assert_allclose(W, expected, rtol=0, atol=1e-15)
    assert is_doubly_stochastic(W)


def test_star_uniform_is_only_column_stochastic() -> None:
    W = mixing_matrix(Star(4), 0)
    assert W[0, 0] == 0.25 and W[1, 0] == 0.25 and W[0, 1] == 0.5 and W[1, 1] == 0.5
    assert is_column_stochastic(W) and not is_doubly_stochastic(W)


def test_metropolis_hastings_on_star() -> None:
    W = mixing_matrix(Star(4), 0, MetropolisHastings())
    # degrees: hub 3, leaves 1 -> edge weight 1 / (1 + 3) = 1/4
    expected = np.array(
        [[0.25, 0.25, 0.25, 0.25], [0.25, 0.75, 0, 0], [0.25, 0, 0.75, 0], [0.25, 0, 0, 0.75]]
    )
    np.testing.assert_allclose(W, expected, rtol=0, atol=1e-15)


def test_custom_mixing_is_used_periodically() -> None:
    a = np.array([[0.25, 0.0, 0.5], [0.75, 0.5, 0.0], [0.0, 0.5, 0.5]])
    b = np.array([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    mixing = CustomMixing([a, b])
    assert mixing.period == 2
    np.testing.assert_array_equal(mixing_matrix(Ring(3), 0, mixing), a)
    np.testing.assert_array_equal(mixing_matrix(Ring(3), 3, mixing), b)
    self_w, peers = mixing.weights(Ring(3), 0, 0)
    assert self_w == 0.25 and peers == [0.75]


def test_stochasticity_checks() -> None:
    assert is_column_stochastic(np.eye(3))
    assert not is_column_stochastic(np.array([[0.5, 0.5], [0.4, 0.5]]))
    assert not is_column_stochastic(np.array([[1.5, 0.0], [-0.5, 1.0]]))
    assert is_column_stochastic(np.array([[1.0, 0.5], [0.0, 0.5]]))
    assert not is_doubly_stochastic(np.array([[1.0, 0.5], [0.0, 0.5]]))
    assert UniformMixing().weights(Ring(1), 0, 0) == (1.0, [])
