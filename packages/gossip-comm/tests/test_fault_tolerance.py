"""Fault-tolerant push-sum: a rank is SIGKILLed, the survivors settle, regroup and go on.

The whole protocol runs with real processes on gloo: membership through a store that the
test process serves, one process group per generation, and the settled state of every
survivor compared with gossip-topology's numpy model of the same events
(``simulate_generation``): no mass is created or destroyed by the protocol.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from gossip_comm import (
    GossipConfig,
    GossipPeerError,
    GossipTimeoutError,
    Membership,
    PushPull,
    PushSum,
)
from gossip_comm.testing import run_distributed, store_server
from gossip_topology import (
    Generation,
    RankRecord,
    simulate_generation,
    simulate_push_sum,
    topology_at,
)

HOST = "127.0.0.1"
TIMEOUT = 3.0  # the gossip timeout: how long a rank waits on a silent peer
D = 5


def _x0(n: int) -> np.ndarray:
    return np.random.default_rng(8).normal(size=(n, D))


def _gossiper(kind: str, graph: str, g: Generation, x: torch.Tensor) -> PushSum | PushPull:
    config = GossipConfig(timeout=TIMEOUT, fault_tolerant=True)
    topology = topology_at(graph, g.world_size)
    return (PushSum if kind == "push-sum" else PushPull)(topology, x, config=config)


Run = tuple[torch.Tensor, float, int, GossipPeerError | None]


def _run_generation(
    m: Membership, gossiper: PushSum | PushPull, x: torch.Tensor, w: float, steps: int
) -> Run:
    """Gossip until ``steps`` steps, a failure, or a request to end the generation."""
    done = 0
    while done < steps:
        if m.end_requested() is not None:
            return x, w, done, None
        try:
            x, w = gossiper.mix(x, w)
        except GossipPeerError as err:
            g = m.generation
            assert g is not None
            if not isinstance(err, GossipTimeoutError) or m.end_requested() is None:
                m.request_end(f"rank {err.rank}: {type(err).__name__}", lost=[g.members[err.peer]])
            return x, w, done, err
        done += 1
    return x, w, done, None


def _survive(
    index: int, n: int, port: int, kind: str, graph: str, victim: int, kill_at: int
) -> dict[str, Any]:
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))
    m = Membership(store, settle_timeout=TIMEOUT + 5.0)
    g0 = m.form(n)
    m.init_process_group(timeout=60)
    assert m.member is not None
    x = torch.tensor(_x0(n)[m.member])
    gossiper = _gossiper(kind, graph, g0, x)
    # generation 0: the victim dies at a step boundary; the others run until that ends it
    steps = kill_at if m.member == victim else 10**6
    x, w, completed, err = _run_generation(m, gossiper, x, 1.0, steps)
    if m.member == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    interrupted = gossiper.interrupted
    m.publish_posted(gossiper.step - 1)
    g1 = m.next()
    record: dict[str, Any] = {"completed": completed, "posted": interrupted}
    if interrupted:
        settled = gossiper.settle(m.posted(g0))
        assert settled.partial == ()
        x, w = settled.tensor, settled.weight
        lost = {r for r, member in enumerate(g0.members) if member not in g1.members}
        record["returned"] = [(p, settled.step) for p in settled.returned if p in lost]
        record["received_from_lost"] = [(q, settled.step) for q in settled.received if q in lost]
    gossiper.close()
    settled_x, settled_w = x.clone().numpy(), w
    # generation 1: the survivors, regrouped, gossip 12 more steps undisturbed
    m.init_process_group(timeout=60)
    gossiper = _gossiper(kind, graph, g1, x)
    x, w, done, err = _run_generation(m, gossiper, x, w, 12)
    assert err is None and done == 12
    gossiper.close()
    dist.destroy_process_group()
    return {
        "member": m.member,
        "generations": (g0, g1),
        "record": record,
        "error": None if err is None else type(err).__name__,
        "settled": (settled_x, settled_w),
        "final": (x.numpy(), w),
    }


def _records(results: list[dict[str, Any]], n: int, victim: int, kill_at: int) -> list[RankRecord]:
    by_member = {r["member"]: r["record"] for r in results}
    records = []
    for member in range(n):
        if member == victim:
            records.append(RankRecord(completed=kill_at, alive=False))
            continue
        rec = by_member[member]
        records.append(
            RankRecord(
                completed=rec["completed"],
                posted=rec["posted"],
                returned=frozenset(map(tuple, rec.get("returned", []))),
                received_from_lost=frozenset(map(tuple, rec.get("received_from_lost", []))),
            )
        )
    return records


@pytest.fixture
def store_port() -> Iterator[int]:
    with store_server() as port:
        yield port


@pytest.mark.parametrize(
    ("kind", "graph", "n", "victim", "kill_at"),
    [
        ("push-sum", "dynamic-directed-exponential", 4, 2, 3),
        ("push-sum", "ring", 5, 0, 4),
        ("push-pull", "ring", 4, 1, 2),
    ],
)
def test_survivors_settle_exactly_and_go_on(
    store_port: int, kind: str, graph: str, n: int, victim: int, kill_at: int
) -> None:
    results = run_distributed(
        _survive,
        n,
        (store_port, kind, graph, victim, kill_at),
        init_timeout=None,
        timeout=120,
        allowed_exits=list(range(n)),
    )
    survivors = sorted((r for r in results if r is not None), key=lambda r: r["member"])
    assert [r["member"] for r in survivors] == [m for m in range(n) if m != victim]
    g1 = Generation(1, tuple(m for m in range(n) if m != victim))
    assert all(r["generations"][1] == g1 for r in survivors)

    # generation 0 settled exactly as the numpy model of the recorded events says
    records = _records(survivors, n, victim, kill_at)
    model = simulate_generation(topology_at(graph, n), _x0(n), records)
    for r in survivors:
        x, w = r["settled"]
        np.testing.assert_allclose(x, model.numerators[r["member"]], rtol=1e-12, atol=1e-12)
        if kind == "push-sum":
            assert w == pytest.approx(model.weights[r["member"]], abs=1e-12)
    x_settled = np.stack([r["settled"][0] for r in survivors])
    w_settled = np.array([r["settled"][1] for r in survivors])
    # no mass created or destroyed: what the survivors hold plus what the lost rank took
    np.testing.assert_allclose(x_settled.sum(0) + model.lost_numerator, _x0(n).sum(0), atol=1e-12)
    if kind == "push-sum":
        assert w_settled.sum() + model.lost_weight == pytest.approx(n, abs=1e-12)

    # generation 1 is plain gossip from the settled state, on the graph rebuilt at n - 1
    ref = simulate_push_sum(
        topology_at(graph, n - 1), x_settled, 12, weights0=w_settled, record="last"
    )
    for i, r in enumerate(survivors):
        np.testing.assert_allclose(r["final"][0], ref.numerators[i], rtol=1e-12, atol=1e-12)
        if kind == "push-sum":
            assert r["final"][1] == pytest.approx(ref.weights[i], abs=1e-12)


def _no_failure(rank: int, n: int) -> Any:
    x = torch.arange(3.0, dtype=torch.float64) + rank
    ps = PushSum(topology_at("ring", n), x, config=GossipConfig(fault_tolerant=True))
    w = 1.0
    for _ in range(4):
        x, w = ps.mix(x, w)
    assert not ps.interrupted
    assert ps.sends_weight  # even on a ring, where the weights would stay equal
    with pytest.raises(RuntimeError, match="no interrupted gossip step"):
        ps.settle(lambda peer, step: True)
    ps.close()
    return x.numpy(), w


def test_without_a_failure_it_is_plain_push_sum_with_the_weight_travelling() -> None:
    n = 3
    results = run_distributed(_no_failure, n)
    x0 = np.arange(3.0)[None, :] + np.arange(n)[:, None]
    ref = simulate_push_sum(topology_at("ring", n), x0, 4, record="last")
    for r, (x, w) in enumerate(results):
        np.testing.assert_allclose(x, ref.numerators[r], rtol=1e-13, atol=1e-13)
        assert w == pytest.approx(ref.weights[r], abs=1e-13)
