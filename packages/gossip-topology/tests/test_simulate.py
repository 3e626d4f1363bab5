"""The simulator against dense-matrix references and closed-form invariants."""

from __future__ import annotations

import numpy as np
import pytest

from gossip_topology import (
    TOPOLOGY_NAMES,
    CustomMixing,
    MetropolisHastings,
    Quadratic,
    Star,
    Topology,
    Torus2D,
    make_topology,
    mixing_matrix,
    simulate_push_pull,
    simulate_push_sum,
)

RNG = np.random.default_rng(1234)


def _dense_push_sum(topo: Topology, x0: np.ndarray, steps: int, start: int = 0):  # type: ignore[no-untyped-def]
    x, w = x0.copy(), np.ones(topo.world_size)
    xs, ws = [x], [w]
    for t in range(start, start + steps):
        W = mixing_matrix(topo, t)
        x, w = W @ x, W @ w
        xs.append(x)
        ws.append(w)
    return np.array(xs), np.array(ws)


def _valid(name: str, n: int) -> bool:
    try:
        make_topology(name, n)
    except ValueError:
        return False
    return True


CASES = [(name, n) for name in TOPOLOGY_NAMES for n in (3, 8, 12) if _valid(name, n)]


@pytest.mark.parametrize(("name", "n"), CASES)
def test_push_sum_matches_dense_matrix_products_step_for_step(name: str, n: int) -> None:
    topo = make_topology(name, n)
    x0 = RNG.normal(size=(n, 5))
    trace = simulate_push_sum(topo, x0, 9, start_step=2)
    xs, ws = _dense_push_sum(topo, x0, 9, start=2)
    np.testing.assert_allclose(trace.numerators, xs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(trace.weights, ws, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(trace.debiased, xs / ws[..., None], rtol=1e-12, atol=1e-12)
    last = simulate_push_sum(topo, x0, 9, start_step=2, record="last")
    np.testing.assert_allclose(last.numerators, xs[-1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last.weights, ws[-1], rtol=1e-12, atol=1e-12)


def test_blocked_columns_give_the_same_answer_as_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    import gossip_topology.simulate as sim

    topo = make_topology("dynamic-directed-exponential", 16)
    x0 = RNG.normal(size=(16, 37))
    whole = simulate_push_sum(topo, x0, 7)
    monkeypatch.setattr(sim, "_BLOCK_BYTES", 16 * 8 * 5)  # 5 columns per block
    blocked = simulate_push_sum(topo, x0, 7)
    np.testing.assert_array_equal(whole.numerators, blocked.numerators)


@pytest.mark.parametrize(
    "topo", [Star(6), Torus2D(9), make_topology("dynamic-bipartite-linear", 6)]
)
def test_debiased_values_converge_to_the_true_mean(topo: Topology) -> None:
    x0 = RNG.normal(size=(topo.world_size, 4))
    trace = simulate_push_sum(topo, x0, 400, record="last")
    np.testing.assert_allclose(
        trace.debiased, np.broadcast_to(x0.mean(axis=0), x0.shape), rtol=0, atol=1e-9
    )


def test_star_weights_drift_but_debiasing_removes_the_bias() -> None:
    x0 = RNG.normal(size=(5, 2))
    trace = simulate_push_sum(Star(5), x0, 60, record="last")
    assert np.ptp(trace.weights) > 0.5  # weights are far from 1 on an irregular graph
    np.testing.assert_allclose(trace.debiased, np.broadcast_to(x0.mean(0), (5, 2)), atol=1e-9)


def test_one_dimensional_input_keeps_its_shape() -> None:
    trace = simulate_push_sum(make_topology("ring", 4, 2), np.arange(4.0), 3)
    assert trace.numerators.shape == (4, 4) and trace.weights.shape == (4, 4)


def test_custom_weights0_are_mixed_too() -> None:
    topo = make_topology("ring", 4)
    w0 = np.array([1.0, 2.0, 3.0, 4.0])
    trace = simulate_push_sum(topo, np.ones((4, 1)), 2, weights0=w0)
    W = mixing_matrix(topo, 0)
    np.testing.assert_allclose(trace.weights[-1], W @ W @ w0, rtol=1e-15)


def test_sgp_network_average_follows_the_mean_gradient_exactly() -> None:
    n, d, lr = 6, 3, 0.05
    topo = make_topology("npeer-dynamic-directed-exponential", n)
    obj = Quadratic(RNG.uniform(0.5, 2.0, size=(n, d)), RNG.normal(size=(n, d)))
    x0 = RNG.normal(size=(n, d))
    trace = simulate_push_sum(topo, x0, 25, objective=obj, lr=lr)
    for t in range(25):
        grads = obj.gradient(trace.debiased[t])
        np.testing.assert_allclose(
            trace.numerators[t + 1].mean(0),
            trace.numerators[t].mean(0) - lr * grads.mean(0),
            rtol=1e-12,
            atol=1e-12,
        )


def test_sgp_on_a_full_quadratic_reaches_the_minimiser() -> None:
    n, d = 8, 3
    B = RNG.normal(size=(n, d, d))
    A = np.einsum("nij,nkj->nik", B, B) + np.eye(d)
    obj = Quadratic(A, RNG.normal(size=(n, d)))
    # With a constant step, SGP converges to the consensus minimiser only as lr -> 0;
    # a decaying schedule is out of scope here, so use a small lr and many steps.
    trace = simulate_push_sum(
        Torus2D(n), np.zeros((n, d)), 4000, objective=obj, lr=0.002, record="last"
    )
    np.testing.assert_allclose(trace.debiased, np.broadcast_to(obj.minimizer(), (n, d)), atol=0.05)


def test_dpsgd_matches_the_explicit_update() -> None:
    n, d, lr = 6, 2, 0.1
    topo = Torus2D(n)
    obj = Quadratic(RNG.uniform(0.5, 2.0, size=(n, d)), RNG.normal(size=(n, d)))
    x0 = RNG.normal(size=(n, d))
    mixing = MetropolisHastings()
    trace = simulate_push_pull(topo, x0, 10, mixing, objective=obj, lr=lr)
    x = x0
    for t in range(10):
        x = mixing_matrix(topo, t, mixing) @ x - lr * obj.gradient(x)
        np.testing.assert_allclose(trace.numerators[t + 1], x, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(trace.weights, 1.0)


def test_push_pull_without_gradients_equals_push_sum_on_regular_graphs() -> None:
    topo = make_topology("dynamic-bipartite-exponential", 8)
    x0 = RNG.normal(size=(8, 3))
    pp = simulate_push_pull(topo, x0, 6)
    ps = simulate_push_sum(topo, x0, 6)
    np.testing.assert_allclose(pp.numerators, ps.numerators, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ps.weights, 1.0, rtol=0, atol=1e-13)


def test_custom_mixing_in_the_simulator() -> None:
    M = np.array([[0.9, 0.0, 0.2], [0.1, 0.6, 0.0], [0.0, 0.4, 0.8]])
    topo = make_topology("ring", 3)
    x0 = RNG.normal(size=(3, 2))
    trace = simulate_push_sum(topo, x0, 3, CustomMixing(M))
    np.testing.assert_allclose(trace.numerators[-1], M @ M @ M @ x0, rtol=1e-13)


def test_quadratic_minimiser_closed_form() -> None:
    obj = Quadratic([[1.0], [3.0]], [[0.0], [4.0]])
    np.testing.assert_allclose(obj.minimizer(), [3.0])
    np.testing.assert_allclose(obj.gradient(np.array([[1.0], [1.0]])), [[1.0], [-9.0]])
