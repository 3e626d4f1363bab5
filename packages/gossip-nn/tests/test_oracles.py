"""SGP, OSGP and D-PSGD, run distributed (gloo, CPU), against exact oracles."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm.testing import run_distributed
from gossip_nn import GossipOptions, make_data_parallel
from gossip_topology import mixing_matrix, simulate_push_sum
from nn_oracles import loss, model, osgp_oracle, problem, quadratic, topology

LR = 0.05


def _train(
    rank: int, n: int, algorithm: str, name: str, steps: int, synch_freq: int, lr: float = LR
) -> dict[str, Any]:
    X, y, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    extra = {"synch_freq": synch_freq} if algorithm == "osgp" else {}
    dp = make_data_parallel(algorithm, net, opt, topology=topology(name, n), **extra)
    zs, ws, xs, grads = [], [], [], []
    for _ in range(steps):
        loss(dp, X[rank], y[rank]).backward()
        grads.append(net.weight.grad[0].clone().numpy())
        opt.step()
        opt.zero_grad()
        z = net.weight.detach()[0].clone().numpy()
        zs.append(z)
        ws.append(dp.ps_weight)
        xs.append(z * dp.ps_weight)
    in_flight = dp.in_flight
    dp.finish_gossip()  # bring every message home (OSGP has some in flight)
    final_w = dp.ps_weight
    return {
        "z": np.array(zs),
        "w": np.array(ws),
        "x": np.array(xs),
        "g": np.array(grads),
        "in_flight": in_flight,
        "x_home": net.weight.detach()[0].clone().numpy() * final_w,
        "w_home": final_w,
    }


@pytest.mark.parametrize("name", ["star", "npeer-dynamic-directed-exponential"])
def test_sgp_matches_the_simulator_with_gradient_steps(name: str) -> None:
    n, steps = 4, 8
    X, y, theta0 = problem(n)
    res = run_distributed(_train, n, ("sgp", name, steps, 0))
    sim = simulate_push_sum(
        topology(name, n), np.tile(theta0, (n, 1)), steps, objective=quadratic(X, y), lr=LR
    )
    z = np.stack([r["z"] for r in res], axis=1)
    w = np.stack([r["w"] for r in res], axis=1)
    np.testing.assert_allclose(z, sim.debiased[1:], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(w, sim.weights[1:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [0, 1])
@pytest.mark.parametrize("name", ["star", "ring"])
def test_osgp_matches_the_overlapped_push_sum_oracle(name: str, tau: int) -> None:
    n, steps = 4, 8
    X, y, theta0 = problem(n)
    res = run_distributed(_train, n, ("osgp", name, steps, tau))
    zs, ws = osgp_oracle(topology(name, n), quadratic(X, y), theta0, steps, LR, tau)
    np.testing.assert_allclose(np.stack([r["z"] for r in res], axis=1), zs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.stack([r["w"] for r in res], axis=1), ws, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("algorithm", "name"),
    [
        ("sgp", "star"),
        ("sgp", "dynamic-directed-exponential"),
        ("osgp", "star"),
        ("osgp", "torus-2d"),
        ("dpsgd", "dynamic-bipartite-exponential"),
        ("dpsgd", "ring"),
    ],
)
def test_network_average_follows_the_mean_gradient(algorithm: str, name: str) -> None:
    n, steps = 4, 6
    _, _, theta0 = problem(n)
    res = run_distributed(_train, n, (algorithm, name, steps, 0))
    held = np.stack([r["x"] for r in res], axis=1).sum(axis=1)
    weight = np.stack([r["w"] for r in res], axis=1).sum(axis=1)
    grads = np.stack([r["g"] for r in res], axis=1)
    xbar = theta0.copy()
    for t in range(steps):
        xbar = xbar - LR * grads[t].mean(axis=0)
        if algorithm == "osgp":
            continue  # part of the mass is in flight between steps; checked at the end
        np.testing.assert_allclose(weight[t], n, rtol=1e-12)
        np.testing.assert_allclose(
            held[t] / n, xbar, rtol=1e-10, atol=1e-10, err_msg=f"{algorithm} {name} step {t}"
        )
    # once every message is home, the total numerator and weight are the network's
    assert all(r["in_flight"] == (1 if algorithm == "osgp" else 0) for r in res)
    np.testing.assert_allclose(sum(r["w_home"] for r in res), n, rtol=1e-12)
    np.testing.assert_allclose(sum(r["x_home"] for r in res) / n, xbar, rtol=1e-10, atol=1e-10)


def test_dpsgd_matches_lian_et_al_update() -> None:
    n, steps, name = 4, 8, "dynamic-bipartite-exponential"
    X, y, theta0 = problem(n)
    res = run_distributed(_train, n, ("dpsgd", name, steps, 0))
    grad, topo = quadratic(X, y), topology(name, n)
    x = np.tile(theta0, (n, 1))
    for t in range(steps):
        x = mixing_matrix(topo, t) @ x - LR * grad.gradient(x)
        got = np.stack([r["z"][t] for r in res])
        np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-10)


def _complete(rank: int, n: int, algorithm: str, steps: int) -> np.ndarray:
    X, y, theta0 = problem(n)
    net = model(theta0).float()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    dp = make_data_parallel(algorithm, net, opt, topology="complete")
    out = []
    for _ in range(steps):
        loss(dp, X[rank].astype(np.float32), y[rank].astype(np.float32)).backward()
        opt.step()
        opt.zero_grad()
        out.append(net.weight.detach()[0].clone().numpy())
    return np.array(out)


@pytest.mark.slow
def test_sgp_on_the_complete_graph_equals_all_reduce() -> None:
    n, steps = 4, 20
    ar = run_distributed(_complete, n, ("ar", steps))
    sgp = run_distributed(_complete, n, ("sgp", steps))
    for r in range(n):
        np.testing.assert_allclose(sgp[r], ar[r], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ar[r], ar[0], rtol=0, atol=0)


def _zero_lr(rank: int, n: int) -> list[float]:
    X, y, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    dp = make_data_parallel("sgp", net, opt, topology="ring")
    import torch.distributed as dist

    with torch.no_grad():
        net.weight.add_(float(rank))  # start the ranks apart
    distances = []
    for _ in range(12):
        loss(dp, X[rank], y[rank]).backward()
        opt.step()
        opt.zero_grad()
        with dp.average_for_eval():
            mean = net.weight.detach().clone()
        dev = torch.tensor([float(((net.weight.detach() - mean) ** 2).sum())])
        dist.all_reduce(dev)
        distances.append(float(dev.sqrt()))
    return distances


def test_consensus_distance_decreases_with_zero_learning_rate() -> None:
    res = run_distributed(_zero_lr, 4)
    d = res[0]
    assert all(b < a for a, b in itertools.pairwise(d)), d
    assert d[-1] < 0.1 * d[0]


def _synch_freq(rank: int, n: int, synch_freq: int, steps: int) -> list[int]:
    X, y, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    dp = make_data_parallel("osgp", net, opt, topology="ring", synch_freq=synch_freq)
    seen = []
    for _ in range(steps):
        loss(dp, X[rank], y[rank]).backward()
        opt.step()
        opt.zero_grad()
        seen.append(dp.in_flight)
    dp.close()
    return [*seen, dp.in_flight]


def test_synch_freq_reaches_the_wrapper_and_bounds_staleness() -> None:
    # with synch_freq = tau, a step's messages are folded in tau + 1 steps later, so at
    # most tau + 1 steps are in flight; close() brings them all home
    for tau in (0, 2):
        res = run_distributed(_synch_freq, 2, (tau, 5))
        expected = [min(t + 1, tau + 1) for t in range(5)] + [0]
        assert all(r == expected for r in res), (tau, res)


def test_synch_freq_is_checked() -> None:
    with pytest.raises(ValueError, match="synch_freq must be >= 0"):
        GossipOptions(synch_freq=-1)
    with pytest.raises(TypeError, match="synch_freq must be an int"):
        GossipOptions(**{"synch_freq": 1.5})
