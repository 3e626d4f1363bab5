"""A rank whose model goes NaN, with --check-finite: the run stops with the sender named
before the value reaches a neighbour's model (``nox -s faults``: 4 ranks, torchrun)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from gossip_comm.testing import run_torchrun
from sgp_imagenet.run import POISON_HOOK

pytestmark = pytest.mark.faults

SCRIPT = Path(sys.executable).parent / "sgp-imagenet"


@pytest.mark.parametrize("algorithm", ["sgp", "dpsgd"])
def test_a_diverged_rank_is_named_by_the_rank_that_received_its_nan(
    tmp_path: Path, algorithm: str
) -> None:
    logs = tmp_path / "logs"
    args = [
        "--standalone", "--nproc-per-node=4", "--max-restarts=0", "--log-dir", str(logs),
        "--redirects", "3", "--no-python", str(SCRIPT), "train", "--algorithm", algorithm,
        "--check-finite", "--dataset", "digits", "--arch", "small-cnn", "--batch-size", "16",
        "--epochs", "2", "--max-iters-per-epoch", "6", "--workers", "0", "--gossip-timeout",
        "20", "--progress", "off", "--no-tensorboard",
    ]  # fmt: skip
    os.environ[POISON_HOOK] = "2:4"  # rank 2's model is NaN after iteration 4
    try:
        done = run_torchrun(args, tmp_path, timeout=240)
    finally:
        del os.environ[POISON_HOOK]
    assert done.returncode != 0
    errs = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    lines = {}
    for rank, err in errs.items():
        said = [ln for ln in err.splitlines() if ln.startswith(f"sgp-imagenet: rank {rank} ")]
        stopped = [ln for ln in said if " stopped at " in ln]
        assert len(stopped) == 1, err[-2000:]
        assert "Traceback" not in err
        lines[rank] = stopped[0]
    # a neighbour of rank 2 caught it, in a message, before mixing it in
    named = [r for r, ln in lines.items() if f": rank {r} received NaN or Inf from rank 2" in ln]
    assert named and 2 not in named, lines
    for rank, line in lines.items():
        assert "is lost" not in line, line  # nobody died: every rank says why it stopped
        if rank not in named:
            assert "it stopped after another rank did (rank " in line, line
            assert "received NaN or Inf from rank 2" in line, line
