"""BatchNorm buffers under every ``buffers=`` mode, against closed-form oracles.

BatchNorm is the model's first layer, so its batch statistics are those of the input
and the running statistics follow in closed form: each forward pass sets
``r <- (1 - m) r + m s`` with the batch mean (or unbiased variance) ``s``. In
``"average"`` mode the gossip step then mixes ``w r`` like a parameter numerator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from gossip_comm.testing import run_distributed
from gossip_nn import make_data_parallel
from gossip_topology import Star, mixing_matrix

N, D, B, STEPS, MOMENTUM = 4, 3, 8, 5, 0.1


def _data() -> np.ndarray:
    rng = np.random.default_rng(5)
    # rank r's inputs are centred at r with spread 1 + r: the ranks' statistics differ
    return np.stack(
        [r + (1 + r) * rng.normal(size=(STEPS, B, D)) for r in range(N)]
    )  # (N, STEPS, B, D)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.BatchNorm1d(D, momentum=MOMENTUM), nn.Linear(D, 1)).double()


def _run(rank: int, n: int, algorithm: str, mode: str) -> dict[str, Any]:
    X = torch.from_numpy(_data()[rank])
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    topo = {} if algorithm == "ar" else {"topology": Star(n)}  # star: weights move
    dp = make_data_parallel(algorithm, net, opt, buffers=mode, **topo)
    bn = net[0]
    means, variances, weights = [], [], []
    for t in range(STEPS):
        dp(X[t]).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        means.append(bn.running_mean.numpy().copy())
        variances.append(bn.running_var.numpy().copy())
        weights.append(dp.ps_weight)
    with dp.average_for_eval():
        held = (bn.running_mean.numpy().copy(), bn.running_var.numpy().copy())
    restored = bn.running_mean.numpy().copy()
    dp.close()
    return {
        "mean": np.array(means),
        "var": np.array(variances),
        "w": np.array(weights),
        "eval": held,
        "restored": restored,
        "tracked": int(bn.num_batches_tracked),
    }


def _all_modes(rank: int, n: int) -> dict[str, Any]:
    cases = [("sgp", m) for m in ("average", "local", "broadcast")]
    cases += [("ar", m) for m in ("average", "local", "broadcast")]
    return {f"{a}/{m}": _run(rank, n, a, m) for a, m in cases}


def _oracle(algorithm: str, mode: str) -> dict[str, np.ndarray]:
    """Running mean/var of every rank after every step, and the eval average."""
    X = _data()
    stats = {"mean": X.mean(axis=2), "var": X.var(axis=2, ddof=1)}  # (N, STEPS, D)
    out: dict[str, Any] = {}
    topo = Star(N)
    for key, start in (("mean", 0.0), ("var", 1.0)):
        r = np.full((N, D), start)
        w = np.ones(N)
        hist = []
        for t in range(STEPS):
            s = stats[key][:, t]
            if algorithm == "ar" and mode == "broadcast":
                r = np.tile(r[0], (N, 1))  # DDP copies rank 0's before each forward
            r = (1 - MOMENTUM) * r + MOMENTUM * s
            if mode == "broadcast" and algorithm == "sgp":
                r = np.tile(r[0], (N, 1))  # after the step
            elif mode == "average" and algorithm == "ar":
                r = np.tile(r.mean(axis=0), (N, 1))
            elif mode == "average":
                P = mixing_matrix(topo, t)
                x, w = P @ (w[:, None] * r), P @ w
                r = x / w[:, None]
            hist.append(r.copy())
        out[key] = np.stack(hist, axis=1)  # (N, STEPS, D)
        weighted = mode == "average" and algorithm == "sgp"
        out[f"eval_{key}"] = (w[:, None] * r).sum(0) / w.sum() if weighted else r.mean(0)
    return out


@pytest.mark.parametrize(
    "case", ["sgp/average", "sgp/local", "sgp/broadcast", "ar/average", "ar/local", "ar/broadcast"]
)
def test_buffers_follow_their_oracle(case: str, all_modes: list[dict[str, Any]]) -> None:
    algorithm, mode = case.split("/")
    oracle = _oracle(algorithm, mode)
    got = [r[case] for r in all_modes]
    for key in ("mean", "var"):
        np.testing.assert_allclose(
            np.stack([g[key] for g in got]), oracle[key], rtol=1e-10, atol=1e-12, err_msg=key
        )
    # average_for_eval holds the exact (weighted, in "average" mode) mean of the buffers
    # and restores each rank's own on exit
    for g in got:
        np.testing.assert_allclose(g["eval"][0], oracle["eval_mean"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g["eval"][1], oracle["eval_var"], rtol=1e-10, atol=1e-12)
    for g in got:
        np.testing.assert_array_equal(g["restored"], g["mean"][-1])  # restored exactly
        assert g["tracked"] == STEPS  # integer buffers are never averaged
    if algorithm == "sgp":  # the star moves push-sum weights: the weighted mix is tested
        assert np.ptp(np.stack([g["w"] for g in got])[:, -1]) > 0.1


@pytest.fixture(scope="module")
def all_modes() -> list[dict[str, Any]]:
    return run_distributed(_all_modes, N, timeout=180)


def _adpsgd(rank: int, n: int, mode: str) -> dict[str, Any]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(D, momentum=0.2), nn.Linear(D, 1)).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    dp = make_data_parallel("adpsgd", net, opt, buffers=mode)
    x = torch.from_numpy(_data()[rank, 0])
    bn, edits = net[0], torch.zeros(D, dtype=torch.float64)
    start = bn.running_mean.clone()
    for _ in range(STEPS * 4):
        before = bn.running_mean.clone()
        dp(x).sum().backward()  # the forward pass edits the running mean
        edits += bn.running_mean - before
        opt.step()
        opt.zero_grad()
    dp.close()
    return {"start": start.numpy(), "edits": edits.numpy(), "end": bn.running_mean.numpy()}


def test_adpsgd_averages_buffers_in_its_exchanges() -> None:
    # Pairwise averages conserve the pair's sum, so once every exchange is home the sum
    # of the running means is the sum of what the forward passes added, whatever the
    # timing; an exchange that dropped an edit made meanwhile, or applied one twice,
    # breaks it. Kept local, each rank's running mean is its own exponential average.
    X = _data()[:2, 0]
    for mode in ("average", "local"):
        res = run_distributed(_adpsgd, 2, (mode,))
        total = sum(r["end"] for r in res)
        np.testing.assert_allclose(
            total, sum(r["start"] + r["edits"] for r in res), rtol=1e-12, atol=1e-12
        )
        own = [np.zeros(D), np.zeros(D)]
        for _ in range(STEPS * 4):
            own = [(1 - 0.2) * own[r] + 0.2 * X[r].mean(axis=0) for r in range(2)]
        moved = max(float(np.abs(res[r]["end"] - own[r]).max()) for r in range(2))
        if mode == "local":
            assert moved < 1e-12
        else:
            assert moved > 0.1  # exchanges happened and moved the buffers


def _broadcast_adpsgd(rank: int, n: int) -> str:
    net = _net()
    try:
        make_data_parallel(
            "adpsgd", net, torch.optim.SGD(net.parameters(), lr=0.1), buffers="broadcast"
        )
    except ValueError as exc:
        return str(exc)
    return ""


def test_buffer_mode_is_checked() -> None:
    from gossip_nn import GossipOptions

    with pytest.raises(ValueError, match="buffers must be one of 'average', 'local'"):
        GossipOptions(buffers="mean")
    res = run_distributed(_broadcast_adpsgd, 2)
    assert all("buffers='broadcast' would be a collective every step" in r for r in res)
