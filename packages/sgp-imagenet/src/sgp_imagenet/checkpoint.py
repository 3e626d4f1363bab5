"""Atomic checkpoints: a temporary file, fsync, then a rename, so a crash or a
preemption mid-save never leaves a half-written file where the last good one was."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["checkpoint_path", "find_resume", "load_checkpoint", "save_atomic"]


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


def find_resume(resume: str, directory: str | Path | None, rank: int) -> Path | None:
    """The checkpoint to resume from for ``--resume`` (``auto``, ``none`` or a path).

    ``auto`` takes this rank's own checkpoint if ``--checkpoint-all`` wrote one, else the
    network-average checkpoint, else starts fresh.

    Raises:
        ValueError: If an explicit path does not exist.
    """
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        if path.is_dir():
            return find_resume("auto", path, rank) or _missing(path)
        if not path.exists():
            raise ValueError(f"--resume: no checkpoint at {path}")
        return path
    if directory is None:
        return None
    for candidate in (checkpoint_path(directory, rank), checkpoint_path(directory, None)):
        if candidate.exists():
            return candidate
    return None


def _missing(path: Path) -> Path:
    raise ValueError(f"--resume: no checkpoint.pt or checkpoint.rank*.pt in {path}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_atomic` onto the CPU.

    Raises:
        ValueError: If the file is not such a checkpoint.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "progress" not in state:
        raise ValueError(f"{path} is not an sgp-imagenet checkpoint")
    return state
