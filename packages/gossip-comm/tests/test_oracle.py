"""Distributed PushSum/PushPull against gossip-topology's simulator, step for step (gloo, CPU)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm import GossipConfig, PushPull, PushSum
from gossip_comm.testing import run_distributed
from gossip_topology import (
    TOPOLOGY_NAMES,
    is_doubly_stochastic,
    make_topology,
    mixing_matrix,
    simulate_push_pull,
    simulate_push_sum,
)

STEPS = 7
D = 5


def _cases(n: int) -> list[tuple[str, int]]:
    cases = []
    for name in TOPOLOGY_NAMES:
        for k in (1, 2, 3):
            try:
                topo = make_topology(name, n, k)
            except ValueError:
                continue
            if topo.peers_per_itr == k or k == 1:
                cases.append((name, k))
    return cases


def _doubly(name: str, n: int, k: int) -> bool:
    topo = make_topology(name, n, k)
    return all(is_doubly_stochastic(mixing_matrix(topo, t)) for t in range(topo.period))


def _oracle_worker(rank: int, n: int, x0: np.ndarray, cases: list[tuple[str, int]]) -> Any:
    out: dict[str, Any] = {}
    for name, k in cases:
        topo = make_topology(name, n, k)
        x = torch.from_numpy(x0[rank].copy())
        ps = PushSum(topo, x, config=GossipConfig(timeout=60))
        xs, ws = [x.clone().numpy()], [1.0]
        w = 1.0
        for _ in range(STEPS):
            x, w = ps.mix(x, w)
            xs.append(x.clone().numpy())
            ws.append(w)
        # the asynchronous path must give exactly the same numbers
        y = torch.from_numpy(x0[rank].copy())
        ps_async = PushSum(topo, y, config=GossipConfig(timeout=60))
        wy = 1.0
        for _ in range(STEPS):
            handle = ps_async.start(y, wy)
            y, wy = handle.wait()
            assert handle.is_completed()
        ps_async.close()
        out[f"ps/{name}/{k}"] = (np.array(xs), np.array(ws), y.numpy().copy(), wy)
        if _doubly(name, n, k):
            z = torch.from_numpy(x0[rank].copy())
            pp = PushPull(topo, z, config=GossipConfig(timeout=60))
            zs = [z.clone().numpy()]
            for _ in range(STEPS):
                z, _ = pp.mix(z)
                zs.append(z.clone().numpy())
            out[f"pp/{name}/{k}"] = np.array(zs)
        # fp32 buffers: same schedule, relative tolerance 1e-6
        f = torch.from_numpy(x0[rank].astype(np.float32))
        ps32 = PushSum(topo, f, config=GossipConfig(timeout=60))
        wf = 1.0
        for _ in range(STEPS):
            f, wf = ps32.mix(f, wf)
        out[f"ps32/{name}/{k}"] = (f.numpy().copy(), wf)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_every_topology_matches_the_simulator_step_for_step(n: int) -> None:
    rng = np.random.default_rng(100 + n)
    x0 = rng.normal(size=(n, D))
    cases = _cases(n)
    results = run_distributed(_oracle_worker, n, (x0, cases), timeout=600)
    for name, k in cases:
        topo = make_topology(name, n, k)
        sim = simulate_push_sum(topo, x0, STEPS)
        got_x = np.stack([results[r][f"ps/{name}/{k}"][0] for r in range(n)], axis=1)
        got_w = np.stack([results[r][f"ps/{name}/{k}"][1] for r in range(n)], axis=1)
        where = f"{name} k={k} n={n}"
        np.testing.assert_allclose(got_x, sim.numerators, rtol=1e-12, atol=1e-12, err_msg=where)
        np.testing.assert_allclose(got_w, sim.weights, rtol=1e-12, atol=1e-12, err_msg=where)
        np.testing.assert_allclose(
            got_x / got_w[..., None], sim.debiased, rtol=1e-12, atol=1e-12, err_msg=where
        )
        # mass conservation, directly on the distributed values
        np.testing.assert_allclose(got_w.sum(axis=1), n, rtol=1e-12, err_msg=where)
        np.testing.assert_allclose(
            got_x.sum(axis=1),
            np.broadcast_to(x0.sum(0), (STEPS + 1, D)),
            rtol=1e-10,
            atol=1e-10,
            err_msg=where,
        )
        # start()/wait() equals mix()
        for r in range(n):
            _, _, y, wy = results[r][f"ps/{name}/{k}"]
            np.testing.assert_array_equal(y, got_x[-1, r], err_msg=where)
            assert wy == got_w[-1, r]
        # fp32
        f = np.stack([results[r][f"ps32/{name}/{k}"][0] for r in range(n)])
        wf = np.array([results[r][f"ps32/{name}/{k}"][1] for r in range(n)])
        np.testing.assert_allclose(
            f / wf[:, None], sim.debiased[-1], rtol=1e-6, atol=1e-6, err_msg=where
        )
        if f"pp/{name}/{k}" in results[0]:
            pp = simulate_push_pull(topo, x0, STEPS)
            got = np.stack([results[r][f"pp/{name}/{k}"] for r in range(n)], axis=1)
            np.testing.assert_allclose(got, pp.numerators, rtol=1e-12, atol=1e-12, err_msg=where)


def _exact_worker(rank: int, n: int) -> list[float]:
    topo = make_topology("one-peer-exponential", n)
    x = torch.tensor([float(rank), float(rank * rank)], dtype=torch.float64)
    ps = PushSum(topo, x)
    assert not ps.sends_weight  # regular graph + uniform mixing: the fast path
    w = 1.0
    for _ in range(int(math.log2(n))):
        x, w = ps.mix(x, w)
    return (x / w).tolist()


@pytest.mark.parametrize("n", [4, 8])
def test_one_peer_exponential_averages_exactly_in_log2_n_steps(n: int) -> None:
    results = run_distributed(_exact_worker, n)
    mean = [sum(range(n)) / n, sum(r * r for r in range(n)) / n]
    for r in range(n):
        assert results[r] == pytest.approx(mean, rel=1e-15, abs=1e-15)
