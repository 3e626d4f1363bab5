"""Preemption end to end: a signal mid-epoch, a checkpoint on every rank, a requeue, and a
resumed run that ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gossip_comm.testing import run_torchrun
from sgp_imagenet.preempt import EXIT_PREEMPTED, Preemption, requeue

SCRIPT = Path(sys.executable).parent / "sgp-imagenet"
EPOCHS, PER_EPOCH = 2, 6


def _train(
    tmp: Path, ckpt: str, algorithm: str, env: dict[str, str] | None = None, *extra: str
) -> Any:
    args = [
        "--standalone", "--nproc-per-node=2", "--no-python", str(SCRIPT), "train",
        "--algorithm", algorithm, "--dataset", "digits", "--arch", "small-cnn",
        "--batch-size", "16", "--epochs", str(EPOCHS), "--max-iters-per-epoch", str(PER_EPOCH),
        "--workers", "0", "--warmup-epochs", "0.5", "--lr", "0.4", "--seed", "3",
        "--checkpoint-all", "--checkpoint-dir", str(tmp / ckpt), "--print-freq", "1",
        "--progress", "lines", "--no-tensorboard",
        *(["--synch-freq", "1"] if algorithm == "osgp" else []), *extra,
    ]  # fmt: skip
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return run_torchrun(args, tmp, timeout=300)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def _assert_same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.faults  # a real run killed or stopped: nox -s faults
@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        ("ar", ()),
        ("sgp", ()),
        ("osgp", ()),
        ("dpsgd", ()),
        # public copies, warm starts and compressed rounds in flight resume bit for bit
        ("osgp", ("--compression", "lowrank:2")),
    ],
    ids=["ar", "sgp", "osgp", "dpsgd", "osgp-lowrank"],
)
def test_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(
    algorithm: str, extra: tuple[str, ...], tmp_path: Path
) -> None:
    whole = _train(tmp_path, "whole", algorithm, None, *extra)
    assert whole.returncode == 0, whole.stderr[-3000:]

    # rank 1 alone receives SIGTERM after global iteration 9 = epoch 1, iteration 3
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {
        "SGP_IMAGENET_TEST_SIGNAL": "1:9:SIGTERM",
        "SLURM_JOB_ID": "4242",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    stopped = _train(tmp_path, "split", algorithm, env, *extra)
    assert stopped.returncode != 0  # 75 from each worker; torchrun reports a failure
    assert f"exitcode  : {EXIT_PREEMPTED}" in stopped.stderr or "75" in stopped.stderr
    assert "rank 1 caught SIGTERM" in stopped.stderr
    assert "preemption checkpoint at epoch 1, iteration 3" in stopped.stdout
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    for rank in (0, 1):  # both ranks stopped after the same iteration
        saved = _load(tmp_path / "split" / f"checkpoint.rank{rank}.pt")
        assert saved["progress"] == {"epoch": 1, "itr": 3, "global_itr": 9}
        assert saved["kind"] == "rank"
        if algorithm == "osgp":  # rounds were in flight and were saved, not folded in
            assert len(saved["model"]["_extra_state"]["in_flight"]) == 2
        if extra:  # and each gossiper's public copies with them
            gossip = saved["model"]["_extra_state"]["gossip"]
            assert all(g["public_out"] and g["public_in"] for g in gossip)

    resumed = _train(tmp_path, "split", algorithm, None, *extra)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the ranks' own checkpoints" in resumed.stdout
    assert "epoch 1 [4/6]" in resumed.stdout and "epoch 1 [3/6]" not in resumed.stdout
    for rank in (0, 1):
        a = _load(tmp_path / "whole" / f"checkpoint.rank{rank}.pt")
        b = _load(tmp_path / "split" / f"checkpoint.rank{rank}.pt")
        assert a["progress"] == b["progress"] == {"epoch": 2, "itr": 0, "global_itr": 12}
        _assert_same(a["model"], b["model"], f"rank {rank} model")
        _assert_same(a["optimizer"], b["optimizer"], f"rank {rank} optimizer")


@pytest.mark.faults  # a real run killed or stopped: nox -s faults
def test_adpsgd_ranks_agree_through_the_store_and_resume(tmp_path: Path) -> None:
    # rank 0 alone is signalled after its 7th iteration; the ranks agree every 2 local
    # iterations (through the store, so gossip in flight is never blocked) and all stop
    # after their 8th: epoch 1, iteration 2
    every = ("--preempt-check-every", "2")
    stopped = _train(tmp_path, "ck", "adpsgd", {"SGP_IMAGENET_TEST_SIGNAL": "0:7:SIGUSR1"}, *every)
    assert stopped.returncode != 0
    assert "rank 0 caught SIGUSR1" in stopped.stderr
    assert "preemption checkpoint at epoch 1, iteration 2" in stopped.stdout
    for rank in (0, 1):
        saved = _load(tmp_path / "ck" / f"checkpoint.rank{rank}.pt")
        assert saved["progress"] == {"epoch": 1, "itr": 2, "global_itr": 8}
    resumed = _train(tmp_path, "ck", "adpsgd", None, *every)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the ranks' own checkpoints" in resumed.stdout
    assert "epoch 1 [3/6]" in resumed.stdout and "epoch 1 [2/6]" not in resumed.stdout
    final = _load(tmp_path / "ck" / "checkpoint.rank0.pt")
    assert final["progress"] == {"epoch": EPOCHS, "itr": 0, "global_itr": EPOCHS * PER_EPOCH}


def test_preemption_records_the_first_signal_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with Preemption() as preempt:
        assert preempt.received is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert preempt.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before


def test_requeue_outside_slurm_without_scontrol_and_when_it_fails(tmp_path: Path) -> None:
    assert "not under SLURM" in requeue({})
    assert "scontrol not found" in requeue({"SLURM_JOB_ID": "7", "PATH": str(tmp_path)})
    failing = tmp_path / "scontrol"
    failing.write_text("#!/bin/sh\necho 'Invalid job id' >&2\nexit 1\n")
    failing.chmod(0o755)
    note = requeue({"SLURM_JOB_ID": "7", "PATH": str(tmp_path)})
    assert note == "SLURM job 7: scontrol requeue exited 1 (Invalid job id)"
