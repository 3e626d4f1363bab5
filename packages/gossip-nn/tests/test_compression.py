"""Compressed gossip in the wrappers: SGP and D-PSGD against the compressed simulator, and
the network average of SGP, OSGP and D-PSGD against the mean gradient, exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gossip_topology.compress as twin
from gossip_comm.testing import run_distributed
from gossip_nn import make_data_parallel
from gossip_topology import (
    Quadratic,
    simulate_compressed_push_pull,
    simulate_compressed_push_sum,
)
from nn_oracles import problem, topology

LR = 0.05
OUT = 3  # outputs of the linear model: its weight is a 3 x 4 matrix, low-rank compressible
STEPS = 8


def _problem(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, _, _ = problem(n)
    rng = np.random.default_rng(7)
    Y = rng.normal(size=(n, X.shape[1], OUT)) + np.arange(n)[:, None, None]
    return X, Y, rng.normal(size=(OUT, X.shape[2]))


def _objective(X: np.ndarray, Y: np.ndarray) -> Quadratic:
    """f_i(W) = 0.5 mean over samples of sum_o (X_i W^T - Y_i)_o^2, on vec(W) (row-major)."""
    n, m, d = X.shape
    A1 = np.einsum("nmi,nmj->nij", X, X) / m  # (n, d, d)
    A = np.stack([np.kron(np.eye(OUT), a) for a in A1])  # vec(W) row-major: W[o, i]
    c = (np.einsum("nmi,nmo->noi", X, Y) / m).reshape(n, OUT * d)
    return Quadratic(A, np.linalg.solve(A, c[..., None])[..., 0])


def _train(
    rank: int, n: int, algorithm: str, name: str, spec: str, gamma: float | None
) -> dict[str, Any]:
    X, Y, W0 = _problem(n)
    net = nn.Linear(X.shape[2], OUT, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(W0))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    extra: dict[str, Any] = {"synch_freq": 1} if algorithm == "osgp" else {}
    dp = make_data_parallel(
        algorithm,
        net,
        opt,
        topology=topology(name, n),
        compression=spec,
        consensus_step=gamma,
        **extra,
    )
    zs, xs, ws, grads = [], [], [], []
    for _ in range(STEPS):
        pred = dp(torch.from_numpy(X[rank]))
        (0.5 * ((pred - torch.from_numpy(Y[rank])) ** 2).sum(dim=1).mean()).backward()
        grads.append(net.weight.grad.reshape(-1).clone().numpy())
        opt.step()
        opt.zero_grad()
        z = net.weight.detach().reshape(-1).clone().numpy()
        zs.append(z)
        ws.append(dp.ps_weight)
        xs.append(z * dp.ps_weight)
    dp.finish_gossip()
    home = net.weight.detach().reshape(-1).clone().numpy() * dp.ps_weight
    out = {
        "z": np.array(zs),
        "x": np.array(xs),
        "w": np.array(ws),
        "g": np.array(grads),
        "x_home": home,
        "w_home": dp.ps_weight,
        "bytes": dp.bytes_sent,
    }
    dp.close()
    return out


@pytest.mark.parametrize(
    ("name", "spec", "gamma"),
    [
        ("npeer-dynamic-directed-exponential", "int8", None),
        ("star", "topk:0.25", 0.5),  # weights travel on a non-regular graph
        ("ring", "lowrank:1", None),
    ],
)
def test_sgp_with_compression_equals_the_simulator(
    name: str, spec: str, gamma: float | None
) -> None:
    n = 4
    X, Y, W0 = _problem(n)
    res = run_distributed(_train, n, ("sgp", name, spec, gamma))
    sim = simulate_compressed_push_sum(
        topology(name, n),
        np.tile(W0.reshape(-1), (n, 1)),
        STEPS,
        compression=twin.parse_compressor(spec),
        consensus_step=gamma,
        reference=W0.reshape(-1),  # every rank starts from the same model
        layout=[(OUT, X.shape[2])],
        objective=_objective(X, Y),
        lr=LR,
    )
    z = np.stack([r["z"] for r in res], axis=1)
    w = np.stack([r["w"] for r in res], axis=1)
    np.testing.assert_allclose(z, sim.debiased[1:], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(w, sim.weights[1:], rtol=1e-12, atol=1e-12)


def test_dpsgd_with_compression_equals_the_simulator() -> None:
    n, name, spec = 4, "ring", "topk:0.5"
    X, Y, W0 = _problem(n)
    res = run_distributed(_train, n, ("dpsgd", name, spec, None))
    sim = simulate_compressed_push_pull(
        topology(name, n),
        np.tile(W0.reshape(-1), (n, 1)),
        STEPS,
        compression=twin.parse_compressor(spec),
        reference=W0.reshape(-1),
        objective=_objective(X, Y),
        lr=LR,
    )
    z = np.stack([r["z"] for r in res], axis=1)
    np.testing.assert_allclose(z, sim.numerators[1:], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    ("algorithm", "name", "spec"),
    [
        ("sgp", "star", "lowrank:1"),
        ("osgp", "star", "int8"),
        ("osgp", "npeer-dynamic-directed-exponential", "topk:0.25"),
        ("dpsgd", "ring", "bf16"),
    ],
)
def test_network_average_follows_the_mean_gradient_exactly(
    algorithm: str, name: str, spec: str
) -> None:
    """Whatever the compressor, sum_i x_i moves by exactly -lr * sum_i g_i each step."""
    n = 4
    _, _, W0 = _problem(n)
    res = run_distributed(_train, n, (algorithm, name, spec, None))
    held = np.stack([r["x"] for r in res], axis=1).sum(axis=1)
    weight = np.stack([r["w"] for r in res], axis=1).sum(axis=1)
    grads = np.stack([r["g"] for r in res], axis=1)
    xbar = W0.reshape(-1).copy()
    for t in range(STEPS):
        xbar = xbar - LR * grads[t].mean(axis=0)
        if algorithm != "osgp":  # OSGP has mass in flight between steps
            np.testing.assert_allclose(weight[t], n, rtol=1e-12)
            np.testing.assert_allclose(held[t] / n, xbar, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sum(r["w_home"] for r in res), n, rtol=1e-12)
    np.testing.assert_allclose(sum(r["x_home"] for r in res) / n, xbar, rtol=1e-10, atol=1e-10)
    assert all(r["bytes"] > 0 for r in res)


# ------------------------------------------------- with the wrappers' other features

L = 2  # processes per node in the hierarchical runs


def _hier(rank: int, n: int, spec: str, hierarchical: bool) -> tuple[np.ndarray, int]:
    X, Y, W0 = _problem(n if hierarchical else n * L)  # one sample set per process
    net = nn.Linear(X.shape[2], OUT, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(W0))
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.5)
    nodes = n // L if hierarchical else n
    extra: dict[str, Any] = {"nprocs_per_node": L} if hierarchical else {}
    dp = make_data_parallel(
        "sgp", net, opt, topology=topology("ring", nodes), compression=spec, **extra
    )
    out = []
    for _ in range(STEPS):
        # flat: rank r stands for node r, whose L processes have samples L r .. L r + L - 1
        mine = [rank] if hierarchical else [L * rank + i for i in range(L)]
        err = sum(
            0.5 * ((dp(torch.from_numpy(X[k])) - torch.from_numpy(Y[k])) ** 2).sum(1).mean()
            for k in mine
        )
        (err / len(mine)).backward()
        opt.step()
        opt.zero_grad()
        out.append(net.weight.detach().reshape(-1).clone().numpy())
    dp.close()
    return np.array(out), dp.bytes_sent


def test_hierarchical_compressed_gossip_equals_flat_compressed_gossip() -> None:
    """bf16 differences are elementwise, so a node's shards compress exactly as the whole."""
    nodes = 2
    hier = run_distributed(_hier, nodes * L, ("bf16", True))
    flat = run_distributed(_hier, nodes, ("bf16", False))
    for node in range(nodes):
        for i in range(L):  # every process of a node holds the node's model
            np.testing.assert_allclose(hier[L * node + i][0], flat[node][0], rtol=1e-12)
        # and the node sends one compressed model's worth, split over its processes
        assert sum(hier[L * node + i][1] for i in range(L)) == flat[node][1]


