"""CUDA models under every algorithm (gossip staged over gloo). Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossip_comm.testing import run_distributed
from gossip_nn import ALGORITHMS, make_data_parallel
from gossip_topology import simulate_push_sum
from nn_oracles import problem, quadratic, topology

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _sgp_cuda(rank: int, n: int, steps: int) -> np.ndarray:
    X, y, theta0 = problem(n)
    net = torch.nn.Linear(theta0.size, 1, bias=False).double().cuda()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(theta0)[None, :])
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    dp = make_data_parallel("sgp", net, opt, topology=topology("star", n))
    Xr, yr = torch.from_numpy(X[rank]).cuda(), torch.from_numpy(y[rank]).cuda()
    out = []
    for _ in range(steps):
        (0.5 * ((dp(Xr)[:, 0] - yr) ** 2).mean()).backward()
        opt.step()
        opt.zero_grad()
        out.append(net.weight.detach()[0].cpu().numpy().copy())
    return np.array(out)


def test_sgp_with_a_cuda_model_matches_the_simulator() -> None:
    n, steps = 3, 5
    X, y, theta0 = problem(n)
    res = run_distributed(_sgp_cuda, n, (steps,))
    sim = simulate_push_sum(
        topology("star", n), np.tile(theta0, (n, 1)), steps, objective=quadratic(X, y), lr=0.05
    )
    np.testing.assert_allclose(np.stack(res, axis=1), sim.debiased[1:], rtol=1e-10, atol=1e-10)


def _every_algorithm(rank: int, n: int) -> dict[str, tuple[float, float]]:
    out = {}
    for algorithm in ALGORITHMS:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
        ).cuda()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        dp = make_data_parallel(algorithm, net, opt)
        x = torch.randn(32, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(rank))
        y = x.sum(1, keepdim=True)
        with torch.no_grad():
            first = float(torch.nn.functional.mse_loss(net(x), y))
        for _ in range(30):
            torch.nn.functional.mse_loss(dp(x), y).backward()
            opt.step()
            opt.zero_grad()
        dp.close()
        with torch.no_grad(), dp.average_for_eval():
            out[algorithm] = (first, float(torch.nn.functional.mse_loss(dp(x), y)))
    return out


def test_every_algorithm_trains_a_cuda_model() -> None:
    res = run_distributed(_every_algorithm, 2, timeout=300)
    for algorithm in ALGORITHMS:
        for r in res:
            first, last = r[algorithm]
            assert np.isfinite(last) and last < 0.5 * first, res  # it learned


def _amp_cuda(rank: int, n: int, steps: int) -> dict[str, np.ndarray]:
    from nn_oracles import D

    X, y, theta0 = problem(n)
    net = torch.nn.Linear(D, 1, bias=False).cuda()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(theta0)[None, :])
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    dp = make_data_parallel("sgp", net, opt, topology=topology("star", n))
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    Xr, yr = torch.from_numpy(X[rank]).float().cuda(), torch.from_numpy(y[rank]).float().cuda()
    applied, zs, ws = [], [], []
    for t in range(steps):
        with torch.autocast("cuda", dtype=torch.float16):
            pred = dp(Xr)[:, 0]
        loss = 0.5 * ((pred.float() - yr) ** 2).mean()
        if rank == 1 and t == 2:
            loss = loss * float("inf")  # this rank's scaler skips its update
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        g = net.weight.grad[0].double().cpu().numpy().copy()
        applied.append(g if np.isfinite(g).all() else np.zeros(D))
        dp.scaler_step(scaler)
        scaler.update()
        opt.zero_grad()
        zs.append(net.weight.detach()[0].double().cpu().numpy().copy())
        ws.append(dp.ps_weight)
    dp.close()
    return {"g": np.array(applied), "z": np.array(zs), "w": np.array(ws)}


def test_fp16_grad_scaler_skip_on_cuda_matches_the_replay_oracle() -> None:
    from nn_oracles import gossip_oracle

    n, steps = 4, 5
    X, y, theta0 = problem(n)
    res = run_distributed(_amp_cuda, n, (steps,), timeout=300)
    assert np.all(res[1]["g"][2] == 0) and np.any(res[0]["g"][2] != 0)  # one skip
    replay = np.stack([r["g"] for r in res], axis=1)
    zs, ws = gossip_oracle(
        "sgp", lambda t: topology("star", n), quadratic(X, y), theta0, steps, 0.05, replay=replay
    )
    np.testing.assert_allclose(np.stack([r["z"] for r in res], axis=1), zs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.stack([r["w"] for r in res], axis=1), ws, rtol=1e-12)


def _hierarchical_on(rank: int, n: int, device: str) -> np.ndarray:
    X, y, theta0 = problem(n)
    net = torch.nn.Linear(theta0.size, 1, bias=False).double().to(device)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(theta0)[None, :])
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.5)
    dp = make_data_parallel(
        "osgp", net, opt, topology="ring", nprocs_per_node=2, buffers="local", synch_freq=1
    )
    Xr, yr = torch.from_numpy(X[rank]).to(device), torch.from_numpy(y[rank]).to(device)
    out = []
    for _ in range(6):
        (0.5 * ((dp(Xr)[:, 0] - yr) ** 2).mean()).backward()
        opt.step()
        opt.zero_grad()
        out.append(net.weight.detach()[0].cpu().numpy().copy())
    dp.close()
    return np.array(out)


def test_hierarchical_gossip_of_a_cuda_model_matches_flat_gossip() -> None:
    from test_hierarchy import _flat  # 2 ranks, each on its node's averaged gradient

    cuda = run_distributed(_hierarchical_on, 4, ("cuda",), timeout=300)
    flat = run_distributed(_flat, 2, ("osgp", "ring"), timeout=300)
    for rank in range(4):
        np.testing.assert_allclose(cuda[rank], flat[rank // 2][0], rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(cuda[0], cuda[1])  # one model per node
