"""Where each rank keeps its part of a Lightning checkpoint, and how the parts are read.

Gossip leaves every rank with its own model, so a checkpoint is one file per rank:
global rank 0's at the path Lightning names, rank ``r``'s beside it.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO

__all__ = ["check_compatible", "own_part", "rank_checkpoint_path"]


def rank_checkpoint_path(filepath: str | os.PathLike[str], rank: int) -> str:
    """Where global rank ``rank`` (not 0) keeps its part of checkpoint ``filepath``.

    Example:
        >>> rank_checkpoint_path("checkpoints/last.ckpt", 3)
        'checkpoints/last.ckpt.rank3'
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int of at least 1 (rank 0 owns the file); got {rank!r}")
    return f"{os.fspath(filepath)}.rank{rank}"


def _gathered(item: Any) -> list[Any]:
    """``item`` from every rank of the default group (just ``[item]`` without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [item]
    items: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(items, item)
    return items


def _resolved(filepath: Any) -> Any:
    """A local symbolic link (``ModelCheckpoint(save_last="link")``) resolved to its file."""
    path = os.fspath(filepath)
    return os.path.realpath(path) if os.path.islink(path) else filepath


def check_compatible(
    gossip: dict[str, Any], checkpoint_path: Any, world_size: int, algorithm: str
) -> None:
    """Refuse a checkpoint from another number of processes or another algorithm.

    Raises:
        ValueError: Naming what the checkpoint holds and what this run is.
    """
    if gossip["world_size"] != world_size:
        raise ValueError(
            f"checkpoint {checkpoint_path} holds the states of {gossip['world_size']} "
            f"processes, one per rank; this run has {world_size}: resume on "
            f"{gossip['world_size']} processes (or load the model alone with "
            "LightningModule.load_from_checkpoint and start a new fit)"
        )
    if gossip["algorithm"] != algorithm:
        raise ValueError(
            f"checkpoint {checkpoint_path} is from algorithm {gossip['algorithm']!r}, "
            f"this strategy runs {algorithm!r}"
        )


def own_part(
    checkpoint_io: CheckpointIO,
    checkpoint_path: Any,
    checkpoint: dict[str, Any],
    rank: int,
    weights_only: bool | None = None,
) -> dict[str, Any]:
    """This rank's part of a checkpoint whose rank-0 file ``checkpoint`` was read.

    A collective over the default group: every rank learns whether every rank found
    its part, so that all raise together rather than some wait for the others.

    Raises:
        FileNotFoundError: If a rank's part is missing (naming the ranks and files).
        ValueError: If a rank's part is from another step than rank 0's file.
    """
    own, problem = checkpoint, None
    if rank != 0:
        path = rank_checkpoint_path(_resolved(checkpoint_path), rank)
        try:
            own = checkpoint_io.load_checkpoint(path, weights_only=weights_only)
        except FileNotFoundError:
            problem = f"rank {rank}'s part of {checkpoint_path} is missing: {path}"
        else:
            if own.get("global_step") != checkpoint.get("global_step"):
                problem = (
                    f"rank {rank}'s part of {checkpoint_path} ({path}) is from step "
                    f"{own.get('global_step')}, rank 0's from step "
                    f"{checkpoint.get('global_step')}"
                )
    problems = [p for p in _gathered(problem) if p is not None]
    if problems and all(" is missing: " in p for p in problems):
        raise FileNotFoundError(
            "; ".join(problems) + " (every rank writes its own part beside rank 0's "
            "file, and each rank must be able to read its own)"
        )
    if problems:
        together = ": the parts of a checkpoint must be saved together"
        raise ValueError("; ".join(problems) + together)
    return own
