"""What fault tolerance refuses, and its settings, checked before anything runs."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ft_helpers import HOST
from gossip_comm.testing import run_distributed
from gossip_nn import FaultTolerance, GossipOptions, make_data_parallel


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
