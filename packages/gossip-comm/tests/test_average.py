"""gossip_average: stand-alone distributed averaging."""

from __future__ import annotations

import numpy as np
import torch

from gossip_comm import gossip_average
from gossip_comm.testing import run_distributed
from gossip_topology import Star, make_topology, simulate_push_sum


def _average_worker(rank: int, n: int, x0: np.ndarray, name: str, steps: int) -> np.ndarray:
    topo = Star(n) if name == "star" else make_topology(name, n)
    x = torch.from_numpy(x0[rank].copy())
    before = x.clone()
    avg = gossip_average(x, topo, steps)
    assert torch.equal(x, before)  # the input is untouched
    return avg.numpy()


def test_exact_on_the_one_peer_exponential_graph() -> None:
    n = 8
    x0 = np.random.default_rng(3).normal(size=(n, 6))
    results = run_distributed(_average_worker, n, (x0, "one-peer-exponential", 3))
    for r in range(n):
        np.testing.assert_allclose(results[r], x0.mean(0), rtol=1e-13, atol=1e-13)


def test_matches_the_simulators_debiased_values_on_an_irregular_graph() -> None:
    n, steps = 5, 12
    x0 = np.random.default_rng(4).normal(size=(n, 3))
    results = run_distributed(_average_worker, n, (x0, "star", steps))
    expected = simulate_push_sum(Star(n), x0, steps, record="last").debiased
    np.testing.assert_allclose(np.stack(results), expected, rtol=1e-12, atol=1e-12)
