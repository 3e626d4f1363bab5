"""Fault tolerance under Lightning: the trainer follows the job's generations.

A [`FaultTolerance`][gossip_nn.FaultTolerance] moves the survivors of a lost rank to a
new generation inside ``optimizer.step()``, with a new default process group in which
they are numbered anew. Lightning reads its ranks from a cluster environment, so
`MembershipEnvironment` answers with the current generation's; `Follower` notices each
change (to log it and move Lightning's rank-zero-only functions to the new rank 0) and
runs Lightning's own collectives again in the next generation when a member is lost
during one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist
from lightning.fabric.plugins import ClusterEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning_utilities.core.rank_zero import rank_zero_only

from gossip_comm import StoreLostError
from gossip_nn._base import DataParallelModule
from gossip_nn.fault_tolerance import FaultTolerance, GenerationChange
from gossip_nn.lightning._metrics import PREFIX

__all__ = [
    "Follower",
    "MembershipEnvironment",
    "broadcast_from_every_member",
    "leave_alone_on_sigterm",
    "membership_environment",
    "membership_metrics",
]

T = TypeVar("T")

log = logging.getLogger("gossip_nn.lightning")


class MembershipEnvironment(ClusterEnvironment):
    """Lightning's cluster environment for a fault-tolerant job: this process's rank and
    the world size are those of the job's current generation, which change when a
    member is lost; the processes are launched one by one, outside Lightning.

    Each process uses the one device the trainer is given (``devices=1``, or
    ``devices=[LOCAL_RANK]`` on a machine with several GPUs).

    Args:
        fault_tolerance: The job's fault tolerance, already started.
    """

    def __init__(self, fault_tolerance: FaultTolerance) -> None:
        self._ft = fault_tolerance

    @property
    def creates_processes_externally(self) -> bool:
        """Always: Lightning's launcher would end every process when one fails."""
        return True

    @property
    def main_address(self) -> str:
        """Unused: the membership store forms each generation's process group."""
        return ""

    @property
    def main_port(self) -> int:
        """Unused: the membership store forms each generation's process group."""
        return 0

    @staticmethod
    def detect() -> bool:
        """Never chosen by Lightning on its own: ``GossipStrategy`` sets it."""
        return False

    def world_size(self) -> int:
        """Members of the current generation."""
        return self._ft.generation.world_size

    def set_world_size(self, size: int) -> None:
        """Ignored: the generation decides."""

    def global_rank(self) -> int:
        """This process's rank in the current generation."""
        member = self._ft.membership.member
        assert member is not None  # started
        return self._ft.generation.rank(member)

    def set_global_rank(self, rank: int) -> None:
        """Ignored: the generation decides."""

    def local_rank(self) -> int:
        """0: the process's one device is the first (and only) of the trainer's."""
        return 0

    def node_rank(self) -> int:
        """0: ranks come from the generation, not from machines."""
        return 0


def membership_metrics(ft: FaultTolerance) -> dict[str, float]:
    """The current generation's number and size, and how many members were lost so far."""
    lost = sum(len(change.lost) for change in ft.history)
    return {
        f"{PREFIX}generation": float(ft.generation.number),
        f"{PREFIX}members": float(ft.generation.world_size),
        f"{PREFIX}lost": float(lost),
    }


def membership_environment(
    ft: Any, cluster_environment: ClusterEnvironment | None
) -> MembershipEnvironment:
    """The cluster environment of a fault-tolerant strategy.

    Raises:
        TypeError: If ``ft`` is not a `FaultTolerance`.
        ValueError: If it is not started, or started to join, or ``cluster_environment``
            is given too.
    """
    if not isinstance(ft, FaultTolerance):
        raise TypeError(f"fault_tolerance must be a FaultTolerance; got {type(ft).__name__}")
    if ft.membership.generation is None:
        raise ValueError(
            "fault_tolerance must be started before GossipStrategy is built: call "
            "fault_tolerance.start() (it forms the job and its process group) first"
        )
    if ft.joined_from is not None:
        raise ValueError(
            "GossipStrategy cannot join a running job (fault_tolerance.start(join=True)): "
            "Lightning's loop would start at step 0; start it with the job instead"
        )
    if cluster_environment is not None:
        raise ValueError(
            "cluster_environment cannot be given with fault_tolerance: the job's generation "
            "decides the ranks (a MembershipEnvironment); leave cluster_environment unset"
        )
    return MembershipEnvironment(ft)


class Follower:
    """Keeps a Lightning process in step with the job's generations.

    Args:
        fault_tolerance: The job's fault tolerance.
    """

    def __init__(self, fault_tolerance: FaultTolerance) -> None:
        self.ft = fault_tolerance
        self._seen = len(fault_tolerance.history)

    def changes(self, rank: int) -> list[GenerationChange]:
        """The generation changes since the last call (usually none). After one, this
        process's rank is ``rank`` and Lightning's rank-zero-only functions follow it;
        each survivor logs one line per change."""
        new = self.ft.history[self._seen :]
        self._seen = len(self.ft.history)
        if new:
            # the one function object behind Lightning's rank_zero_only imports
            rank_zero_only.rank = rank  # type: ignore[attr-defined]
        for change in new:
            log.warning(
                "gossip: member %s is rank %d of %d in generation %d (lost %s, joined %s); "
                "reconfigured in %.2f s: %s",
                self.ft.membership.member,
                rank,
                change.started.world_size,
                change.started.number,
                list(change.lost),
                list(change.joined),
                change.seconds,
                change.reason,
            )
        return new

    def survive(self, wrapper: DataParallelModule | None, collective: Callable[[], T]) -> T:
        """Run Lightning's ``collective``; if it fails (a member lost during it), move to
        the next generation with the survivors and run it there again.

        Every member must be in the same collective. Before the wrapper exists (or after
        it is closed) a failure ends the job as without fault tolerance.

        Raises:
            MembershipError: If too few members remain, or this one was left out.
            StoreLostError: If the membership store is gone.
        """
        while True:
            try:
                return collective()
            except RuntimeError as err:
                if wrapper is None or isinstance(err, StoreLostError):
                    raise
                wrapper.recover(err)


def broadcast_from_every_member(obj: Any, src: int) -> Any:
    """``src``'s ``obj`` on every rank, by an all-gather: a collective that needs every
    member, as a broadcast does not (its root can finish without a lost member), so
    that a survivor that has not seen the loss yet fails in it too and moves on with
    the others."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered[src]


def leave_alone_on_sigterm(trainer: Any) -> None:
    """With fault tolerance a SIGTERM ends only the process that receives it.

    Lightning broadcasts from rank 0, before each training batch, whether rank 0 got a
    SIGTERM, so that every rank stops together. With fault tolerance that per-batch
    collective is wrong twice over: the survivors of a loss notice it at different
    batches, so they would broadcast in different generations and wait on each other,
    and a signalled member should leave the job alone (its peers carry on without it).
    This replaces the broadcast by a check of the process's own flag; nothing is replaced
    if the trainer's loop has no such broadcast (other Lightning versions).
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if loop is None or not hasattr(loop, "_broadcast_sigterm_tensor"):
        return

    def own_sigterm_only() -> None:
        if getattr(trainer, "received_sigterm", False):
            raise SIGTERMException()

    loop._broadcast_sigterm_tensor = own_sigterm_only
