"""Broken checkpoints: each refused with the file named and what is wrong; ``--resume
auto`` skips an unreadable newest one; a save killed mid-write leaves nothing to pick up."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from gossip_comm.testing import run_distributed
from sgp_imagenet.checkpoint import (
    FORMAT,
    CheckpointError,
    check_compatible,
    checkpoint_path,
    choose_resume,
    load_checkpoint,
    previous_path,
    save_atomic,
)


def _state(global_itr: int, kind: str = "rank", **args: Any) -> dict[str, Any]:
    return {"kind": kind, "model": {"w": torch.full((4,), float(global_itr))},
            "progress": {"epoch": 0, "itr": global_itr, "global_itr": global_itr},
            "world_size": 2, "args": {"arch": "small-cnn", "algorithm": "sgp", **args}}  # fmt: skip


def _problem(path: Path) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert caught.value.path == path
    assert str(caught.value).startswith(f"checkpoint {path}: ")
    return caught.value.problem


def test_each_broken_file_is_named_with_what_is_wrong(tmp_path: Path) -> None:
    good = save_atomic(_state(10), tmp_path / "good.pt")
    data = good.read_bytes()
    (empty := tmp_path / "empty.pt").write_bytes(b"")
    (zeros := tmp_path / "zeros.pt").write_bytes(bytes(len(data)))
    (cut := tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (junk := tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all" * 10)
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    newer = tmp_path / "newer.pt"
    torch.save({**_state(10), "format": FORMAT + 1}, newer)
    assert _problem(empty) == "the file is empty"
    assert _problem(zeros).startswith("the file holds only zero bytes (its first ")
    assert _problem(cut).startswith("cannot be read: truncated or corrupt (")
    assert _problem(junk).startswith("cannot be read: truncated or corrupt (")
    assert _problem(other) == "is not an sgp-imagenet checkpoint"
    assert _problem(newer) == (
        f"was written in checkpoint format {FORMAT + 1}, newer than this sgp-imagenet reads "
        f"(up to {FORMAT}): upgrade sgp-imagenet to resume from it"
    )
    assert load_checkpoint(good)["format"] == FORMAT


def test_a_checkpoint_this_run_cannot_continue_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.rank0.pt"
    run = {"arch": "small-cnn", "algorithm": "sgp", "world_size": 2}
    check_compatible(_state(5), path, **run)  # the same run: accepted
    with pytest.raises(CheckpointError, match="holds a 'resnet18' model; this run trains"):
        check_compatible(_state(5, arch="resnet18"), path, **run)
    with pytest.raises(CheckpointError, match="holds a rank's 'osgp' state; this run is 'sgp'"):
        check_compatible(_state(5, algorithm="osgp"), path, **run)
    with pytest.raises(CheckpointError, match="job of 2 ranks; this job has 4"):
        check_compatible(_state(5), path, **{**run, "world_size": 4})
    # the network average continues under any algorithm and world size, not another model
    average = _state(5, kind="average", algorithm="osgp")
    check_compatible(average, path, **{**run, "world_size": 4})
    with pytest.raises(CheckpointError, match="'resnet18' model"):
        check_compatible(_state(5, kind="average", arch="resnet18"), path, **run)


def test_saving_keeps_the_checkpoint_it_replaces(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path, 0)
    save_atomic(_state(10), path)
    assert not previous_path(path).exists()
    save_atomic(_state(20), path)
    save_atomic(_state(30), path)
    assert previous_path(path).name == "checkpoint.rank0.prev.pt"
    assert load_checkpoint(path)["progress"]["global_itr"] == 30
    assert load_checkpoint(previous_path(path))["progress"]["global_itr"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.rank0.prev.pt", "checkpoint.rank0.pt"
    ]  # fmt: skip


_SAVE_BIG = """
import sys, torch
from sgp_imagenet.checkpoint import save_atomic
state = {"kind": "rank", "model": {"w": torch.ones(150_000_000)},
         "progress": {"epoch": 0, "itr": 99, "global_itr": 99}}
save_atomic(state, sys.argv[1])
"""


def test_a_save_killed_mid_write_leaves_the_last_good_checkpoint(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path, 0)
    save_atomic(_state(10), path)
    save_atomic(_state(20), path)
    tmp = path.with_name(path.name + ".tmp")
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_BIG, str(path)])
    deadline = time.monotonic() + 120
    while not (tmp.exists() and tmp.stat().st_size > 0):  # 600 MB on its way
        assert proc.poll() is None and time.monotonic() < deadline, "the save never began"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tmp.exists(), "killed too late: the write had finished"
    # the checkpoint names still hold the last good checkpoints, whole; the partial file
    # is under a name nothing resumes from
    assert load_checkpoint(path)["progress"]["global_itr"] == 20
    assert load_checkpoint(previous_path(path))["progress"]["global_itr"] == 10
    found = run_distributed(_choose, 1, (str(tmp_path), "auto"))
    assert found == [("checkpoint.rank0.pt", 20)]


def _choose(rank: int, n: int, directory: str, resume: str) -> Any:
    try:
        found = choose_resume(resume, directory, rank)
    except CheckpointError as exc:  # the files' contents: the command exits 1
        return f"checkpoint error: {exc}"
    except ValueError as exc:  # the command line: exits 2
        return f"error: {exc}"
    return None if found is None else (found.path.name, found.state["progress"]["global_itr"])


def _choose_saying(rank: int, n: int, directory: str) -> tuple[Any, str]:
    """What ``_choose`` finds with ``--resume auto``, and what the rank printed."""
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        found = _choose(rank, n, directory, "auto")
    return found, said.getvalue()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.slow
def test_resume_auto_skips_an_unreadable_newest_checkpoint(tmp_path: Path) -> None:
    for rank in (0, 1):  # iterations 10 then 20 for each rank, and the average at 15
        save_atomic(_state(10), checkpoint_path(tmp_path, rank))
        save_atomic(_state(20), checkpoint_path(tmp_path, rank))
    save_atomic(_state(15, kind="average"), checkpoint_path(tmp_path, None))
    _truncate(checkpoint_path(tmp_path, 1))  # rank 1's newest is broken
    # rank 1 has 10 only: the newest state every rank can read is the average, at 15
    (found0, said0), (found1, said1) = run_distributed(_choose_saying, 2, (str(tmp_path),))
    assert found0 == found1 == ("checkpoint.pt", 15)
    skipped = f"sgp-imagenet: rank 1: --resume skips checkpoint {checkpoint_path(tmp_path, 1)}: "
    assert said1.startswith(skipped + "cannot be read: truncated or corrupt (") and said0 == ""
    checkpoint_path(tmp_path, None).unlink()  # without it: both ranks' iteration 10
    assert run_distributed(_choose, 2, (str(tmp_path), "auto")) == [
        ("checkpoint.rank0.prev.pt", 10), ("checkpoint.rank1.prev.pt", 10)
    ]  # fmt: skip
    for rank in (0, 1):  # nothing readable left: a clear error, not a fresh start
        newest = checkpoint_path(tmp_path, rank)
        for path in (newest, previous_path(newest)):
            path.write_bytes(b"")
    for message in run_distributed(_choose, 2, (str(tmp_path), "auto")):
        assert message.startswith(
            f"checkpoint error: checkpoint {tmp_path}: no checkpoint in it can be read"
        ), message