def _features(rank: int, n: int) -> dict[str, Any]:
    X, Y, W0 = _problem(n)
    net = nn.Linear(X.shape[2], OUT, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(W0))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    dp = make_data_parallel(
        "sgp",
        net,
        opt,
        topology=topology("ring", n),
        compression="topk:0.25",
        global_average_every=3,  # Gossip-PGA: an uncompressed exact average every 3 steps
    )
    zs, ws, grads = [], [], []
    for t in range(STEPS):
        if t == 4:  # a switch to a directed, non-regular graph keeps the public copies
            dp.set_topology(topology("star", n))
        pred = dp(torch.from_numpy(X[rank]))
        (0.5 * ((pred - torch.from_numpy(Y[rank])) ** 2).sum(dim=1).mean()).backward()
        grads.append(net.weight.grad.reshape(-1).clone().numpy())
        opt.step()
        opt.zero_grad()
        zs.append(net.weight.detach().reshape(-1).clone().numpy())
        ws.append(dp.ps_weight)
    dp.close()
    return {"z": np.array(zs), "w": np.array(ws), "g": np.array(grads)}


def test_exact_averages_and_topology_switches_keep_the_compressed_average_exact() -> None:
    n = 4
    _, _, W0 = _problem(n)
    res = run_distributed(_features, n)
    z = np.stack([r["z"] for r in res], axis=1)
    w = np.stack([r["w"] for r in res], axis=1)
    grads = np.stack([r["g"] for r in res], axis=1)
    xbar = W0.reshape(-1).copy()
    for t in range(STEPS):
        xbar = xbar - LR * grads[t].mean(axis=0)
        held = (z[t] * w[t][:, None]).sum(axis=0)
        np.testing.assert_allclose(w[t].sum(), n, rtol=1e-12)
        np.testing.assert_allclose(held / n, xbar, rtol=1e-10, atol=1e-10)
        if t % 3 == 2:  # an exact step: every rank holds the average, weight 1
            np.testing.assert_allclose(z[t], np.tile(xbar, (n, 1)), rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(w[t], 1.0)
    assert np.ptp(w[-1]) > 0  # the star made the weights unequal: they really travel
