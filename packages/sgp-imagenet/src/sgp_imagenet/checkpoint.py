"""Atomic checkpoints, and the ranks' agreement on which one to resume from.

A checkpoint is written to a temporary file, fsynced and renamed, so a crash or a
preemption mid-save never leaves a half-written file under a checkpoint's name. The
checkpoint it replaces is kept as ``*.prev.pt``. So if the newest one turns out
unreadable (a disk that lost a write, a file truncated by hand), ``--resume auto``
says so and resumes from the one before.

A file that cannot be used raises `CheckpointError`, which names the file and says what
is wrong with it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "FORMAT",
    "CheckpointError",
    "Resume",
    "check_compatible",
    "check_resume",
    "checkpoint_path",
    "choose_resume",
    "load_checkpoint",
    "previous_path",
    "save_atomic",
]

FORMAT = 1
"""The checkpoint format this version writes, and the newest it reads."""

#: What torch.load raises on a file that is not a whole torch checkpoint.
_UNREADABLE = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, OSError,
               ValueError, AttributeError, IndexError, KeyError)  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem.

    Attributes:
        path: The file.
        problem: What is wrong with it, in words.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"checkpoint {path}: {problem}")
        self.path, self.problem = Path(path), problem


def checkpoint_path(directory: str | Path, rank: int | None) -> Path:
    """``DIR/checkpoint.pt`` (the network average, rank 0) or ``DIR/checkpoint.rankR.pt``."""
    name = "checkpoint.pt" if rank is None else f"checkpoint.rank{rank}.pt"
    return Path(directory) / name


def previous_path(path: str | Path) -> Path:
    """Where `save_atomic` keeps the checkpoint that ``path`` replaced (``*.prev.pt``)."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".pt") + ".prev.pt")


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the renames themselves survive a crash
    finally:
        os.close(dir_fd)


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically, keeping the checkpoint it replaces.

    The state goes to a temporary file, which is fsynced and renamed over ``path``; the
    file ``path`` held before is first kept as `previous_path` (a hard link, so ``path``
    always names a whole checkpoint). A crash at any moment leaves both names holding
    whole checkpoints, or missing. ``state`` is written with ``"format": FORMAT``.

    Returns:
        The path written.

    Raises:
        OSError: If the temporary file cannot be written (a full disk, a lost mount):
            ``filename`` is ``path``, ``strerror`` says why, the partial temporary file
            is removed, and ``path`` and its previous checkpoint are untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    _write(state, tmp, path)
    if path.exists():
        prev, link = previous_path(path), path.with_name(path.name + ".prev.tmp")
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)
            os.replace(link, prev)
        except OSError:  # no hard links here: the old file moves (briefly, none at path)
            os.replace(path, prev)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


class _Recorder:
    """A file's ``write`` for ``torch.save``, remembering the ``OSError`` it raised: torch's
    writer turns it into a ``RuntimeError`` that no longer says why."""

    def __init__(self, f: Any) -> None:
        self.f: Any = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            written: int = self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise
        return written

    def flush(self) -> None:
        self.f.flush()


def _write(state: dict[str, Any], tmp: Path, path: Path) -> None:
    """Write ``state`` to ``tmp`` and fsync it; on failure remove ``tmp`` and raise an
    ``OSError`` naming ``path`` (see `save_atomic`)."""
    try:
        with open(tmp, "wb") as f:
            recorder = _Recorder(f)
            try:
                torch.save({**state, "format": FORMAT}, recorder)  # type: ignore[arg-type]
            except RuntimeError:
                if recorder.error is None:
                    raise
                raise recorder.error from None
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # a partial file only takes the space a retry needs
        raise OSError(
            exc.errno,
            f"{exc.strerror or exc} while writing a checkpoint (the partial file is removed; "
            "the last complete checkpoint is kept)",
            str(path),
        ) from exc


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
        CheckpointError: If the file is empty, all zeros, truncated or otherwise
            unreadable, not an sgp-imagenet checkpoint, or written in a newer format.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "the file is empty")
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head.strip(b"\0"):
        raise CheckpointError(path, f"the file holds only zero bytes (its first {len(head)} "
                              "looked at): a write the file system lost?")  # fmt: skip
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except _UNREADABLE as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(path, f"cannot be read: truncated or corrupt ({first})") from exc
    if not isinstance(state, dict) or "model" not in state or "progress" not in state:
        raise CheckpointError(path, "is not an sgp-imagenet checkpoint")
    fmt = state.get("format", 1)
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise CheckpointError(
            path, f"was written in checkpoint format {fmt}, newer than this sgp-imagenet "
            f"reads (up to {FORMAT}): upgrade sgp-imagenet to resume from it",
        )  # fmt: skip
    return state


