"""The outer step of local SGD, DiLoCo and SlowMo, against loops written out by hand.

The simulator is the oracle the torch wrappers will be held to, so it is held here to
independent, plainly written loops: all-reduce SGD, local SGD, SlowMo's formula, a
Nesterov step worked by hand, and the streaming schedule spelled out fragment by
fragment. Gossip averaging must conserve push-sum mass exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from gossip_topology import (
    OnePeerExponential,
    OuterOptimizer,
    Quadratic,
    Ring,
    Star,
    fragment_offsets,
    outer_step,
    simulate_local_sgd,
    split_fragments,
)

LR = 0.1


def _problem(n: int = 4, d: int = 6, seed: int = 0) -> Quadratic:
    rng = np.random.default_rng(seed)
    return Quadratic(rng.uniform(0.5, 2.0, (n, d)), rng.normal(size=(n, d)))


def _local_sgd_by_hand(q: Quadratic, steps: int, every: int) -> np.ndarray:
    n, d = q.shape
    x = np.zeros((n, d))
    for t in range(1, steps + 1):
        x = x - LR * q.curvature * (x - q.target)
        if t % every == 0:
            x[:] = x.mean(axis=0)
    return x


def test_local_sgd_averaging_every_step_is_all_reduce_sgd() -> None:
    q = _problem()
    x = np.zeros(q.shape[1])
    for _ in range(12):  # all-reduce SGD: one model, the mean gradient
        x = x - LR * (q.curvature * (x - q.target)).mean(axis=0)
    trace = simulate_local_sgd(q, np.zeros(6), 12, inner_lr=LR, every=1)
    np.testing.assert_allclose(trace.models[-1], np.tile(x, (4, 1)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("every", [3, 5])
def test_diloco_with_outer_lr_1_and_no_momentum_is_local_sgd(every: int) -> None:
    q = _problem()
    expected = _local_sgd_by_hand(q, 15, every)
    for optimizer in (OuterOptimizer.diloco(lr=1.0, momentum=0.0), OuterOptimizer.local_sgd()):
        trace = simulate_local_sgd(
            q, np.zeros(6), 15, inner_lr=LR, every=every, optimizer=optimizer
        )
        np.testing.assert_allclose(trace.models[-1], expected, rtol=0, atol=1e-12)
    # with momentum the outer step is no longer the average
    diloco = simulate_local_sgd(
        q, np.zeros(6), 15, inner_lr=LR, every=every, optimizer=OuterOptimizer.diloco()
    )
    assert np.abs(diloco.models[-1] - expected).max() > 1e-3


def test_nesterov_outer_steps_worked_by_hand() -> None:
    opt = OuterOptimizer.diloco(lr=0.7, momentum=0.9)
    x0, u = outer_step(opt, [1.0], [0.0], [0.5])
    # g = 0.5; u = 0.5; d = g + 0.9 u = 0.95; x0 = 1 - 0.7 * 0.95
    assert (x0[0], u[0]) == pytest.approx((1 - 0.7 * 0.95, 0.5), abs=1e-15)
    x0, u = outer_step(opt, x0, u, [0.2])
    g = (1 - 0.7 * 0.95) - 0.2
    u_expected = 0.9 * 0.5 + g
    assert u[0] == pytest.approx(u_expected, abs=1e-15)
    assert x0[0] == pytest.approx((1 - 0.7 * 0.95) - 0.7 * (g + 0.9 * u_expected), abs=1e-15)


def test_the_slowmo_setting_is_slowmos_formula() -> None:
    rng = np.random.default_rng(1)
    beta, alpha, gamma = 0.6, 1.3, 0.05
    outer, momentum = rng.normal(size=5), np.zeros(5)
    x0, u = outer.copy(), momentum.copy()
    for _ in range(4):
        average = outer + rng.normal(scale=0.1, size=5)
        outer, momentum = outer_step(
            OuterOptimizer.slowmo(beta=beta, lr=alpha), outer, momentum, average, gamma
        )
        u = beta * u + (x0 - average) / gamma  # Wang et al. 2020, Algorithm 1
        x0 = x0 - alpha * gamma * u
        np.testing.assert_allclose(outer, x0, rtol=0, atol=1e-12)
        np.testing.assert_allclose(momentum, u, rtol=0, atol=1e-9)


def _inner(q: Quadratic, x: np.ndarray) -> np.ndarray:
    return x - LR * q.gradient(x)


@pytest.mark.parametrize("syncs", [1, 2, 3])
def test_push_sum_outer_averaging_conserves_mass(syncs: int) -> None:
    q, every = _problem(n=5), 4
    graph = Star(5)  # its mixing is not doubly stochastic: the weights matter

    def run(k: int):
        return simulate_local_sgd(
            q, np.zeros(6), k * every, inner_lr=LR, every=every, topology=graph
        )

    after, before = run(syncs), run(syncs - 1)
    w_after, w_before = after.weights[:, 0], before.weights[:, 0]
    pre = _inner(q, after.models[syncs * every - 1])  # the models the average started from
    mass_before = (w_before[:, None] * pre).sum(axis=0)
    mass_after = (w_after[:, None] * after.models[-1]).sum(axis=0)
    np.testing.assert_allclose(mass_after, mass_before, rtol=0, atol=1e-12)
    assert w_after.sum() == pytest.approx(5.0, abs=1e-12)
    assert np.abs(w_after - 1.0).max() > 0.1
    assert np.abs(after.models[-1] - after.models[-1].mean(axis=0)).max() > 1e-4  # not exact


def test_push_pull_outer_averaging_keeps_the_sum() -> None:
    q, every = _problem(n=5), 3
    trace = simulate_local_sgd(
        q, np.zeros(6), every, inner_lr=LR, every=every, topology=Ring(5), gossip="push_pull"
    )
    pre = _inner(q, trace.models[every - 1])
    np.testing.assert_allclose(trace.models[-1].sum(axis=0), pre.sum(axis=0), atol=1e-12)
    np.testing.assert_array_equal(trace.weights, np.ones((5, 1)))


def test_gossip_that_averages_exactly_in_one_round_is_exact_averaging() -> None:
    q = _problem(n=2)  # one-peer exponential on 2 nodes: each keeps half, sends half
    exact = simulate_local_sgd(q, np.zeros(6), 12, inner_lr=LR, every=4)
    gossip = simulate_local_sgd(
        q, np.zeros(6), 12, inner_lr=LR, every=4, topology=OnePeerExponential(2)
    )
    np.testing.assert_allclose(gossip.models, exact.models, rtol=0, atol=1e-12)


def test_streaming_fragments_overlapped_and_merged_by_hand() -> None:
    """Two fragments of three coordinates, every 4 steps, fragment 0 averaged after steps
    2, 6, 10 and fragment 1 after 4, 8; each outer step lands one step later and keeps
    half of the node's own model."""
    q, opt, every, merge = _problem(n=3), OuterOptimizer.diloco(), 4, 0.5
    steps = 11
    parts = [np.arange(0, 3), np.arange(3, 6)]
    x = np.zeros((3, 6))
    outer, momentum = np.zeros(6), np.zeros(6)
    in_flight: dict[int, tuple[int, np.ndarray]] = {}  # landing step -> (fragment, average)
    history = [x.copy()]
    for t in range(1, steps + 1):
        x = x - LR * q.curvature * (x - q.target)
        if t in (2, 6, 10):
            in_flight[t + 1] = (0, x[:, parts[0]].mean(axis=0))
        if t in (4, 8):
            in_flight[t + 1] = (1, x[:, parts[1]].mean(axis=0))
        if t in in_flight:
            p, average = in_flight.pop(t)
            idx = parts[p]
            g = outer[idx] - average
            momentum[idx] = 0.9 * momentum[idx] + g
            outer[idx] = outer[idx] - 0.7 * (g + 0.9 * momentum[idx])
            x[:, idx] = merge * x[:, idx] + (1 - merge) * outer[idx]
        history.append(x.copy())
    trace = simulate_local_sgd(
        q, np.zeros(6), steps, inner_lr=LR, every=every, optimizer=opt, fragments=2,
        overlap=1, merge=merge,
    )  # fmt: skip
    assert fragment_offsets(every, 2) == [2, 4]
    assert trace.events == [(3, 0), (5, 1), (7, 0), (9, 1), (11, 0)]
    np.testing.assert_allclose(trace.models, np.array(history), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(trace.sent, [0, 3, 0, 3, 0, 3, 0, 3, 0, 3, 0])


def test_a_fragment_moves_only_its_own_coordinates() -> None:
    q = _problem()
    never = simulate_local_sgd(q, np.zeros(6), 2, inner_lr=LR, every=50)  # no average yet
    streaming = simulate_local_sgd(
        q, np.zeros(6), 2, inner_lr=LR, every=4, fragments=[[0, 2, 4], [1, 3, 5]],
        optimizer=OuterOptimizer.diloco(),
    )  # fmt: skip
    assert streaming.events == [(2, 0)]
    np.testing.assert_array_equal(
        streaming.models[-1][:, [1, 3, 5]], never.models[-1][:, [1, 3, 5]]
    )
    assert np.abs(streaming.models[-1][:, [0, 2, 4]] - never.models[-1][:, [0, 2, 4]]).max() > 1e-4


def test_split_fragments_partitions_contiguously() -> None:
    parts = split_fragments(7, 3)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6]]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"overlap": 4}, ValueError, r"overlap must be below every \(4\); got 4"),
        ({"fragments": 5}, ValueError, r"fragments must be at most every \(4\); got 5"),
        ({"merge": 1.0}, ValueError, r"merge must be in \[0, 1\); got 1.0"),
        ({"inner_lr": 0.0}, ValueError, "inner_lr must be positive; got 0.0"),
        ({"fragments": [[0, 1, 2], [2, 3, 4, 5]]}, ValueError, r"partition range\(6\)"),
        ({"fragments": True}, TypeError, "fragments must be an int or a sequence"),
        ({"gossip": "pull"}, ValueError, "gossip must be 'push_sum' or 'push_pull'"),
        ({"topology": Ring(3)}, ValueError, "topology has 3 nodes but the objective 4"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, error: type, match: str) -> None:
    args = {"inner_lr": LR, "every": 4} | kwargs
    with pytest.raises(error, match=match):
        simulate_local_sgd(_problem(), np.zeros(6), 4, **args)


def test_bad_outer_optimizers_are_refused() -> None:
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\); got 1.0"):
        OuterOptimizer(momentum=1.0)
    with pytest.raises(ValueError, match="lr must be positive; got 0"):
        OuterOptimizer(lr=0)
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        OuterOptimizer(nesterov=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x0 must have shape \(6,\)"):
        simulate_local_sgd(_problem(), np.zeros(5), 4, inner_lr=LR, every=4)
    with pytest.raises(ValueError, match="outer, momentum and average must have one shape"):
        outer_step(OuterOptimizer(), [1.0], [0.0, 0.0], [1.0])
