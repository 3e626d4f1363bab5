"""gossip_average: stand-alone distributed averaging."""

from __future__ import annotations

import numpy as np
import torch

from gossip_comm import GossipConfig, gossip_average
from gossip_comm.testing import run_distributed
from gossip_topology import (
    Star,
    make_topology,
    simulate_compressed_push_sum,
    simulate_push_sum,
)


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


def _compressed_average_worker(rank: int, n: int, x0: np.ndarray, steps: int) -> np.ndarray:
    x = torch.from_numpy(x0[rank].copy())
    config = GossipConfig(compression="int8")
    return gossip_average(x, make_topology("ring", n), steps, config=config).numpy()


def test_config_reaches_the_gossiper_compressed_average_matches_the_simulator() -> None:
    n, steps = 4, 10
    x0 = np.random.default_rng(5).normal(size=(n, 7))
    results = np.stack(run_distributed(_compressed_average_worker, n, (x0, steps)))
    expected = simulate_compressed_push_sum(
        make_topology("ring", n), x0, steps, compression="int8", record="last"
    ).debiased
    np.testing.assert_allclose(results, expected, rtol=1e-9, atol=1e-10)
    # and it is not the uncompressed answer: the config was used
    plain = simulate_push_sum(make_topology("ring", n), x0, steps, record="last").debiased
    assert np.abs(results - plain).max() > 1e-6
