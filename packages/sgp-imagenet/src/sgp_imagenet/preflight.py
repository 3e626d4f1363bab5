"""What ``sgp-imagenet train`` checks on disk before any process group exists.

The command line's values are checked by ``sgp_imagenet.cli``; the paths it names are
checked here, on every rank, once the data set is known and before the rank joins a
group: the model (``--arch``) can be built, ``--log-dir`` and ``--checkpoint-dir`` can be
written (a probe file is created and removed, so a read-only mount or a path under a
regular file is found even by root, whom permissions do not stop), and the checkpoint
directory has room for the checkpoints this rank will keep. Each problem is a
``ValueError`` naming the flag, which the command turns into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sgp_imagenet.checkpoint import checkpoint_path, previous_path
from sgp_imagenet.models import build_model

__all__ = ["COPIES", "MARGIN_BYTES", "CheckpointSize", "check_outputs", "check_writable"]

COPIES = 3
"""Copies of a checkpoint file that exist at once while one is saved: the newest, the
one before it (``*.prev.pt``) and the one being written (``*.tmp``)."""

MARGIN_BYTES = 1 << 20
"""Added to each checkpoint's estimate: the pickled progress, arguments, RNG and scaler
states and the zip container's records."""

_MB = 1e6


@dataclass(frozen=True, kw_only=True)
class CheckpointSize:
    """An estimate of one checkpoint file of a model, in bytes.

    Attributes:
        model: The model's ``state_dict()`` (parameters and buffers).
        optimizer: SGD's momentum buffers (one per trainable parameter; none without
            momentum).
    """

    model: int
    optimizer: int

    @property
    def total(self) -> int:
        """``model + optimizer + MARGIN_BYTES``."""
        return self.model + self.optimizer + MARGIN_BYTES

    @classmethod
    def of(cls, arch: str, num_classes: int, *, momentum: float) -> CheckpointSize:
        """Build ``arch`` on the meta device (no memory, no time) and count its bytes.

        Raises:
            ValueError: If ``arch`` is not a model ``build_model`` knows (names ``--arch``).
        """
        with torch.device("meta"):
            model = build_model(arch, num_classes)
        state = sum(t.nbytes for t in model.state_dict().values())
        trained = sum(p.nbytes for p in model.parameters() if p.requires_grad)
        return cls(model=state, optimizer=trained if momentum > 0 else 0)


def check_writable(directory: str | Path, flag: str) -> Path:
    """Create ``directory`` if needed and prove that a file can be written there.

    Args:
        directory: The directory.
        flag: The flag that named it, for the message.

    Returns:
        The directory.

    Raises:
        ValueError: ``"FLAG DIR: cannot write there (REASON)"`` if the directory cannot
            be created, or a probe file cannot be created, written and removed in it.
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sgp-imagenet-probe-", dir=path)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != path else ""
        raise ValueError(f"{flag} {path}: cannot write there ({reason}{where})") from None
    return path


def _room_needed(directory: Path, files: list[Path], one: int) -> int:
    """Bytes still to find for ``files`` (each kept with `COPIES` copies while saving),
    less what their current and previous versions already hold."""
    needed = 0
    for file in files:
        held = sum(p.stat().st_size for p in (file, previous_path(file)) if p.exists())
        needed += max(one, COPIES * one - held)
    return needed


def _check_room(args: argparse.Namespace, num_classes: int, rank: int) -> None:
    """``--checkpoint-dir`` must have room for the checkpoints this rank writes."""
    directory = Path(args.checkpoint_dir)
    size = CheckpointSize.of(args.arch, num_classes, momentum=args.momentum)
    own = checkpoint_path(directory, rank)
    files = [own] if args.checkpoint_all else []
    if rank == 0 and not args.checkpoint_all:
        files.append(checkpoint_path(directory, None))
    # without periodic files of its own, a rank still writes one on preemption
    needed = _room_needed(directory, files, size.total) if files else size.total
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise ValueError(
            f"--checkpoint-dir {directory}: {free / _MB:.1f} MB free, but rank {rank} needs "
            f"about {needed / _MB:.1f} MB: a checkpoint of --arch {args.arch} is "
            f"{size.total / _MB:.1f} MB (model {size.model / _MB:.1f} MB, optimizer "
            f"{size.optimizer / _MB:.1f} MB, {MARGIN_BYTES / _MB:.1f} MB margin), and "
            f"{COPIES} copies exist while one is saved (the newest, the previous, the one "
            "being written); free some space or choose another directory"
        )


def check_outputs(args: argparse.Namespace, num_classes: int, rank: int) -> None:
    """Check ``--arch``, ``--log-dir`` and ``--checkpoint-dir`` before the rank joins a group.

    Args:
        args: The parsed ``sgp-imagenet train`` arguments.
        num_classes: The data set's classes (the classifier's size).
        rank: This rank, as the launcher says (which checkpoint files it writes).

    Raises:
        ValueError: Naming the flag: an unknown ``--arch``, a directory that cannot be
            written, or a checkpoint directory without room for this rank's checkpoints.
    """
    if args.checkpoint_dir is None:
        CheckpointSize.of(args.arch, num_classes, momentum=args.momentum)  # (--arch)
    if args.log_dir is not None:
        check_writable(args.log_dir, "--log-dir")
    if args.checkpoint_dir is not None:
        check_writable(args.checkpoint_dir, "--checkpoint-dir")
        _check_room(args, num_classes, rank)
