"""BilateralPushPull against a numpy oracle of sequential pairwise averaging."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm import AsyncBilateral, BilateralPushPull, GossipConfig
from gossip_comm.testing import run_distributed
from gossip_topology import UniformMixing, make_topology

STEPS = 6


def _oracle(name: str, x0: np.ndarray, steps: int) -> np.ndarray:
    n = x0.shape[0]
    topo = make_topology(name, n)
    x = x0.copy()
    history = [x.copy()]
    for t in range(steps):
        sent = x.copy()  # actives send their value from the start of the step
        for p in (r for r in range(n) if topo.is_passive(r)):
            for a in topo.in_peers(p, t):  # served one at a time, increasing rank
                reply = x[p].copy()
                x[p] = (x[p] + sent[a]) / 2
                x[a] = (sent[a] + reply) / 2
        history.append(x.copy())
    return np.array(history)


def _worker(rank: int, n: int, name: str, x0: np.ndarray, use_poll: bool) -> Any:
    topo = make_topology(name, n)
    x = torch.from_numpy(x0[rank].copy())
    bp = BilateralPushPull(topo, x, config=GossipConfig(timeout=60))
    history, polls = [x.clone().numpy()], 0
    for t in range(STEPS):
        if bp.is_passive and use_poll:
            while not bp.poll(x):
                polls += 1
                time.sleep(0.002)
        elif not bp.is_passive and use_poll and t == 0:
            time.sleep(0.5)  # let the passives find nothing for a while
            x = bp.start(x).wait()
        else:
            x = bp.mix(x)
        history.append(x.clone().numpy())
    return np.array(history), polls, bp.is_passive


@pytest.mark.parametrize(
    ("name", "n"),
    [
        ("dynamic-bipartite-exponential", 2),
        ("dynamic-bipartite-exponential", 8),
        ("dynamic-bipartite-linear", 6),
        ("ring", 6),
    ],
)
def test_pairwise_averages_match_the_oracle(name: str, n: int) -> None:
    x0 = np.random.default_rng(n).normal(size=(n, 4))
    results = run_distributed(_worker, n, (name, x0, False))
    got = np.stack([results[r][0] for r in range(n)], axis=1)
    np.testing.assert_allclose(got, _oracle(name, x0, STEPS), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(
        got.sum(axis=1), np.broadcast_to(x0.sum(0), (STEPS + 1, 4)), rtol=1e-12
    )


def test_passive_side_polls_without_blocking() -> None:
    n = 4
    name = "dynamic-bipartite-exponential"
    x0 = np.random.default_rng(0).normal(size=(n, 3))
    results = run_distributed(_worker, n, (name, x0, True))
    got = np.stack([results[r][0] for r in range(n)], axis=1)
    np.testing.assert_allclose(got, _oracle(name, x0, STEPS), rtol=1e-13, atol=1e-13)
    for _, polls, passive in results:
        if passive:
            assert polls > 10  # poll() returned False many times while the active slept


def _role_errors(rank: int, n: int) -> dict[str, str]:
    x = torch.zeros(2)
    out = {}
    for key, build in {
        "not_bipartite": lambda: BilateralPushPull(make_topology("complete", n), x),
        "two_peers": lambda: BilateralPushPull(make_topology("dynamic-bipartite-linear", n, 2), x),
        "mixing": lambda: BilateralPushPull(
            make_topology("dynamic-bipartite-exponential", n),
            x,
            config=GossipConfig(mixing=UniformMixing()),
        ),
        "async_wire": lambda: AsyncBilateral(
            make_topology("dynamic-bipartite-exponential", n),
            x,
            config=GossipConfig(wire_dtype=torch.bfloat16),
        ),
    }.items():
        try:
            build()
        except ValueError as exc:
            out[key] = str(exc)
    bp = BilateralPushPull(make_topology("dynamic-bipartite-exponential", n), x)
    try:
        bp.poll(x) if not bp.is_passive else bp.start(x)
    except RuntimeError as exc:
        out["role"] = str(exc)
    return out


def test_bad_topologies_and_roles() -> None:
    for res in run_distributed(_role_errors, 4):
        assert "needs a bipartite topology" in res["not_bipartite"]
        assert "peers_per_itr must be 1" in res["two_peers"]
        assert "BilateralPushPull averages pairs with weight 1/2: config.mixing" in res["mixing"]
        assert (
            "AsyncBilateral averages pairs with weight 1/2: config.wire_dtype"
            in (res["async_wire"])
        )
        assert "passive" in res["role"] or "active" in res["role"]
