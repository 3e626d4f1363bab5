"""Which checkpoint the ranks resume from: they agree, and never mix iterations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossip_comm.testing import run_distributed
from sgp_imagenet.checkpoint import CheckpointError, checkpoint_path, choose_resume, save_atomic


def _write(directory: Path, rank: int | None, global_itr: int) -> None:
    state = {"kind": "rank" if rank is not None else "average", "model": {},
             "progress": {"epoch": 0, "itr": global_itr, "global_itr": global_itr}}  # fmt: skip
    save_atomic(state, checkpoint_path(directory, rank))


def _choose(rank: int, n: int, directory: str, resume: str) -> Any:
    try:
        found = choose_resume(resume, directory, rank)
    except CheckpointError as exc:  # the files' contents: the command exits 1
        return f"checkpoint error: {exc}"
    except ValueError as exc:  # the command line: exits 2
        return f"error: {exc}"
    if found is None:
        return None
    return found.path.name, found.state["progress"]["global_itr"]


def _case(tmp: Path, own: list[int | None], average: int | None, resume: str = "auto") -> Any:
    for rank, itr in enumerate(own):
        if itr is not None:
            _write(tmp, rank, itr)
    if average is not None:
        _write(tmp, None, average)
    return run_distributed(_choose, 2, (str(tmp), resume))


@pytest.mark.slow
def test_the_ranks_agree_on_what_to_resume_from(tmp_path: Path) -> None:
    # each case in its own directory: (own per rank, average) -> what each rank loads
    assert _case(tmp_path / "a", [None, None], None) == [None, None]
    assert _case(tmp_path / "b", [30, 30], 20) == [
        ("checkpoint.rank0.pt", 30),
        ("checkpoint.rank1.pt", 30),
    ]
    # a newer average wins over older per-rank files (a preemption, then epoch saves)
    assert _case(tmp_path / "c", [30, 30], 40) == [("checkpoint.pt", 40)] * 2
    # rank 1 lacks its file: the average, when there is one ...
    assert _case(tmp_path / "d", [30, None], 20) == [("checkpoint.pt", 20)] * 2
    # ... else a clear error rather than ranks starting from different states
    errors = _case(tmp_path / "e", [30, 25], None)
    for message in errors:
        assert message.startswith(f"checkpoint error: checkpoint {tmp_path / 'e'}: ")
        assert "not one consistent state" in message
        assert "rank 0: 30, rank 1: 25" in message and "--resume none" in message
    assert _case(tmp_path / "e", [30, 25], None, resume="none") == [None, None]
    empty = tmp_path / "empty"
    empty.mkdir()
    for message in _case(tmp_path / "g", [None, None], None, resume=str(empty)):
        assert message == f"error: --resume: no checkpoint.pt or checkpoint.rank*.pt in {empty}"
    explicit = str(tmp_path / "b" / "checkpoint.pt")
    assert _case(tmp_path / "f", [None, None], None, resume=explicit) == [("checkpoint.pt", 20)] * 2
