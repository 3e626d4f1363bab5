"""Training survives a SIGKILLed rank: the survivors settle, regroup and finish the run.

Plain training loops (``loss.backward(); opt.step()``) on 4 processes with a store served
by the test process; one rank kills itself mid-run. The survivors must finish every step,
agree on the new generation, and hold exactly the push-sum weight that gossip-topology's
numpy model of the recorded events gives (weights do not depend on the gradients).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from gossip_comm import StoreLostError
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


def _train(
    index: int,
    n: int,
    port: int,
    algorithm: str,
    graph: str,
    victims: tuple[int, ...],
    dies_regrouping: int | None = None,
) -> Any:
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))
    ft = FaultTolerance(store, world_size=n)
    ft.start(timeout=60)
    member = ft.membership.member
    if member == dies_regrouping:  # checks in for the next generation, then dies
        ft.membership.init_process_group = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    dp = make_data_parallel(algorithm, model, opt, topology=graph, timeout=3.0, fault_tolerance=ft)
    x, y = _data(100 + (member or 0))
    losses = []
    for step in range(STEPS):
        if member in victims and step == KILL_AT:
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
        "history": [(c.ended, c.started, c.lost) for c in ft.history],
        "generation": ft.generation,
        "record": None if change is None else change.record,
        "settled_weight": None if change is None else change.weight,
        "exchanges": None if change is None else change.exchanges,
        "seconds": None if change is None else change.seconds,
        "weight": dp.ps_weight,
    }


@pytest.fixture
def store_port() -> Iterator[int]:
    with store_server() as port:
        yield port


@pytest.mark.parametrize(
    ("algorithm", "graph", "n", "victims"),
    [
        ("sgp", "dynamic-directed-exponential", 4, (1,)),
        ("dpsgd", "ring", 4, (3,)),
        ("sgp", "ring", 5, (1, 3)),  # two lost at the same step
    ],
)
def test_survivors_finish_the_run_with_exact_weights(
    store_port: int, algorithm: str, graph: str, n: int, victims: tuple[int, ...]
) -> None:
    results = run_distributed(
        _train,
        n,
        (store_port, algorithm, graph, victims),
        init_timeout=None,
        timeout=120,
        allowed_exits=list(range(n)),
    )
    alive = tuple(m for m in range(n) if m not in victims)
    survivors = sorted((r for r in results if r is not None), key=lambda r: r["member"])
    assert tuple(r["member"] for r in survivors) == alive
    for r in survivors:
        assert len(r["losses"]) == STEPS  # every survivor finished every step
        assert r["changes"] == 1
        assert r["generation"] == Generation(1, alive)
        assert np.isfinite(r["losses"]).all() and r["losses"][-1] < r["losses"][0]
    # the weights the survivors settled with are the numpy model's, exactly
    by_member = {r["member"]: r["record"] for r in survivors}
    records = [
        by_member[m] if m in alive else RankRecord(completed=KILL_AT, alive=False) for m in range(n)
    ]
    model = simulate_generation(topology_at(graph, n), np.zeros(n), records)
    for r in survivors:
        if algorithm == "sgp":
            assert r["settled_weight"] == pytest.approx(model.weights[r["member"]], abs=1e-12)
        else:
            assert r["settled_weight"] == 1.0  # push-pull carries no weight
    if algorithm == "sgp":
        total = sum(r["settled_weight"] for r in survivors) + model.lost_weight
        assert total == pytest.approx(n, abs=1e-12)


@pytest.mark.parametrize("victim", [1, 2])
def test_osgp_settles_its_rounds_in_flight_exactly(store_port: int, victim: int) -> None:
    n, graph = 4, "dynamic-directed-exponential"
    results = run_distributed(
        _train, n, (store_port, "osgp", graph, (victim,)), init_timeout=None, timeout=120,
        allowed_exits=list(range(n)),
    )  # fmt: skip
    alive = tuple(m for m in range(n) if m != victim)
    survivors = {r["member"]: r for r in results if r is not None}
    assert tuple(sorted(survivors)) == alive
    topology = topology_at(graph, n)
    for r in survivors.values():
        assert len(r["losses"]) == STEPS and r["generation"] == Generation(1, alive)
        assert np.isfinite(r["losses"]).all() and r["losses"][-1] < r["losses"][0]
        # OSGP with synch_freq 0 on a 1-peer regular graph: every weight is exactly 1
        # until the loss, and a rank holds 1/2 between steps with one round in flight.
        # Settling it gives back 1/2 for a share that did not leave and adds 1/2 for a
        # message that came in; nothing else may change the weight.
        [(step, returned, received)] = r["exchanges"]
        assert r["settled_weight"] == 0.5 * (1 + len(returned) + len(received))
    # each message of a round in flight between two survivors is counted exactly once:
    # added by its receiver (at settlement, or folded earlier by a receiver a step ahead)
    # or given back to its sender (whose receiver never posted that step)
    settled = {m: r["exchanges"][0] for m, r in survivors.items()}
    for i, (step, returned, _) in settled.items():
        for j in topology.out_peers(i, step):
            if j == victim:
                continue
            j_step, _, j_received = settled[j]
            if j_step == step:
                assert (j in returned) != (i in j_received), (i, j, step)
            else:  # j a step ahead folded it; j a step behind never posted it
                assert abs(j_step - step) == 1 and (j in returned) == (j_step < step)


def test_a_member_lost_while_the_next_group_forms_is_left_behind_too(store_port: int) -> None:
    # member 1 dies at step 8; member 3 checks in for generation 1 and dies before its
    # group forms: generation 1 never gossips, and the others go on in generation 2
    n = 5
    results = run_distributed(
        _train,
        n,
        (store_port, "sgp", "ring", (1,), 3),
        init_timeout=None,
        timeout=150,
        allowed_exits=list(range(n)),
    )
    survivors = sorted((r for r in results if r is not None), key=lambda r: r["member"])
    assert [r["member"] for r in survivors] == [0, 2, 4]
    for r in survivors:
        assert len(r["losses"]) == STEPS
        assert np.isfinite(r["losses"]).all() and r["losses"][-1] < r["losses"][0]
        assert r["generation"] == Generation(2, (0, 2, 4))
        assert r["history"] == [
            (Generation(0, (0, 1, 2, 3, 4)), Generation(2, (0, 2, 4)), (1, 3)),
        ]


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
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()  # noqa: E731
    initial, added = flat(), 0.0
    x, y = _data(100 + (member or 0))
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
    x, y = (t.to(device) for t in _data(100))
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
    x, y = _data(100 + (ft.membership.member or 0))
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


def _collective_after_loss(index: int, n: int, port: int) -> Any:
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))
    ft = FaultTolerance(store, world_size=n)
    ft.start(timeout=60)
    member = ft.membership.member
    torch.manual_seed(0)
    model = nn.Linear(6, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    dp = make_data_parallel("sgp", model, opt, topology="ring", timeout=3.0, fault_tolerance=ft)
    x, y = _data(100 + (member or 0))

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
    x, y = _data(7)
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
        ("adpsgd", {"global_average_every": 5}, "does not combine with global_average_every"),
        ("osgp", {"allreduce_warmup_steps": 3}, "does not combine with allreduce_warmup_steps"),
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
    with pytest.raises(ValueError, match="backend must be 'gloo' or 'nccl'"):
        FaultTolerance(store, world_size=2, backend="mpi")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend='nccl' needs a CUDA device"):
            FaultTolerance(store, world_size=2, backend="nccl")
    with pytest.raises(ValueError, match="world_size"):
        FaultTolerance(store, world_size=0)
    with pytest.raises(TypeError, match="fault_tolerance must be a FaultTolerance"):
        GossipOptions(fault_tolerance="yes")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"call FaultTolerance\.start"):
        _ = FaultTolerance(store, world_size=2).generation


def test_nccl_errors_are_made_to_end_the_communicator_not_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gossip_nn.fault_tolerance import _survivable_nccl

    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    monkeypatch.delenv("TORCH_NCCL_BLOCKING_WAIT", raising=False)
    _survivable_nccl()
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "2"  # abort the communicator
    assert os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "1"  # a timeout raises in the caller
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")  # torch's default
    with pytest.raises(ValueError, match="ASYNC_ERROR_HANDLING=3 ends the process"):
        _survivable_nccl()


def test_a_command_line_can_check_fault_tolerance_before_any_store_exists() -> None:
    GossipOptions().check_fault_tolerance("sgp")  # nothing planned, nothing to refuse
    GossipOptions().check_fault_tolerance("dpsgd", planned=True)
    with pytest.raises(ValueError, match="does not combine with compression"):
        GossipOptions(compression="int8").check_fault_tolerance("sgp", planned=True)
    GossipOptions().check_fault_tolerance("osgp", planned=True)
    GossipOptions().check_fault_tolerance("adpsgd", planned=True)
    with pytest.raises(ValueError, match="AR-SGD all-reduces over every rank"):
        GossipOptions().check_fault_tolerance("ar", planned=True)


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
