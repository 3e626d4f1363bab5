"""Broken and mismatched checkpoints through the real ``sgp-imagenet train`` command
(``nox -s faults``): 2 ranks under torchrun."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gossip_comm.testing import run_torchrun
from sgp_imagenet.checkpoint import checkpoint_path, load_checkpoint, previous_path

pytestmark = pytest.mark.faults

SCRIPT = Path(sys.executable).parent / "sgp-imagenet"


def _train(tmp: Path, epochs: int, *extra: str) -> tuple[int, str, str]:
    args = [
        "--standalone", "--nproc-per-node=2", "--no-python", str(SCRIPT), "train",
        "--algorithm", "sgp", "--dataset", "digits", "--arch", "small-cnn",
        "--batch-size", "16", "--epochs", str(epochs), "--max-iters-per-epoch", "6",
        "--workers", "0", "--checkpoint-all", "--checkpoint-every", "4",
        "--checkpoint-dir", str(tmp / "ckpt"), "--progress", "lines", "--no-tensorboard",
        *extra,
    ]  # fmt: skip
    done = run_torchrun(args, tmp, timeout=240)
    return done.returncode, done.stdout, done.stderr


def test_resume_skips_a_truncated_newest_checkpoint_and_refuses_a_mismatch(
    tmp_path: Path,
) -> None:
    code, out, err = _train(tmp_path, 1)
    assert code == 0, err[-3000:]
    ckpt = tmp_path / "ckpt"
    newest = checkpoint_path(ckpt, 1)
    kept = load_checkpoint(previous_path(newest))["progress"]["global_itr"]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # rank 1's newest checkpoint, cut short

    code, out, err = _train(tmp_path, 2, "--arch", "resnet18")  # another model: refused
    assert code != 0
    said = f"sgp-imagenet: error: checkpoint {previous_path(checkpoint_path(ckpt, 0))}: "
    assert said + "holds a 'small-cnn' model; this run trains 'resnet18' (--arch)" in err
    assert "]: Traceback" not in err  # no worker's ([rankN]: ...); torchrun prints its own

    code, out, err = _train(tmp_path, 2)  # the same run: rank 1 falls back, both agree
    assert code == 0, err[-3000:]
    assert f"rank 1: --resume skips checkpoint {newest}: cannot be read" in out
    assert kept == 4  # saved every 4 iterations, and at the epoch's end (6)
    assert (
        "resuming from the ranks' own checkpoints (checkpoint.rank0.prev.pt): epoch 0, "
        f"iteration {kept}" in out
    )
    assert load_checkpoint(newest)["progress"]["global_itr"] == 12  # the run finished
