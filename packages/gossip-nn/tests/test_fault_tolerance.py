"""Training survives a SIGKILLed rank: the survivors settle, regroup and finish the run.

Plain training loops (``loss.backward(); opt.step()``) on 4 processes with a store served
by the test process; one rank kills itself mid-run. The survivors must finish every step,
agree on the new generation, and hold exactly the push-sum weight that gossip-topology's
numpy model of the recorded events gives (weights do not depend on the gradients).
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
from torch import nn

from gossip_comm.testing import run_distributed, store_server
from gossip_nn import FaultTolerance, GossipOptions, make_data_parallel
from gossip_topology import Generation, RankRecord, simulate_generation, topology_at

HOST = "127.0.0.1"
STEPS, KILL_AT = 30, 8


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    w_true = torch.arange(1.0, 7.0, dtype=torch.float64)
    return x, x @ w_true + 0.01 * torch.randn(64, generator=g, dtype=torch.float64)


def _train(index: int, n: int, port: int, algorithm: str, graph: str, victim: int) -> Any:
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))
    ft = FaultTolerance(store, world_size=n)
    ft.start(timeout=60)
    member = ft.membership.member
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    dp = make_data_parallel(algorithm, model, opt, topology=graph, timeout=3.0, fault_tolerance=ft)
    x, y = _data(100 + (member or 0))
    losses = []
    for step in range(STEPS):
        if member == victim and step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        loss = ((dp(x).squeeze(1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    change = ft.history[0] if ft.history else None
    return {
        "member": member,
        "losses": losses,
        "changes": len(ft.history),
        "generation": ft.generation,
        "record": None if change is None else change.record,
        "settled_weight": None if change is None else change.weight,
        "seconds": None if change is None else change.seconds,
        "weight": dp.ps_weight,
    }


@pytest.fixture
def store_port() -> Iterator[int]:
    with store_server() as port:
        yield port


@pytest.mark.parametrize(
    ("algorithm", "graph", "victim"),
    [("sgp", "dynamic-directed-exponential", 1), ("dpsgd", "ring", 3)],
)
def test_survivors_finish_the_run_with_exact_weights(
    store_port: int, algorithm: str, graph: str, victim: int
) -> None:
    n = 4
    results = run_distributed(
        _train,
        n,
        (store_port, algorithm, graph, victim),
        init_timeout=None,
        timeout=120,
        allowed_exits=list(range(n)),
    )
    survivors = sorted((r for r in results if r is not None), key=lambda r: r["member"])
    assert [r["member"] for r in survivors] == [m for m in range(n) if m != victim]
    for r in survivors:
        assert len(r["losses"]) == STEPS  # every survivor finished every step
        assert r["changes"] == 1
        assert r["generation"] == Generation(1, tuple(m for m in range(n) if m != victim))
        assert np.isfinite(r["losses"]).all() and r["losses"][-1] < r["losses"][0]
    # the weights the survivors settled with are the numpy model's, exactly
    records: list[RankRecord] = []
    for member in range(n):
        if member == victim:
            records.append(RankRecord(completed=KILL_AT, alive=False))
        else:
            records.append(next(r["record"] for r in survivors if r["member"] == member))
    model = simulate_generation(topology_at(graph, n), np.zeros(n), records)
    for r in survivors:
        if algorithm == "sgp":
            assert r["settled_weight"] == pytest.approx(model.weights[r["member"]], abs=1e-12)
        else:
            assert r["settled_weight"] == 1.0  # push-pull carries no weight
    if algorithm == "sgp":
        total = sum(r["settled_weight"] for r in survivors) + model.lost_weight
        assert total == pytest.approx(n, abs=1e-12)


def _refused(rank: int, n: int, algorithm: str, extra: dict[str, Any]) -> str:
    store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False)
    ft = FaultTolerance(store, world_size=1)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError) as caught:
        make_data_parallel(algorithm, model, opt, fault_tolerance=ft, **extra)
    return str(caught.value)


@pytest.mark.parametrize(
    ("algorithm", "extra", "match"),
    [
        ("ar", {}, "AR-SGD all-reduces over every rank"),
        ("osgp", {}, "'osgp' cannot survive a lost rank yet"),
        ("adpsgd", {}, "'adpsgd' cannot survive a lost rank yet"),
        ("sgp", {"global_average_every": 5}, "does not combine with global_average_every"),
        ("sgp", {"compression": "int8"}, "does not support compression"),
        ("dpsgd", {"buffers": "broadcast"}, "does not combine with buffers='broadcast'"),
    ],
)
def test_what_cannot_survive_a_loss_is_refused_at_construction(
    algorithm: str, extra: dict[str, Any], match: str
) -> None:
    (message,) = run_distributed(_refused, 1, (algorithm, extra))
    assert match in message


def test_fault_tolerance_settings_are_checked() -> None:
    store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False)
    with pytest.raises(ValueError, match="backend must be 'gloo'"):
        FaultTolerance(store, world_size=2, backend="nccl")
    with pytest.raises(ValueError, match="world_size"):
        FaultTolerance(store, world_size=0)
    with pytest.raises(TypeError, match="fault_tolerance must be a FaultTolerance"):
        GossipOptions(fault_tolerance="yes")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"call FaultTolerance\.start"):
        _ = FaultTolerance(store, world_size=2).generation
