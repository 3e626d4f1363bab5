"""Ranks started differently are refused at construction, on every rank, naming the
difference: the algorithm, a gossip option, a package version, the model's structure."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from gossip_comm.testing import run_distributed
from gossip_nn import GossipOptions, check_same_setup, make_data_parallel
from gossip_nn.validate import setup_of


def _wrap(rank: int, n: int, case: str) -> Any:
    """Rank 2 differs from the others in ``case``; what each rank's construction raised."""
    torch.manual_seed(0)
    odd = rank == 2
    model = nn.Sequential(nn.Linear(4, 3 if odd and case == "model" else 2), nn.Linear(2, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    algorithm = "osgp" if odd and case == "algorithm" else "sgp"
    options: dict[str, Any] = {}
    if case == "topology":
        options["topology"] = "ring" if odd else "npeer-dynamic-directed-exponential"
    try:
        dp = make_data_parallel(algorithm, model, opt, **options)
    except ValueError as exc:
        return str(exc)
    dp.close()
    return "built"


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("algorithm", "ranks disagree on the algorithm: rank 0, 1, 3: 'sgp'; rank 2: 'osgp'"),
        ("topology", "ranks disagree on the option topology: rank 0, 1, 3: "
                     "\"'npeer-dynamic-directed-exponential'\"; rank 2: \"'ring'\""),
        ("model", "ranks disagree on the model structure: parameter or buffer 0 is rank 0, 1, "
                  "3: '0.weight (2, 4) float32'; rank 2: '0.weight (3, 4) float32'"),
    ],
)  # fmt: skip
def test_a_rank_started_differently_is_refused_on_every_rank(case: str, said: str) -> None:
    results = run_distributed(_wrap, 4, (case,), timeout=60)
    assert all(r.startswith(said) for r in results), results
    assert len(set(results)) == 1  # every rank says the same


def _versions(rank: int, n: int) -> Any:
    model = nn.Linear(2, 1)
    setup = setup_of("sgp", GossipOptions(), model)
    assert setup["torch version"] == importlib.metadata.version("torch")
    if rank == 1:  # as if another gossip-nn were installed on rank 1's host
        setup["gossip-nn version"] = "9.9.9"
    try:
        check_same_setup(dist.group.WORLD, setup, model)  # type: ignore[arg-type]
    except ValueError as exc:
        return str(exc)
    return "agreed"


def test_another_package_version_on_one_rank_is_named() -> None:
    results = run_distributed(_versions, 3, timeout=60)
    for text in results:
        assert text.startswith("ranks disagree on the gossip-nn version: rank 0, 2: '")
        assert "rank 1: '9.9.9'" in text


def _same(rank: int, n: int) -> Any:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    dp = make_data_parallel("dpsgd", model, torch.optim.SGD(model.parameters(), lr=0.1))
    dp.close()
    return "built"


def test_ranks_started_alike_pass() -> None:
    assert run_distributed(_same, 3, timeout=60) == ["built"] * 3
