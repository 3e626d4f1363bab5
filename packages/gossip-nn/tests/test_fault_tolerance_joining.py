"""A new or restarted process joins a running job: half of its sponsor's push-sum mass,
its optimizer state and step counts, sent once."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ft_helpers import HOST, STEPS, data
from gossip_comm.testing import run_distributed
from gossip_nn import FaultTolerance, make_data_parallel
from gossip_topology import Generation


def _join(index: int, n: int, port: int) -> Any:
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))
    at = [0]  # the application's position: the step in progress
    ft = FaultTolerance(
        store,
        world_size=n - 1,
        extra_state=lambda: {"sponsor": ft.membership.member, "step": at[0]},
    )
    joiner = index == n - 1
    if joiner:  # a process started later: it joins once the job has trained a while
        while not store.check(["test/trained"]):
            time.sleep(0.02)
        ft.start(join=True, timeout=60)
    else:
        ft.start(timeout=60)
    torch.manual_seed(123 if joiner else 0)  # the joiner's own start is replaced
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    dp = make_data_parallel("sgp", model, opt, topology="ring", timeout=3.0, fault_tolerance=ft)
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()  # noqa: E731
    initial, momentum, weight = flat(), len(opt.state), dp.ps_weight
    x, y = data(100 + (ft.membership.member or 0))
    snapshots = []
    for step in range(ft.start_step, STEPS):
        at[0] = step
        snapshots.append(flat())
        if ft.membership.member == 0 and step == 5:
            store.set("test/trained", "1")
        loss = ((dp(x).squeeze(1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {
        "member": ft.membership.member,
        "joiner": joiner,
        "start": ft.start_step,
        "initial": initial,
        "momentum": momentum,
        "snapshots": snapshots,
        "generation": ft.generation,
        "weight_after_change": ft.history[0].weight if ft.history else weight,
        "received": ft.received_state,
    }


def test_a_joiner_gets_half_of_its_sponsors_mass_and_trains_on(store_port: int) -> None:
    n = 4  # three start the job, a fourth joins it
    results = run_distributed(_join, n, (store_port,), init_timeout=None, timeout=120)
    by_member = {r["member"]: r for r in results}
    assert sorted(by_member) == [0, 1, 2, 3]
    joiner = next(r for r in results if r["joiner"])
    assert joiner["member"] == 3
    for r in results:
        assert r["generation"] == Generation(1, (0, 1, 2, 3))
    sponsor = by_member[Generation(1, (0, 1, 2, 3)).sponsors(Generation(0, (0, 1, 2)))[3]]
    # the joiner starts from its sponsor's model at a step boundary, with its momentum
    assert any(torch.equal(joiner["initial"], snap) for snap in sponsor["snapshots"])
    assert joiner["momentum"] > 0
    assert 5 <= joiner["start"] < STEPS and len(joiner["snapshots"]) == STEPS - joiner["start"]
    # the application's own state came along: its sponsor's step in progress, which
    # the joiner's first step is (or follows, if the sponsor's step had completed)
    received = joiner["received"]
    assert received["sponsor"] == sponsor["member"]
    assert joiner["start"] - received["step"] in (0, 1)
    assert all(r["received"] is None for r in results if not r["joiner"])
    # the sponsor's push-sum mass is split exactly in half; the members' sum is unchanged
    assert sponsor["weight_after_change"] == joiner["weight_after_change"]
    total = sum(r["weight_after_change"] for r in results)
    assert total == pytest.approx(n - 1, abs=1e-12)


def _joiner_payload_size(rank: int, n: int) -> tuple[int, int]:
    import pickle

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)])  # 16 views of one buffer
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dp = make_data_parallel("sgp", model, opt, topology="ring")
    state = dp._state_for_joiner()
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return len(pickle.dumps(state["module"])), model_bytes


def test_a_joiner_is_sent_the_model_once_not_once_per_parameter() -> None:
    # pickling a view writes its whole storage; the parameters are views of one buffer
    [(sent, model_bytes), _] = run_distributed(_joiner_payload_size, 2)
    assert model_bytes < sent < 1.2 * model_bytes
