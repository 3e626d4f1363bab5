"""AD-PSGD survives a SIGKILLed rank: every exchange between survivors counts on both
ends or neither, and a restarted process joins as a copy of its sponsor."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ft_helpers import HOST, KILL_AT, STEPS, data
from gossip_comm.testing import run_distributed
from gossip_nn import FaultTolerance, make_data_parallel
from gossip_topology import Generation


def _pairs(index: int, n: int, port: int, victim: int, joins: bool) -> Any:
    """AD-PSGD with integer-valued parameters and integer updates (lr = 0, and an
    integer step added by hand after each optimizer step, so that the models never
    agree): every value stays a dyadic rational, so float64 sums are exact until some
    50 halvings."""
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))

    def slow_hand_over() -> dict[str, Any]:  # as a large model's would be
        time.sleep(1.0)
        return {}

    ft = FaultTolerance(store, world_size=n - joins, extra_state=slow_hand_over)
    joiner = joins and index == n - 1
    if joiner:  # started again after the loss: it joins the survivors
        while not store.check(["test/lost"]):
            time.sleep(0.02)
        ft.start(join=True, timeout=60)
    else:
        ft.start(timeout=60)
    member = ft.membership.member
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    dp = make_data_parallel("adpsgd", model, opt, timeout=3.0, fault_tolerance=ft)
    if not joiner:  # models that differ (wrapping needs equal ones), integer-valued
        torch.manual_seed(member or 0)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randint(-4, 5, p.shape))
    topo, rank = dp.topology, dist.get_rank()  # the first generation's pairs (ranks
    first_passive = dp.is_passive  # are member ids in it)
    steps, world = range(topo.period), range(dist.get_world_size())
    asks = {a for a in world for t in steps if rank in topo.out_peers(a, t)}
    asked = {p for t in steps for p in topo.out_peers(rank, t)}
    partners = sorted(asks if dp.is_passive else asked)
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()  # noqa: E731
    initial, added = flat(), 0.0
    x, y = data(100 + (member or 0))
    g = torch.Generator().manual_seed(1000 + (member or 0))
    for step in range(ft.start_step, STEPS):
        if member == victim and step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        if ft.history and member == 0 and not store.check(["test/lost"]):
            store.set("test/lost", "1")
        loss = ((dp(x).squeeze(1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # this rank's own "update"
            for p in model.parameters():
                delta = torch.randint(-2, 3, p.shape, generator=g).double()
                p.add_(delta)
                added += float(delta.sum())
        time.sleep(0.01)  # steps the pace of an exchange: most find theirs home
    dp.close()
    return {
        "member": member,
        "joiner": joiner,
        "initial": float(initial.sum()),
        "final": float(flat().sum()),
        "added": added,
        "moved_from_lost": sum(c.moved_from_lost for c in ft.history),
        "settled": [dict(c.settled) for c in ft.history],
        "partners": partners,
        "first_passive": first_passive,
        "changes": [(c.ended, c.started, c.lost, c.joined) for c in ft.history],
        "seconds": [c.seconds for c in ft.history],
        "generation": ft.generation,
        "exchanges": dp.exchanges,
        "start": ft.start_step,
        "passive": dp.is_passive,
        "topology": dp.topology.name,
    }


@pytest.mark.parametrize("victim", [1, 2])  # an active, a passive
def test_adpsgd_survivors_keep_every_exchange_on_both_ends_or_neither(
    store_port: int, victim: int
) -> None:
    n = 4
    results = run_distributed(
        _pairs,
        n,
        (store_port, victim, False),
        init_timeout=None,
        timeout=120,
        allowed_exits=list(range(n)),
    )
    alive = tuple(m for m in range(n) if m != victim)
    survivors = sorted((r for r in results if r is not None), key=lambda r: r["member"])
    assert tuple(r["member"] for r in survivors) == alive
    for r in survivors:
        assert r["generation"] == Generation(1, alive)
        assert r["changes"] == [
            (Generation(0, tuple(range(n))), Generation(1, alive), (victim,), ())
        ]
        assert r["seconds"][0] <= 3.0 + 5.0  # the gossip timeout plus 5 s
        assert r["exchanges"] > 0
    # the survivors' sum moved only by their own updates and by what they took in from
    # the lost rank; an exchange between two survivors that counted on one end only
    # would move it by a half-difference of two models (of order 1 here). Values are
    # dyadic; only the bits lost after some 50 halvings round (1e-14 seen)
    before = sum(r["initial"] + r["added"] for r in survivors)
    after = sum(r["final"] - r["moved_from_lost"] for r in survivors)
    assert after == pytest.approx(before, abs=1e-9)
    # and each settle path ran as the events say: every active brought its exchange in
    # flight home, dropped it (its partner was lost) or had none; every passive served
    # each live partner until its goodbye, and found each lost partner lost
    actives = [r for r in survivors if not r["first_passive"]]
    for r in actives:
        (outcome,) = r["settled"][0].items()
        assert outcome[1] == 1 and outcome[0] in ("adopted", "dropped", "none")
    for r in (r for r in survivors if r["first_passive"]):
        live = [p for p in r["partners"] if p != victim]
        assert r["settled"][0] == {
            "goodbye": len(live), "lost": len(r["partners"]) - len(live), "interrupted": 0,
            "unserved": 0,
        }  # fmt: skip
    if victim == 2:  # a passive: an active whose request it was never answered dropped it
        assert any(r["settled"][0] == {"dropped": 1} for r in actives)
    else:  # an active: its passive partners found it lost
        assert sum(r["settled"][0].get("lost", 0) for r in survivors) >= 1


def test_adpsgd_a_restarted_process_joins_as_a_copy_of_its_sponsor(store_port: int) -> None:
    # five start; member 1 is lost; a sixth process joins the four survivors. At five
    # members the bipartite graph does not exist (EvenOddExponential instead), and the
    # joiner, rank 4, is passive: it must not answer before it holds its model
    n = 6
    results = run_distributed(
        _pairs,
        n,
        (store_port, 1, True),
        init_timeout=None,
        timeout=150,
        allowed_exits=list(range(n)),
    )
    finished = sorted((r for r in results if r is not None), key=lambda r: r["member"])
    assert [r["member"] for r in finished] == [0, 2, 3, 4, 5]
    joiner = next(r for r in finished if r["joiner"])
    assert joiner["changes"] == [] and 0 < joiner["start"] < STEPS
    assert joiner["passive"] and joiner["topology"] == "even-odd-exponential"
    for r in finished:
        assert r["generation"] == Generation(2, (0, 2, 3, 4, 5))
    assert all(len(r["changes"]) == 2 for r in finished if not r["joiner"])
    # the joiner starts as a copy of its sponsor's model (AD-PSGD has no weight to
    # split: the sum of the models grows by that copy, its "initial"); from then on
    # every exchange keeps the sum, and the loss took only the lost rank's share
    before = sum(r["initial"] + r["added"] for r in finished)
    after = sum(r["final"] - r["moved_from_lost"] for r in finished)
    assert after == pytest.approx(before, abs=1e-9)
