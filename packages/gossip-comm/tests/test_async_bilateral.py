"""AsyncBilateral: exact pairwise averages, conserved sums, any-order serving."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from gossip_comm import AsyncBilateral, GossipConfig, GossipPeerError
from gossip_comm.testing import run_distributed
from gossip_topology import make_topology


def _pair(rank: int, n: int) -> list[float]:
    x = torch.full((5,), float(3 * rank + 1), dtype=torch.float64)
    ab = AsyncBilateral(make_topology("dynamic-bipartite-exponential", n), x)
    if ab.is_passive:
        shared = x.clone()
        ab.serve(shared)
        ab.finish()
        return shared.tolist()
    out = ab.request(x).wait()
    ab.finish()
    return out.tolist()


def test_one_exchange_gives_both_ends_the_exact_average() -> None:
    res = run_distributed(_pair, 2)
    assert res[0] == res[1] == [2.5] * 5


def _many(rank: int, n: int, exchanges: int) -> Any:
    x = torch.from_numpy(np.random.default_rng(rank).normal(size=7))
    start = x.clone().numpy()
    ab = AsyncBilateral(
        make_topology("dynamic-bipartite-exponential", n), x, config=GossipConfig(timeout=60)
    )
    if ab.is_passive:
        shared = x.clone()
        ab.serve(shared)
        ab.finish()
        return start, shared.numpy(), ab.served
    rng = np.random.default_rng(100 + rank)
    for _ in range(exchanges):
        time.sleep(float(rng.uniform(0, 0.02)))  # actives arrive in no fixed order
        x = ab.request(x).wait()
    ab.finish()
    return start, x.numpy(), ab.step


def test_sums_are_conserved_and_every_request_is_served() -> None:
    n, exchanges = 6, 8
    res = run_distributed(_many, n, (exchanges,))
    np.testing.assert_allclose(
        sum(r[1] for r in res), sum(r[0] for r in res), rtol=1e-12, atol=1e-12
    )
    passive_served = sum(r[2] for r in res[0::2])
    active_requests = sum(r[2] for r in res[1::2])
    assert passive_served == active_requests == (n // 2) * exchanges


def _poisoned(rank: int, n: int) -> Any:
    x = torch.zeros(3, dtype=torch.float64)
    ab = AsyncBilateral(
        make_topology("dynamic-bipartite-exponential", n),
        x,
        config=GossipConfig(timeout=3, check_finite=True),
    )
    if ab.is_passive:
        ab.serve(x.clone())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the training thread's next calls
            try:
                ab.check()
            except GossipPeerError as exc:
                return type(exc).__name__, exc.rank, exc.peer, exc.step, str(exc)
            time.sleep(0.05)
        return "no error"
    # The reply streams back while the request arrives (full duplex), so the first
    # exchange completes on the active's side; the passive then stops serving, and the
    # active's next request gets no answer.
    ab.request(torch.full((3,), float("nan"), dtype=torch.float64)).wait()
    try:
        ab.request(torch.zeros(3, dtype=torch.float64)).wait()
    except GossipPeerError as exc:
        return exc.rank, exc.peer
    return "answered"


def test_a_responder_error_reaches_the_training_thread_naming_rank_peer_and_step() -> None:
    res = run_distributed(_poisoned, 2)
    assert res[1] == (1, 0), res[1]  # the active's wait names itself and its passive
    name, rank, peer, step, text = res[0]
    assert (name, rank, peer, step) == ("NonFiniteError", 0, 1, 0), res[0]
    assert "rank 0 received NaN or Inf from rank 1 at gossip step 0" in text
