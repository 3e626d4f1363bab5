"""Testing aids: faults injected into a real run at an exact iteration.

Set in a worker's environment, they let end-to-end tests stop or poison one rank at a
reproducible point of a real ``sgp-imagenet train`` run, through the real code paths (a
real signal through the real handler; a real NaN in the real model).
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "FILL_HOOK",
    "POISON_HOOK",
    "SIGNAL_HOOK",
    "InjectedFaults",
    "fill_disk",
    "injected_signal",
]

SIGNAL_HOOK = "SGP_IMAGENET_TEST_SIGNAL"
"""Testing aid: ``RANK:GLOBAL_ITR:SIGNAL`` makes that rank (with ``--fault-tolerant``,
that member id) signal itself after that iteration, so tests can preempt a run at an
exact, reproducible point. Only in a launcher's first attempt: a worker that torchrun
restarted (``TORCHELASTIC_RESTART_COUNT`` above 0) is not signalled again."""

POISON_HOOK = "SGP_IMAGENET_TEST_POISON"
"""Testing aid: ``RANK:GLOBAL_ITR`` makes that rank fill its first parameter with NaN
after that iteration, as a diverged model would, so tests can check ``--check-finite``."""


FILL_HOOK = "SGP_IMAGENET_TEST_FILL"
"""Testing aid: ``RANK:GLOBAL_ITR:PATH`` makes that rank fill the file system holding
``PATH`` after that iteration, by writing zeros to ``PATH`` until the disk is full, so
tests can check what a checkpoint save does on a disk that filled during the run."""


def injected_signal(text: str | None) -> tuple[int, int, signal.Signals] | None:
    """Parse `SIGNAL_HOOK`'s value: ``(rank, global iteration, signal)`` or ``None``.

    Raises:
        ValueError: If ``text`` is not ``RANK:GLOBAL_ITR:SIGNAME``.
    """
    if not text:
        return None
    try:
        rank, itr, name = text.split(":")
        return int(rank), int(itr), signal.Signals[name]
    except (ValueError, KeyError):
        raise ValueError(
            f"{SIGNAL_HOOK} must be RANK:GLOBAL_ITR:SIGNAME (e.g. 1:5:SIGTERM); got {text!r}"
        ) from None


def _rank_and_iteration(text: str | None, name: str) -> tuple[int, int] | None:
    """Parse ``RANK:GLOBAL_ITR`` (``None`` when unset)."""
    if not text:
        return None
    try:
        rank, itr = text.split(":")
        return int(rank), int(itr)
    except ValueError:
        raise ValueError(f"{name} must be RANK:GLOBAL_ITR (e.g. 2:5); got {text!r}") from None


def _fill_target(text: str | None) -> tuple[int, int, str] | None:
    """Parse `FILL_HOOK`'s value, ``RANK:GLOBAL_ITR:PATH`` (``None`` when unset)."""
    if not text:
        return None
    try:
        rank, itr, path = text.split(":", 2)
        return int(rank), int(itr), path
    except ValueError:
        raise ValueError(
            f"{FILL_HOOK} must be RANK:GLOBAL_ITR:PATH (e.g. 0:3:/mnt/small/filler); got {text!r}"
        ) from None


def fill_disk(path: str) -> int:
    """Write zeros to ``path`` until its file system is full; returns the bytes written.

    Raises:
        OSError: Any error but "no space left on device".
    """
    written = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1):  # down to the last byte the disk takes
            try:
                while True:
                    written += f.write(bytes(chunk)) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return written


@dataclass(frozen=True)
class InjectedFaults:
    """The faults the environment asks this process to inject.

    Attributes:
        signal: `SIGNAL_HOOK` parsed: ``(rank, global iteration, signal)``, or ``None``
            (also in a worker torchrun has restarted).
        poison: `POISON_HOOK` parsed: ``(rank, global iteration)``, or ``None``.
        fill: `FILL_HOOK` parsed: ``(rank, global iteration, path)``, or ``None``.
    """

    signal: tuple[int, int, signal.Signals] | None = None
    poison: tuple[int, int] | None = None
    fill: tuple[int, int, str] | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> InjectedFaults:
        """Read the hooks; a fault is injected once, so a restarted worker gets no signal.

        Raises:
            ValueError: If a hook's value is malformed.
        """
        first_attempt = environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        sig = injected_signal(environ.get(SIGNAL_HOOK)) if first_attempt else None
        return cls(
            signal=sig,
            poison=_rank_and_iteration(environ.get(POISON_HOOK), POISON_HOOK),
            fill=_fill_target(environ.get(FILL_HOOK)),
        )

    def after_iteration(self, who: int, global_itr: int, model: nn.Module) -> None:
        """Inject what is due after ``who``'s iteration ``global_itr``."""
        if self.signal is not None and self.signal[:2] == (who, global_itr):
            os.kill(os.getpid(), self.signal[2])  # a real signal, through the real handler
        if self.poison == (who, global_itr):
            with torch.no_grad():  # this rank's model diverges: its next messages carry NaN
                next(model.parameters()).fill_(float("nan"))
        if self.fill is not None and self.fill[:2] == (who, global_itr):
            fill_disk(self.fill[2])  # the disk fills during the run, as another job's would
