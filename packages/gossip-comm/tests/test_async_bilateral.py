"""AsyncBilateral: exact pairwise averages, conserved sums, any-order serving."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import torch

from gossip_comm import AsyncBilateral, GossipConfig, GossipPeerError
from gossip_comm.testing import run_distributed
from gossip_topology import EvenOddExponential, make_topology


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


def _survive(rank: int, n: int) -> Any:
    """EvenOddExponential(3): passives 0 and 2, active 1. The active exchanges twice
    (once with each passive), then dies between exchanges."""
    x = torch.full((4,), float(rank), dtype=torch.float64)
    ab = AsyncBilateral(
        EvenOddExponential(n), x, config=GossipConfig(timeout=20, fault_tolerant=True)
    )
    if not ab.is_passive:
        for _ in range(2):
            x = ab.request(x).wait()
        os.kill(os.getpid(), signal.SIGKILL)
    shared = x.clone()
    ab.serve(shared)
    started = time.monotonic()
    while True:  # the training thread's checks: the loss is raised once
        try:
            ab.check()
        except GossipPeerError as err:
            caught = (err.rank, err.peer)
            break
        assert time.monotonic() - started < 15, "the lost partner was never noticed"
        time.sleep(0.01)
    ab.check()  # raised once only
    ab.finish(timeout=5)  # every partner is lost: nothing to wait for
    return caught, ab.lost, ab.served, ab.moved_with(1), shared.tolist(), ab.ended


def test_fault_tolerant_passives_notice_a_partner_lost_between_exchanges() -> None:
    results = run_distributed(_survive, 3, timeout=60, allowed_exits=[1])
    passive0, passive2 = results[0], results[2]
    assert passive0[:3] == ((0, 1), [1], 1) and passive2[:3] == ((2, 1), [1], 1)
    # active 1 (value 1) averaged with passive 0 (value 0), then, holding 0.5, with
    # passive 2 (value 2): each passive moved by half the difference, whole
    assert passive0[3] == 4 * 0.5 and passive0[4] == [0.5] * 4
    assert passive2[3] == 4 * -0.75 and passive2[4] == [1.25] * 4
    # how each passive's partners ended: the only one was lost, between exchanges
    lost_between = {"goodbye": 0, "lost": 1, "interrupted": 0, "unserved": 0}
    assert passive0[5] == passive2[5] == lost_between
