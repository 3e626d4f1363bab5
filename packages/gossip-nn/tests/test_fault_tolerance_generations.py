"""Generation changes outside a failed exchange: a world of one (gloo here, NCCL on a
GPU), a collective that fails, a lost store."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ft_helpers import HOST, KILL_AT, STEPS, data
from gossip_comm import StoreLostError
from gossip_comm.testing import run_distributed, store_server
from gossip_nn import FaultTolerance, make_data_parallel
from gossip_topology import Generation


def _alone(index: int, n: int, port: int, backend: str, algorithm: str) -> Any:
    """One member asks for a new generation mid-run: its groups are ended (NCCL's
    aborted) and rebuilt, and training and a collective go on in the new ones."""
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))
    device = torch.device("cuda" if backend == "nccl" else "cpu")
    if backend == "nccl":
        torch.cuda.set_device(0)
    ft = FaultTolerance(store, world_size=1, min_members=1, backend=backend)
    ft.start(timeout=60)
    first = dist.group.WORLD
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).double().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    dp = make_data_parallel(algorithm, model, opt, timeout=10.0, fault_tolerance=ft)
    x, y = (t.to(device) for t in data(100))
    losses = []
    for step in range(STEPS):
        if step == KILL_AT:
            ft.membership.request_end("test: a generation change on its own")
        loss = ((dp(x).squeeze(1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with dp.average_for_eval():  # an all-reduce in the new generation's group
        averaged = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    own = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    if algorithm == "adpsgd":
        dp.close()
    return {
        "losses": losses,
        "changes": [(c.ended, c.started, c.reason) for c in ft.history],
        "backend": dist.get_backend(),
        "new_group": dist.group.WORLD is not first,
        "averaged_is_own": bool(torch.equal(averaged, own)),
    }


def _check_alone(result: Any, backend: str) -> None:
    assert result["changes"] == [
        (Generation(0, (0,)), Generation(1, (0,)), "test: a generation change on its own")
    ]
    assert result["backend"] == backend and result["new_group"]
    assert len(result["losses"]) == STEPS and result["losses"][-1] < result["losses"][0]
    assert result["averaged_is_own"]  # the average of one member is itself


@pytest.mark.parametrize("algorithm", ["sgp", "adpsgd"])
def test_one_member_goes_through_a_generation_change(store_port: int, algorithm: str) -> None:
    [result] = run_distributed(
        _alone, 1, (store_port, "gloo", algorithm), init_timeout=None, timeout=60
    )
    _check_alone(result, "gloo")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algorithm", ["sgp", "adpsgd"])
def test_on_nccl_a_generation_change_aborts_the_group_and_builds_a_new_one(
    store_port: int, algorithm: str
) -> None:
    """A world of one on one GPU: the NCCL group is aborted and built again, gossip
    goes on over gloo, and the new group's all-reduce works."""
    [result] = run_distributed(
        _alone, 1, (store_port, "nccl", algorithm), init_timeout=None, timeout=120
    )
    _check_alone(result, "nccl")


def _collective_after_loss(index: int, n: int, port: int) -> Any:
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))
    ft = FaultTolerance(store, world_size=n)
    ft.start(timeout=60)
    member = ft.membership.member
    torch.manual_seed(0)
    model = nn.Linear(6, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    dp = make_data_parallel("sgp", model, opt, topology="ring", timeout=3.0, fault_tolerance=ft)
    x, y = data(100 + (member or 0))

    def train(steps: int) -> None:
        for _ in range(steps):
            loss = ((dp(x).squeeze(1) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    train(6)
    if member == n - 1:  # gone between training and the application's collective
        os.kill(os.getpid(), signal.SIGKILL)
    failures = 0
    while True:  # the application's evaluation: an all-reduce, run again if it fails
        total = torch.tensor([float(member or 0) + 1.0], dtype=torch.float64)
        try:
            dist.all_reduce(total)
            break
        except RuntimeError as err:
            failures += 1
            dp.recover(err)
    train(6)  # and gossip goes on in the new generation
    return {"member": member, "total": float(total), "failures": failures,
            "generation": ft.generation, "weight": dp.ps_weight}  # fmt: skip


def test_a_collective_that_fails_moves_the_survivors_to_the_next_generation(
    store_port: int,
) -> None:
    n = 4
    results = run_distributed(
        _collective_after_loss, n, (store_port,), init_timeout=None, timeout=120,
        allowed_exits=list(range(n)),
    )  # fmt: skip
    survivors = sorted((r for r in results if r is not None), key=lambda r: r["member"])
    assert [r["member"] for r in survivors] == [0, 1, 2]
    for r in survivors:
        assert r["failures"] == 1
        assert r["total"] == 1.0 + 2.0 + 3.0  # the survivors' sum, in the new group
        assert r["generation"] == Generation(1, (0, 1, 2))
    # no gossip was in flight: the survivors keep exactly the mass they held
    assert sum(r["weight"] for r in survivors) == pytest.approx(3.0, abs=1e-12)


def _recover_without_fault_tolerance(rank: int, n: int) -> str:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dp = make_data_parallel("sgp", model, opt, topology="ring")
    with pytest.raises(RuntimeError, match="a collective failed here"):
        dp.recover(RuntimeError("a collective failed here"))
    return "raised"


def test_recover_without_fault_tolerance_raises_the_error_again() -> None:
    assert run_distributed(_recover_without_fault_tolerance, 2) == ["raised", "raised"]


def _coordinator_lost(index: int, n: int, port: int) -> str:
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))
    ft = FaultTolerance(store, world_size=n)
    ft.start(timeout=60)
    torch.manual_seed(0)
    model = nn.Linear(6, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    dp = make_data_parallel("sgp", model, opt, timeout=3.0, fault_tolerance=ft)
    x, y = data(7)
    while True:  # train until the store is gone: the next step says so
        loss = ((dp(x).squeeze(1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        try:
            opt.step()
        except StoreLostError as err:
            return str(err)


def test_losing_the_coordinator_stops_every_rank_with_a_clear_error() -> None:
    with store_server(lost_after=6.0) as port:
        messages = run_distributed(_coordinator_lost, 3, (port,), init_timeout=None, timeout=90)
    for text in messages:
        assert "the membership store did not answer" in text
