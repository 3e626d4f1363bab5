"""Mixed precision: a GradScaler that skips the update on one rank, and bf16 autocast.

The oracle replays the gradients each rank actually applied (zero where its scaler
skipped) through the exact gossip recursion, so it checks the communication whatever
the low-precision forward pass computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from gossip_comm.testing import RankFailedError, run_distributed
from gossip_nn import make_data_parallel
from gossip_topology import Star
from nn_oracles import D, gossip_oracle, problem, quadratic

N, STEPS, LR, BAD_RANK, BAD_STEP = 4, 6, 0.05, 1, 2


def _train(rank: int, n: int, algorithm: str, precision: str, helper: bool) -> dict[str, Any]:
    X, y, theta0 = problem(n)
    net = nn.Linear(D, 1, bias=False)  # float32 parameters, as autocast expects
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(theta0)[None, :])
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    extra = {"timeout": 5.0} if not helper else {}
    dp = make_data_parallel(algorithm, net, opt, topology=Star(n), **extra)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=precision == "fp16")
    Xr, yr = torch.from_numpy(X[rank]).float(), torch.from_numpy(y[rank]).float()
    applied, zs, ws, skipped = [], [], [], []
    for t in range(STEPS):
        with torch.autocast("cpu", dtype=dtype):
            pred = dp(Xr)[:, 0]
        loss = 0.5 * ((pred.float() - yr) ** 2).mean()
        if precision == "fp16" and rank == BAD_RANK and t == BAD_STEP:
            loss = loss * float("inf")  # an overflow on this rank only
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grad = net.weight.grad[0].double().numpy().copy()
        finite = bool(np.isfinite(grad).all())
        applied.append(grad if finite else np.zeros(D))
        if helper:
            dp.scaler_step(scaler)
        else:
            scaler.step(opt)  # skips optimizer.step(), and with it this rank's gossip
        scaler.update()
        opt.zero_grad()
        skipped.append(not finite)
        zs.append(net.weight.detach()[0].double().numpy().copy())
        ws.append(dp.ps_weight)
    dp.close()
    return {"g": np.array(applied), "z": np.array(zs), "w": np.array(ws), "skipped": skipped}


CASES = [("sgp", "fp16"), ("osgp", "fp16"), ("sgp", "bf16")]


def _all_cases(rank: int, n: int) -> list[dict[str, Any]]:
    return [_train(rank, n, algorithm, precision, True) for algorithm, precision in CASES]


@pytest.fixture(scope="module")
def runs() -> list[list[dict[str, Any]]]:
    return run_distributed(_all_cases, N, timeout=300)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_rank_gossips_every_step(case: int, runs: list[list[dict[str, Any]]]) -> None:
    algorithm, precision = CASES[case]
    res = [r[case] for r in runs]
    if precision == "fp16":  # the injected overflow skipped exactly one update
        for r, out in enumerate(res):
            assert out["skipped"] == [r == BAD_RANK and t == BAD_STEP for t in range(STEPS)]
    X, y, theta0 = problem(N)
    replay = np.stack([out["g"] for out in res], axis=1)  # (steps, n, d)
    zs, ws = gossip_oracle(
        algorithm, lambda t: Star(N), quadratic(X, y), theta0, STEPS, LR, replay=replay
    )
    np.testing.assert_allclose(np.stack([o["z"] for o in res], axis=1), zs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.stack([o["w"] for o in res], axis=1), ws, rtol=1e-12)
    if algorithm == "sgp":  # nothing in flight between steps: all the weight is home
        np.testing.assert_allclose(ws.sum(axis=1), N, rtol=1e-12)


def test_plain_scaler_step_with_a_skip_fails_loudly_naming_ranks() -> None:
    # without scaler_step the skipping rank leaves its peers waiting: they must raise
    # (naming this rank and the peer) rather than hang
    with pytest.raises(RankFailedError, match=r"rank \d.*(peer|rank) \d"):
        run_distributed(_train, N, ("sgp", "fp16", False), timeout=120)