def check_compatible(
    state: dict[str, Any], path: str | Path, *, arch: str, algorithm: str, world_size: int
) -> None:
    """Refuse a checkpoint that this run cannot continue, naming what differs.

    A rank's own checkpoint (``kind == "rank"``) must come from the same model,
    algorithm and number of ranks; the network average (``kind == "average"``) only
    from the same model, since every rank starts from it afresh.

    Raises:
        CheckpointError: If the model, or (for a rank's own state) the algorithm or
            the world size, differs.
    """
    saved = state.get("args") or {}
    if saved.get("arch") not in (None, arch):
        raise CheckpointError(path, f"holds a {saved['arch']!r} model; this run trains "
                              f"{arch!r} (--arch)")  # fmt: skip
    if state.get("kind") != "rank":
        return
    if saved.get("algorithm") not in (None, algorithm):
        raise CheckpointError(
            path, f"holds a rank's {saved['algorithm']!r} state; this run is "
            f"{algorithm!r} (--algorithm). Resume from the network average "
            "(checkpoint.pt) to change algorithm",
        )  # fmt: skip
    saved_world = state.get("world_size")
    if saved_world is not None and saved_world != world_size:
        raise CheckpointError(
            path, f"is one rank's state of a job of {saved_world} ranks; this job has "
            f"{world_size}. Start it with {saved_world} ranks, or resume from the network "
            "average (checkpoint.pt), which any number of ranks can",
        )  # fmt: skip


@dataclass(frozen=True)
class Resume:
    """What one rank resumes from: the path and its loaded checkpoint.

    Attributes:
        path: The checkpoint file.
        state: Its contents, as ``load_checkpoint`` returns them.
    """

    path: Path
    state: dict[str, Any]


def _progress(state: dict[str, Any]) -> int:
    return int(state["progress"]["global_itr"])


def _readable(where: Path, rank: int) -> tuple[dict[int, Path], dict[int, Path], list[str]]:
    """This rank's readable checkpoints in ``where`` (its own, the network average; each
    the newest and the one before), by iteration; and why the others cannot be used."""
    own: dict[int, Path] = {}
    avg: dict[int, Path] = {}
    problems = []
    for found, base in ((own, checkpoint_path(where, rank)), (avg, checkpoint_path(where, None))):
        for path in (base, previous_path(base)):
            if not path.exists():
                continue
            try:  # mapped, not read: only the progress is looked at
                found.setdefault(_progress(load_checkpoint(path, mmap=True)), path)
            except CheckpointError as exc:
                problems.append(str(exc))
    return own, avg, problems


def choose_resume(resume: str, directory: str | Path | None, rank: int) -> Resume | None:
    """Agree across ranks on the checkpoint to resume from (a collective).

    With ``--resume auto`` (or a directory), every rank looks for its own checkpoints
    (``checkpoint.rankR.pt``, written by ``--checkpoint-all`` and by every preemption,
    and the one before it, ``checkpoint.rankR.prev.pt``) and for the network average's
    (``checkpoint.pt``, ``checkpoint.prev.pt``). The ranks resume from their own
    checkpoints of the newest iteration that every rank can read, unless a readable
    network average is newer; otherwise from the newest readable average; otherwise
    they start fresh. A checkpoint that cannot be read is skipped, and the rank that
    found it says so. An explicit file is loaded by every rank.

    Args:
        resume: ``--resume``: ``auto``, ``none``, a directory or a file.
        directory: ``--checkpoint-dir``.
        rank: This rank.

    Raises:
        CheckpointError: If an explicit file cannot be used.
        ValueError: If an explicit path is missing, only an inconsistent set of per-rank
            checkpoints exists (the message lists them), or checkpoints exist but none
            can be read. A named directory must hold a checkpoint.
    """
    if resume == "none":
        return None
    named = check_resume(resume)
    if named is not None and not named.is_dir():
        return Resume(named, load_checkpoint(named))
    where = named or directory
    own, avg, problems = _readable(Path(where), rank) if where is not None else ({}, {}, [])
    for problem in problems:
        print(f"sgp-imagenet: rank {rank}: --resume skips {problem}", flush=True)
    place = where if where is not None else "(none given to this rank)"  # for the errors
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, (sorted(own), sorted(avg), len(problems)))
    best_own = max(set.intersection(*(set(s[0]) for s in seen)), default=-1)
    best_avg = max(set.intersection(*(set(s[1]) for s in seen)), default=-1)
    if best_own >= 0 and best_own >= best_avg:
        return Resume(own[best_own], load_checkpoint(own[best_own], mmap=True))
    if best_avg >= 0:
        return Resume(avg[best_avg], load_checkpoint(avg[best_avg], mmap=True))
    if any(s[1] for s in seen):
        raise CheckpointError(
            place, f"rank {rank} cannot read the network average that other ranks read; "
            "the checkpoint directory must be shared (--resume)",
        )  # fmt: skip
    if any(s[0] for s in seen):
        found = ", ".join(
            f"rank {r}: {'/'.join(map(str, s[0][::-1])) or 'none'}" for r, s in enumerate(seen)
        )
        raise CheckpointError(
            place, f"the per-rank checkpoints are not one consistent state (iterations per "
            f"rank: {found}); pass --resume none to start fresh",
        )  # fmt: skip
    if any(s[2] for s in seen):
        raise CheckpointError(
            place, "no checkpoint in it can be read (each rank said which and why above); "
            "pass --resume none to start fresh",
        )  # fmt: skip
    if named is not None:
        raise ValueError(f"--resume: no checkpoint.pt or checkpoint.rank*.pt in {named}")
    return None
