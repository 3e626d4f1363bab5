"""A rank SIGKILLed under ``torchrun --max-restarts=1`` without --fault-tolerant: torchrun
restarts every worker, ``--resume auto`` finds the newest consistent checkpoints, and the
run ends as well as an undisturbed one (``nox -s faults``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from gossip_comm.testing import run_torchrun
from sgp_imagenet.checkpoint import checkpoint_path

pytestmark = pytest.mark.faults

SCRIPT = Path(sys.executable).parent / "sgp-imagenet"
N, EPOCHS, PER_EPOCH, EVERY = 4, 10, 20, 10


def _train(tmp: Path, restarts: int, hook: str | None = None) -> tuple[int, str, str]:
    args = [
        "--standalone", f"--nproc-per-node={N}", f"--max-restarts={restarts}", "--no-python",
        str(SCRIPT), "train", "--algorithm", "sgp", "--dataset", "digits",
        "--arch", "small-cnn", "--batch-size", "16", "--epochs", str(EPOCHS),
        "--max-iters-per-epoch", str(PER_EPOCH), "--lr-schedule", "8:0.1",
        "--warmup-epochs", "0", "--lr", "0.8", "--seed", "3", "--workers", "0",
        "--gossip-timeout", "20", "--checkpoint-all", "--checkpoint-every", str(EVERY),
        "--checkpoint-dir", str(tmp / "ckpt"), "--log-dir", str(tmp / "logs"),
        "--progress", "lines", "--print-freq", "20", "--no-tensorboard",
    ]  # fmt: skip
    if hook:
        os.environ["SGP_IMAGENET_TEST_SIGNAL"] = hook
    try:
        done = run_torchrun(args, tmp, timeout=400)
    finally:
        os.environ.pop("SGP_IMAGENET_TEST_SIGNAL", None)
    return done.returncode, done.stdout, done.stderr


def _final_top1(tmp: Path) -> float:
    summary = json.loads((tmp / "logs" / "summary.json").read_text())
    return float(summary["epochs"][-1]["average_top1"])


def test_torchrun_restarts_every_worker_from_the_newest_consistent_checkpoints(
    tmp_path: Path,
) -> None:
    calm, lossy = tmp_path / "calm", tmp_path / "lossy"
    calm.mkdir(), lossy.mkdir()
    code, _, err = _train(calm, 0)
    assert code == 0, err[-3000:]

    kill_at = EPOCHS * PER_EPOCH // 2 + EVERY // 2  # half-way between two checkpoints
    code, out, err = _train(lossy, 1, hook=f"2:{kill_at}:SIGKILL")
    assert code == 0, err[-3000:]  # torchrun restarted the job once, and it finished
    assert "rank 2 is lost (no heartbeat" in err  # the first attempt's survivors said so
    resumed = kill_at // EVERY * EVERY  # the newest checkpoint before the kill
    epoch, itr = divmod(resumed, PER_EPOCH)
    assert (
        f"resuming from the ranks' own checkpoints (checkpoint.rank0.pt): epoch {epoch}, "
        f"iteration {itr}"
    ) in out
    # push-sum keeps the ranks' total weight: the world size, after the resume too
    weights = [
        torch.load(checkpoint_path(lossy / "ckpt", r), weights_only=False)["model"]["_extra_state"][
            "ps_weight"
        ]
        for r in range(N)
    ]
    assert sum(weights) == pytest.approx(N, abs=1e-6)
    calm_top1, lossy_top1 = _final_top1(calm), _final_top1(lossy)
    print(f"final network-average top-1: undisturbed {calm_top1:.2f}%, restarted {lossy_top1:.2f}%")
    assert calm_top1 > 90.0
    assert abs(calm_top1 - lossy_top1) <= 1.0
