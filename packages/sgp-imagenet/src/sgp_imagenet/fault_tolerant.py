"""``sgp-imagenet train --fault-tolerant``: a run that survives lost ranks and admits new ones.

Every process is launched on its own (plain processes, ``srun --kill-on-bad-exit=0``,
one ``torchrun`` per host) with ``--coordinator HOST:PORT``, the address of
``sgp-imagenet coordinator``. The first ``--world-size`` processes to reach it form the
job; any later one (a restarted or an extra process) joins the running job at its next
generation. Rank numbers come from the coordinator, not from the launcher.

What changes for the training loop (see [`TrainingRun`][sgp_imagenet.run.TrainingRun]):

- gossip-nn's wrapper moves the job to the next generation inside ``optimizer.step()``
  when a peer is lost; `Generations` notices the change after the iteration, renumbers
  this process and logs it;
- the data is re-sharded over the members at the start of each epoch; the rest of an
  epoch in which a rank was lost skips that rank's remaining share, and a joiner reads its
  sponsor's share until the epoch ends;
- collectives outside gossip (validation, the network-average checkpoint) are run again
  in the next generation if a member is lost during them (`survive`);
- a preemption signal makes the members agree, through the coordinator, on an iteration
  to stop after (`STOP_LEAD` iterations ahead), so every rank's checkpoint is taken at the
  same iteration without any collective;
- except under a ``torchrun`` that restarts its workers (``--max-restarts`` above 0):
  torchrun stops every worker of a host when one of them fails, with the same SIGTERM,
  and starts them all again. There a signal means "this worker is being restarted"
  (`leaves_on_signal`): it leaves the job alone, the others carry on without it, and its
  restart joins them.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist

from gossip_comm import StoreLostError
from gossip_nn import FaultTolerance, GenerationChange

__all__ = [
    "STOP_LEAD",
    "Generations",
    "Leaving",
    "connect",
    "leaves_on_signal",
    "parse_address",
    "survive",
]

T = TypeVar("T")

STOP_LEAD = 2
"""Iterations, beyond the world size, between a preemption signal and the agreed stop:
ranks of a synchronous gossip job are at most ``world_size - 1`` iterations apart."""


class Leaving(Exception):  # noqa: N818 - an event, not an error
    """Raised out of the training loop when this worker leaves the job on its own (its
    launcher restarts it; see `leaves_on_signal`)."""


def leaves_on_signal() -> bool:
    """Whether a SIGTERM means that this worker alone goes (to be restarted), not that the
    job is preempted: under a ``torchrun`` with restarts left (``--max-restarts``), which
    stops all of a host's workers with SIGTERM when one fails, and starts them again."""
    if not os.environ.get("TORCHELASTIC_RUN_ID"):
        return False
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) < restarts


def parse_address(text: str) -> tuple[str, int]:
    """``--coordinator``'s ``HOST:PORT``.

    Raises:
        ValueError: If ``text`` is not ``HOST:PORT`` with a port in 1..65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--coordinator must be HOST:PORT (port 1..65535); got {text!r}")
    return host, int(port)


def connect(args: argparse.Namespace, world_size: int) -> FaultTolerance:
    """Reach the coordinator, then form the job or join it; the default process group
    is this generation's when this returns.

    Args:
        args: ``--coordinator``, ``--min-members``, ``--membership-timeout``.
        world_size: How many processes form the job (the first to register).

    Raises:
        StoreLostError: If the coordinator cannot be reached.
        MembershipError: If the job does not form, or this process is not admitted,
            within ``--membership-timeout`` seconds.
    """
    host, port = parse_address(args.coordinator)
    wait = timedelta(seconds=args.membership_timeout)
    try:
        store = dist.TCPStore(  # type: ignore[attr-defined]  # re-exported from torch._C
            host, port, is_master=False, timeout=wait
        )
    except (RuntimeError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StoreLostError(f"cannot reach the coordinator at {host}:{port}: {first}") from err
    ft = FaultTolerance(store, world_size=world_size, min_members=args.min_members)
    member = ft.membership.register()
    ft.start(join=member >= world_size, timeout=args.membership_timeout)
    return ft


def survive(dp: Any, ft: FaultTolerance | None, collective: Callable[[], T]) -> T:
    """Run ``collective`` (an evaluation, a checkpoint of the network average); if a
    member is lost during it, move to the next generation with the survivors and run it
    again there. Without fault tolerance, just run it.

    ``dp`` is the gossip-nn wrapper; every member must call this at the same point.
    """
    while True:
        try:
            return collective()
        except RuntimeError as err:
            if ft is None or isinstance(err, StoreLostError):
                raise
            dp.recover(err)  # MembershipError: too few left, or this one left out


class Generations:
    """What the run knows of the job's generations: it notices changes, logs them, and
    keeps them for the JSON summary.

    Args:
        ft: The job's fault tolerance.

    Attributes:
        ft: As given.
        rows: One dict per change seen (see `describe`), oldest first.
    """

    def __init__(self, ft: FaultTolerance) -> None:
        self.ft = ft
        self.rows: list[dict[str, Any]] = []
        self._seen = len(ft.history)
        self._opened = time.time()

    @property
    def member(self) -> int:
        """This process's member id (stable over generations)."""
        member = self.ft.membership.member
        assert member is not None
        return member

    @property
    def rank(self) -> int:
        """This process's rank in the current generation."""
        return self.ft.generation.rank(self.member)

    @property
    def world_size(self) -> int:
        """Members of the current generation."""
        return self.ft.generation.world_size

    def changes(self) -> list[GenerationChange]:
        """The changes since the last call (usually none), recorded in `rows`."""
        new = self.ft.history[self._seen :]
        self._seen = len(self.ft.history)
        self.rows += [self.describe(c) for c in new]
        return new

    def describe(self, change: GenerationChange) -> dict[str, Any]:
        """A change as the summary keeps it: the generations, who left and joined,
        when (seconds since this process opened its log) and how long it took."""
        return {
            "generation": change.started.number,
            "members": list(change.started.members),
            "lost": list(change.lost),
            "joined": list(change.joined),
            "reason": change.reason,
            "at_s": round(change.at - self._opened, 3),
            "reconfigure_s": round(change.seconds, 3),
        }

    @staticmethod
    def line(row: dict[str, Any]) -> str:
        """One log line for a change (a `describe` row)."""
        parts = [f"generation {row['generation']}: {len(row['members'])} member(s)"]
        if row["lost"]:
            parts.append(f"lost {row['lost']}")
        if row["joined"]:
            parts.append(f"joined {row['joined']}")
        return f"{', '.join(parts)}; reconfigured in {row['reconfigure_s']:.2f} s ({row['reason']})"
