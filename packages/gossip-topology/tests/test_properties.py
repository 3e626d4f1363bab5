"""Hypothesis properties over world sizes 1..64 and peers_per_itr 1..4, for every graph."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gossip_topology import (
    TOPOLOGY_NAMES,
    MetropolisHastings,
    Topology,
    is_column_stochastic,
    is_doubly_stochastic,
    is_strongly_connected,
    make_topology,
    mixing_matrix,
    simulate_push_sum,
)

names = st.sampled_from(TOPOLOGY_NAMES)
sizes = st.integers(min_value=1, max_value=64)
ks = st.integers(min_value=1, max_value=4)


def _build(name: str, n: int, k: int) -> Topology:
    try:
        return make_topology(name, n, k)
    except ValueError:
        assume(False)
        raise  # unreachable: assume(False) aborts the example


@settings(max_examples=150, deadline=None)
@given(name=names, n=sizes, k=ks, step=st.integers(0, 1000))
def test_in_peers_are_the_inverse_of_out_peers(name: str, n: int, k: int, step: int) -> None:
    topo = _build(name, n, k)
    for r in range(n):
        outs = topo.out_peers(r, step)
        assert r not in outs and len(set(outs)) == len(outs)
        assert all(0 <= p < n for p in outs)
        assert topo.in_peers(r, step) == sorted(q for q in range(n) if r in topo.out_peers(q, step))


@settings(max_examples=150, deadline=None)
@given(name=names, n=sizes, k=ks, step=st.integers(0, 1000))
def test_schedule_repeats_after_its_period(name: str, n: int, k: int, step: int) -> None:
    topo = _build(name, n, k)
    for r in range(0, n, max(1, n // 7)):
        assert topo.out_peers(r, step) == topo.out_peers(r, step + topo.period)


@settings(max_examples=150, deadline=None)
@given(name=names, n=sizes, k=ks, step=st.integers(0, 1000))
def test_uniform_mixing_is_column_stochastic_and_doubly_when_regular(
    name: str, n: int, k: int, step: int
) -> None:
    topo = _build(name, n, k)
    W = mixing_matrix(topo, step)
    assert is_column_stochastic(W)
    if topo.is_regular:
        assert is_doubly_stochastic(W)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["ring", "torus-2d", "complete", "hypercube", "star"]), n=sizes)
def test_metropolis_hastings_is_symmetric_and_doubly_stochastic(name: str, n: int) -> None:
    topo = _build(name, n, 2 if name == "ring" and n > 2 else 1)
    W = mixing_matrix(topo, 0, MetropolisHastings())
    assert is_doubly_stochastic(W)
    np.testing.assert_allclose(W, W.T, rtol=0, atol=1e-15)


@settings(max_examples=100, deadline=None)
@given(name=names, n=sizes, k=ks, steps=st.integers(0, 12), seed=st.integers(0, 2**32 - 1))
def test_simulator_conserves_mass(name: str, n: int, k: int, steps: int, seed: int) -> None:
    topo = _build(name, n, k)
    x0 = np.random.default_rng(seed).normal(size=(n, 3))
    trace = simulate_push_sum(topo, x0, steps)
    np.testing.assert_allclose(trace.weights.sum(axis=1), n, rtol=1e-12)
    np.testing.assert_allclose(
        trace.numerators.sum(axis=1),
        np.broadcast_to(x0.sum(0), (steps + 1, 3)),
        rtol=1e-10,
        atol=1e-10,
    )


@settings(max_examples=150, deadline=None)
@given(name=names, n=sizes, k=ks)
def test_every_built_in_graph_is_strongly_connected_over_a_period(
    name: str, n: int, k: int
) -> None:
    # Each schedule cycles through a book holding r + 1 (or r +/- 1, or a hub), so theory
    # says the union graph over one period is strongly connected for every n.
    assert is_strongly_connected(_build(name, n, k))
