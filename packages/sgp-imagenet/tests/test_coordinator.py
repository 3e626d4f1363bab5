"""``sgp-imagenet coordinator``: serves the membership store and logs each generation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gossip_comm.testing import run_distributed
from gossip_nn import FaultTolerance, make_data_parallel
from gossip_topology import Generation
from sgp_imagenet.cli import main
from sgp_imagenet.coordinator import describe

SCRIPT = Path(sys.executable).parent / "sgp-imagenet"


def test_describe_names_who_left_and_who_joined() -> None:
    g0, g1 = Generation(0, (0, 1, 2, 3)), Generation(1, (0, 1, 3, 4))
    assert describe(None, g0) == "generation 0: 4 member(s) [0, 1, 2, 3]"
    assert describe(g0, g1) == "generation 1: 4 member(s) [0, 1, 3, 4] (lost [2], joined [4])"
    assert describe(g0, Generation(1, (0, 1, 2))) == (
        "generation 1: 3 member(s) [0, 1, 2] (lost [3])"
    )


def _worker(index: int, n: int, port: int) -> Any:
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
    ft = FaultTolerance(store, world_size=n)
    ft.start(timeout=60)
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    dp = make_data_parallel("sgp", model, opt, topology="ring", timeout=3.0, fault_tolerance=ft)
    x = torch.randn(16, 4, dtype=torch.float64)
    for step in range(12):
        if ft.membership.member == 2 and step == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        loss = (dp(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ft.generation


def test_the_coordinator_serves_a_job_and_logs_its_generations() -> None:
    coordinator = subprocess.Popen(
        [str(SCRIPT), "coordinator", "--port", "0", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert coordinator.stdout is not None
        first = coordinator.stdout.readline()
        assert first.startswith("coordinator: serving the membership store on 127.0.0.1:")
        port = int(first.split("127.0.0.1:")[1].split()[0])
        results = run_distributed(
            _worker, 3, (port,), init_timeout=None, timeout=120, allowed_exits=[0, 1, 2]
        )
        assert [g for g in results if g is not None] == [Generation(1, (0, 1))] * 2
    finally:
        coordinator.send_signal(signal.SIGTERM)
        out, _ = coordinator.communicate(timeout=30)
    assert coordinator.returncode == 0
    assert out.splitlines() == [
        "coordinator: generation 0: 3 member(s) [0, 1, 2]",
        "coordinator: generation 1: 2 member(s) [0, 1] (lost [2])",
        "coordinator: stopped",
    ]


def test_a_bad_port_is_a_usage_error(capsys: Any) -> None:
    assert main(["coordinator", "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err
