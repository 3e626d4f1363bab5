"""Atomic checkpoints: a temporary file, fsync, then a rename, so a crash or a
preemption mid-save never leaves a half-written file where the last good one was."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "Resume",
    "check_resume",
    "checkpoint_path",
    "choose_resume",
    "load_checkpoint",
    "save_atomic",
]


def checkpoint_path(directory: str | Path, rank: int | None) -> Path:
    """``DIR/checkpoint.pt`` (the network average, rank 0) or ``DIR/checkpoint.rankR.pt``."""
    name = "checkpoint.pt" if rank is None else f"checkpoint.rank{rank}.pt"
    return Path(directory) / name


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
    return path


def check_resume(resume: str) -> Path | None:
    """Check ``--resume`` before any process group exists.

    Returns:
        The path of ``--resume`` when it names a file or a directory, ``None`` for
        ``auto`` and ``none``.

    Raises:
        ValueError: If the named path does not exist.
    """
    if resume in ("auto", "none"):
        return None
    path = Path(resume)
    if not path.exists():
        raise ValueError(f"--resume: no checkpoint at {path}")
    return path


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by `save_atomic` onto the CPU.

    Args:
        path: The file.
        mmap: Map the tensors from the file instead of reading them; a candidate that
            is only inspected then costs almost nothing.

    Raises:
        ValueError: If the file is not such a checkpoint.
    """
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    if not isinstance(state, dict) or "model" not in state or "progress" not in state:
        raise ValueError(f"{path} is not an sgp-imagenet checkpoint")
    return state


@dataclass(frozen=True)
class Resume:
    """What one rank resumes from: the path and its loaded checkpoint.

    Attributes:
        path: The checkpoint file.
        state: Its contents, as ``load_checkpoint`` returns them.
    """

    path: Path
    state: dict[str, Any]


def _progress(state: dict[str, Any] | None) -> int:
    return -1 if state is None else int(state["progress"]["global_itr"])


def choose_resume(resume: str, directory: str | Path | None, rank: int) -> Resume | None:
    """Agree across ranks on the checkpoint to resume from (a collective).

    With ``--resume auto`` (or a directory), every rank looks for its own checkpoint
    (``checkpoint.rankR.pt``, written by ``--checkpoint-all`` and by every preemption)
    and for the network average (``checkpoint.pt``). The ranks resume from their own
    checkpoints when every rank has one, they all belong to the same iteration and
    none is older than the average; otherwise from the
    average; otherwise they start fresh. An explicit file is loaded by every rank.

    Args:
        resume: ``--resume``: ``auto``, ``none``, a directory or a file.
        directory: ``--checkpoint-dir``.
        rank: This rank.

    Raises:
        ValueError: If an explicit path is missing, a file is not a checkpoint, or only
            an inconsistent set of per-rank checkpoints exists (the message lists them).
            A named directory must hold a checkpoint.
    """
    if resume == "none":
        return None
    named = check_resume(resume)
    if named is not None and not named.is_dir():
        return Resume(named, load_checkpoint(named))
    where = named or directory
    own = avg = None
    if where is not None:  # both candidates are mapped, not read: one is dropped
        own_path, avg_path = checkpoint_path(where, rank), checkpoint_path(where, None)
        own = load_checkpoint(own_path, mmap=True) if own_path.exists() else None
        avg = load_checkpoint(avg_path, mmap=True) if avg_path.exists() else None
    seen: list[tuple[int, int]] = [(-1, -1)] * dist.get_world_size()
    dist.all_gather_object(seen, (_progress(own), _progress(avg)))
    owns, avgs = [s[0] for s in seen], [s[1] for s in seen]
    consistent = min(owns) >= 0 and len(set(owns)) == 1
    if consistent and min(owns) >= max(avgs):
        assert own is not None and where is not None
        return Resume(checkpoint_path(where, rank), own)
    if max(avgs) >= 0:
        if avg is None:
            raise ValueError(
                f"--resume: rank {rank} cannot read {checkpoint_path(where or '.', None)}, "
                "which other ranks found; the checkpoint directory must be shared"
            )
        return Resume(checkpoint_path(where or ".", None), avg)
    if max(owns) >= 0:
        found = ", ".join(f"rank {r}: {i if i >= 0 else 'none'}" for r, i in enumerate(owns))
        raise ValueError(
            f"--resume: the per-rank checkpoints in {where} are not one consistent state "
            f"(iteration per rank: {found}); pass --resume none to start fresh"
        )
    if named is not None:
        raise ValueError(f"--resume: no checkpoint.pt or checkpoint.rank*.pt in {named}")
    return None
