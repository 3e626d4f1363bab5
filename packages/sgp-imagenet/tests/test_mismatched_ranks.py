"""Ranks started with different flags or models: every rank stops at start-up with one
line naming the difference (``nox -s faults``: two real processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

SCRIPT = Path(sys.executable).parent / "sgp-imagenet"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("flag", "values", "said"),
    [
        ("--lr", ("0.1", "0.2"), "ranks disagree on the flag --lr: rank 0: '0.1'; rank 1: '0.2'"),
        ("--algorithm", ("sgp", "dpsgd"),
         "ranks disagree on the algorithm: rank 0: 'sgp'; rank 1: 'dpsgd'"),
        ("--arch", ("small-cnn", "resnet18"), "ranks disagree on the model structure: "),
    ],
)  # fmt: skip
def test_ranks_started_differently_each_stop_with_one_line(
    tmp_path: Path, flag: str, values: tuple[str, str], said: str
) -> None:
    port = _free_port()
    procs = []
    for rank, value in enumerate(values):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        argv = [str(SCRIPT), "train", "--dataset", "digits", "--arch", "small-cnn",
                "--epochs", "1", "--max-iters-per-epoch", "2", "--workers", "0",
                "--no-tensorboard", "--progress", "off", flag, value]  # fmt: skip
        procs.append(subprocess.Popen(argv, env=env, cwd=tmp_path, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err[-2000:]
        errors = [ln for ln in err.splitlines() if ln.startswith("sgp-imagenet: error:")]
        assert len(errors) == 1 and errors[0].startswith(f"sgp-imagenet: error: {said}"), err
        assert "Traceback" not in err
        assert "epoch 0" not in out  # stopped before training
