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
        out.append(net.weight.detach()[0].cpu().numpy())
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
