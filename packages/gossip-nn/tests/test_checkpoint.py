"""Checkpoints: save mid-training, restore in fresh processes, continue identically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm.testing import run_distributed
from gossip_nn import make_data_parallel
from nn_oracles import loss, model, problem, topology

STEPS = 5


def _run(
    rank: int,
    n: int,
    algorithm: str,
    name: str,
    ckpt: str,
    mode: str,
    compression: str | None = None,
) -> Any:
    X, y, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    extra: dict[str, Any] = {"synch_freq": 1} if algorithm == "osgp" else {}
    if compression is not None:
        extra["compression"] = compression
    dp = make_data_parallel(algorithm, net, opt, topology=topology(name, n), **extra)

    def train(steps: int) -> list[np.ndarray]:
        out = []
        for _ in range(steps):
            loss(dp, X[rank], y[rank]).backward()
            opt.step()
            opt.zero_grad()
            out.append(net.weight.detach()[0].clone().numpy())
        return out

    def finish(steps: int) -> tuple[list[np.ndarray], float]:
        # the last steps, then close: OSGP leaves rounds in flight, and a rank that exits
        # before its peers have received them breaks their last step (CI saw it once)
        out, weight = train(steps), dp.ps_weight
        dp.close()
        return out, weight

    path = Path(ckpt) / f"rank{rank}.pt"
    if mode == "plain":  # never saved: what the saving run must equal
        train(STEPS)
        return finish(STEPS)
    if mode == "save":
        train(STEPS)
        state = {"model": dp.state_dict(), "optim": opt.state_dict()}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return finish(STEPS)
    state = torch.load(path, weights_only=False)
    dp.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    return finish(STEPS)


@pytest.mark.parametrize(
    # AR's checkpoint is DDP's module state; sgp-imagenet's preemption test resumes it
    ("algorithm", "name", "compression"),
    [
        ("sgp", "star", None),
        ("osgp", "ring", None),
        ("dpsgd", "ring", None),
        # public copies, the stochastic rounding's generators and OSGP's compressed
        # rounds in flight are in the checkpoint too
        ("sgp", "star", "int8:stochastic"),
        ("osgp", "ring", "topk:0.5"),
    ],
)
@pytest.mark.slow
def test_restored_run_continues_bit_for_bit(
    algorithm: str, name: str, compression: str | None, tmp_path: Path
) -> None:
    n = 3 if name == "star" else 4
    # a run that never saves: the saving run must equal it (OSGP saves its rounds in
    # flight instead of folding them early); the other algorithms have nothing in flight
    plain = (
        run_distributed(_run, n, (algorithm, name, str(tmp_path), "plain", compression))
        if algorithm == "osgp"
        else None
    )
    first = run_distributed(_run, n, (algorithm, name, str(tmp_path), "save", compression))
    again = run_distributed(_run, n, (algorithm, name, str(tmp_path), "load", compression))
    for r in range(n):
        if plain is not None:
            np.testing.assert_array_equal(np.array(plain[r][0]), np.array(first[r][0]))
            assert plain[r][1] == first[r][1]
        np.testing.assert_array_equal(np.array(first[r][0]), np.array(again[r][0]))
        assert first[r][1] == again[r][1]
    if algorithm == "sgp":  # a star is irregular: the weight really was restored
        assert any(first[r][1] != 1.0 for r in range(n))


def _wrong_algorithm(rank: int, n: int, ckpt: str) -> str:
    _, _, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    dp = make_data_parallel("dpsgd", net, opt, topology="ring")
    state = torch.load(Path(ckpt) / f"rank{rank}.pt", weights_only=False)
    try:
        dp.load_state_dict(state["model"])
    except ValueError as exc:
        return str(exc)
    return ""


@pytest.mark.slow
def test_loading_another_algorithms_checkpoint_is_refused(tmp_path: Path) -> None:
    run_distributed(_run, 3, ("sgp", "star", str(tmp_path), "save"))
    for msg in run_distributed(_wrong_algorithm, 3, (str(tmp_path),)):
        assert "checkpoint is from algorithm 'sgp'" in msg
