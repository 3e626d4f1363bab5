"""Distributed failures raise named errors instead of hanging (gloo, CPU)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import torch

from gossip_comm import GossipConfig, GossipPeerError, GossipTimeoutError, NonFiniteError, PushSum
from gossip_comm.testing import run_distributed
from gossip_topology import make_topology

TIMEOUT = 2.0


def _silent_rank_worker(rank: int, n: int) -> Any:
    topo = make_topology("ring", n, 2)  # everyone sends to and hears from both neighbours
    x = torch.full((8,), float(rank))
    ps = PushSum(topo, x, config=GossipConfig(timeout=TIMEOUT))
    if rank == 1:
        time.sleep(3 * TIMEOUT)  # withhold every send; then leave without gossiping
        return None
    t0 = time.monotonic()
    try:
        ps.mix(x, 1.0)
    except GossipTimeoutError as exc:
        return {
            "peer": exc.peer,
            "rank": exc.rank,
            "step": exc.step,
            "msg": str(exc),
            "elapsed": time.monotonic() - t0,
        }
    return {"peer": None, "elapsed": time.monotonic() - t0}


@pytest.mark.slow
def test_silent_peer_raises_timeout_naming_the_peer() -> None:
    n = 4
    results = run_distributed(_silent_rank_worker, n, timeout=60)
    for r in (0, 2):  # the neighbours of rank 1 wait on it
        res = results[r]
        assert res["peer"] == 1, res
        assert res["rank"] == r and res["step"] == 0
        assert f"rank {r}" in res["msg"] and "peer 1" in res["msg"]
        assert res["elapsed"] < 2 * TIMEOUT


def _killed_rank_worker(rank: int, n: int) -> Any:
    topo = make_topology("ring", n, 2)
    x = torch.full((1000,), float(rank))
    ps = PushSum(topo, x, config=GossipConfig(timeout=30))
    w = 1.0
    for _ in range(3):
        x, w = ps.mix(x, w)
    if rank == 2:
        os._exit(3)  # die abruptly, mid-training
    t0 = time.monotonic()
    try:
        for _ in range(5):
            x, w = ps.mix(x, w)
    except GossipPeerError as exc:
        return {
            "type": type(exc).__name__,
            "peer": exc.peer,
            "step": exc.step,
            "msg": str(exc),
            "elapsed": time.monotonic() - t0,
        }
    return None


@pytest.mark.slow
def test_killed_peer_is_reported_not_hung() -> None:
    results = run_distributed(_killed_rank_worker, 4, timeout=90, allowed_exits=[2])
    assert results[2] is None
    for r in (1, 3):  # neighbours of the dead rank
        res = results[r]
        assert res is not None and res["peer"] == 2 and res["step"] == 3, res
        assert res["type"] in ("PeerLostError", "GossipTimeoutError")
        assert res["elapsed"] < 30


def _nan_worker(rank: int, n: int) -> Any:
    topo = make_topology("ring", n)
    x = torch.zeros(16)
    if rank == 0:
        x[3] = float("nan")
    ps = PushSum(topo, x, config=GossipConfig(check_finite=True, timeout=30))
    try:
        ps.mix(x, 1.0)
    except NonFiniteError as exc:
        return (exc.rank, exc.peer, str(exc))
    return None


def test_non_finite_values_are_detected_naming_the_sender() -> None:
    results = run_distributed(_nan_worker, 3)
    assert results[0] is None and results[2] is None
    rank, peer, msg = results[1]  # rank 1 receives from rank 0 on a directed ring
    assert (rank, peer) == (1, 0) and "from rank 0" in msg
