"""Training survives a SIGKILLed rank: the survivors settle, regroup and finish the run.

Plain training loops (``loss.backward(); opt.step()``) on 4 processes with a store served
by the test process; one rank kills itself mid-run. The survivors must finish every step,
agree on the new generation, and hold exactly the push-sum weight that gossip-topology's
numpy model of the recorded events gives (weights do not depend on the gradients).
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from ft_helpers import HOST, KILL_AT, STEPS, data
from gossip_comm.testing import run_distributed
from gossip_nn import FaultTolerance, make_data_parallel
from gossip_topology import Generation, RankRecord, simulate_generation, topology_at


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
    x, y = data(100 + (member or 0))
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
