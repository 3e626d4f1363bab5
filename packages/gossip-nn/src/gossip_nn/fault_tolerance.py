"""Training that survives a lost rank: the survivors settle, regroup and keep gossiping.

Gossip needs no global step, so when a rank dies its neighbours can carry on without
it. With a [`FaultTolerance`][gossip_nn.FaultTolerance] given to the wrapper, a gossip
step that fails (a peer's connection closed, or a timeout) does not end the job:

1. the rank that saw the failure reports the peer lost and asks every member to end the
   current generation; the others notice it at their next optimizer step (one store
   lookup), or when their own exchange times out;
2. every survivor records how far it got and checks in; the members agree on the next
   generation through the store ([`Membership`][gossip_comm.Membership]);
3. each survivor *settles* its interrupted gossip step with exactly what was delivered
   ([`PushSum.settle`][gossip_comm.PushSum.settle]): no push-sum mass is created or
   destroyed, only the lost rank's own share is gone;
4. the survivors form a new process group, rebuild the graph at the new size
   ([`topology_at`][gossip_topology.topology_at]) and go on, inside the same
   ``optimizer.step()`` call: the training loop does not see the change.

The store must outlive every worker: a ``TCPStore`` served by a process that is not a
worker (``sgp-imagenet coordinator``).

AD-PSGD settles differently, having no global step: each active brings its exchange in
flight home (or drops it, if its partner is lost) and says goodbye; each passive serves
its live partners until their goodbyes; so an exchange between two survivors counts on
both ends or on neither.

With ``backend="nccl"`` each generation's default group is NCCL, for the application's
collectives (an evaluation's all-reduce, a checkpoint's average), while gossip travels
over a gloo group of the same members, staged through host memory: an NCCL communicator
does not survive a lost peer, and a point-to-point operation on it cannot be settled.
A generation change *aborts* the old groups (``destroy`` could wait on the lost peer)
and builds new ones; ``start`` sets ``TORCH_NCCL_ASYNC_ERROR_HANDLING=2`` (abort the
communicator, keep the process) and ``TORCH_NCCL_BLOCKING_WAIT=1`` (a collective that
times out raises in the caller, which then calls ``recover``) unless they are set.

Supported: SGP, OSGP, D-PSGD and AD-PSGD, with one flat gossip buffer (parameters of one
dtype and device), without compression, periodic exact averages, SlowMo, a hierarchy or
``buffers="broadcast"``; the wrapper refuses the others at construction. A new or
restarted process joins a running job with ``start(join=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.distributed_c10d import Store

from gossip_comm import (
    GossipPeerError,
    GossipTimeoutError,
    Membership,
    MembershipError,
    Settled,
)
from gossip_topology import Generation, RankRecord
from gossip_topology._checks import check_int

__all__ = ["FaultTolerance", "GenerationChange"]


@dataclass(frozen=True, kw_only=True)
class GenerationChange:
    """One move from a generation to the next, as this process saw it.

    Attributes:
        ended: The generation that ended.
        started: The generation the survivors gossip in next (a later one than
            ``ended.number + 1`` if a member was lost while the group formed).
        reason: Why it ended (the first request's reason).
        lost: Member ids that left.
        joined: Member ids that joined.
        at: When this process entered the change (``time.time()``).
        seconds: How long the change took this process, from entering it to gossiping
            in the new group.
        record: What this process did in the ended generation, for the numpy model
            [`simulate_generation`][gossip_topology.simulate_generation] (ranks of the
            ended generation).
        weight: This process's push-sum weight once the change was done: settled, and
            halved for each joiner it sponsored.
        exchanges: Each exchange settled (SGP and D-PSGD: the failed step; OSGP: every
            round in flight), as ``(gossip step, out-peers whose share came back,
            in-peers whose message was added)``, in ranks of ``ended``.
        moved_from_lost: AD-PSGD: the sum over the model's elements of what this
            process's exchanges with the members lost in ``ended`` moved it by (the lost
            ranks' share it took in); 0.0 for the push-sum algorithms, whose
            ``record`` says the same.
        settled: AD-PSGD: how this process's exchanges of ``ended`` were settled. An
            active: its exchange in flight, ``{"adopted": 1}`` (it completed: kept on
            both ends), ``{"dropped": 1}`` (its partner was lost: this rank stays as it
            was) or ``{"none": 1}``. A passive: ``goodbye`` and ``lost`` (how each
            partner ended), ``interrupted`` (exchanges a loss cut short, left
            unapplied) and ``unserved`` (requests left unanswered when its wait for the
            goodbyes timed out). Empty for the push-sum algorithms (see ``exchanges``).
    """

    ended: Generation
    started: Generation
    reason: str
    lost: tuple[int, ...]
    joined: tuple[int, ...]
    at: float
    seconds: float
    record: RankRecord
    weight: float
    exchanges: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...] = ()
    moved_from_lost: float = 0.0
    settled: Mapping[str, int] = field(default_factory=dict)


class FaultTolerance:
    """How a gossip job survives lost ranks; give it to the wrapper.

    Build it on every process with the same store, call [`start`][gossip_nn.FaultTolerance.start]
    (which forms the job and initialises the default process group), then build the
    model and the wrapper with ``fault_tolerance=`` this object.

    Args:
        store: The job's store, served by a process that is not a worker.
        world_size: How many processes start the job.
        min_members: Fewest members to go on with; below it ``optimizer.step()`` raises
            [`MembershipError`][gossip_comm.MembershipError] on every survivor.
        settle_timeout: Seconds to wait for every member to check in after a generation
            ends; ``None``: the wrapper's gossip timeout plus 5 s (a member blocked on a
            peer that stopped notices after one gossip timeout).
        backend: The generation's default process group backend: ``"gloo"``, or
            ``"nccl"`` for the application's collectives on CUDA (gossip still travels
            over gloo; see above).
        prefix: Store key prefix, to keep several jobs apart on one store.
        extra_state: Called by a sponsor when it hands its state to a joiner, inside the
            optimizer step that admits it: what the application needs beside the model
            and optimizer (its position in the data, a gradient scaler's state). Must be
            picklable; the joiner finds it in ``received_state``.

    Attributes:
        membership: The agreement protocol ([`Membership`][gossip_comm.Membership]).
        history: Every generation change so far, oldest first.
        start_step: For a process that joined: the training step it starts at (the
            optimizer steps its sponsor had taken), once its wrapper exists; 0 otherwise.
        joined_from: For a process that joined: the generation before the one it was
            admitted at, until its wrapper has received its state; ``None`` otherwise.
        extra_state: As given; may be set later, before training (the application
            often exists only after the wrapper).
        received_state: For a process that joined: what its sponsor's ``extra_state``
            returned, once its wrapper exists; ``None`` otherwise.
        setup_timeout: Seconds a new generation's collectives may take until training
            resumes in it (``start``'s ``timeout``); from the next step on they are
            bounded by the gossip timeout.
        world_size: As given.
        settle_timeout: As given (``None``: follow the wrapper's gossip timeout).
        backend: As given.

    Raises:
        ValueError: If ``world_size`` or ``min_members`` is below 1, ``backend`` is not
            ``"gloo"`` or ``"nccl"``, or ``"nccl"`` without CUDA.
        TypeError: If ``world_size`` is not an int.
    """

    def __init__(
        self,
        store: Store,
        *,
        world_size: int,
        min_members: int = 2,
        settle_timeout: float | None = None,
        backend: str = "gloo",
        prefix: str = "gossip/",
        extra_state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        if extra_state is not None and not callable(extra_state):
            raise TypeError(f"extra_state must be a callable or None; got {extra_state!r:.80}")
        if settle_timeout is not None and (
            isinstance(settle_timeout, bool) or not isinstance(settle_timeout, int | float)
        ):
            raise TypeError(
                f"settle_timeout must be a number of seconds or None; got {settle_timeout!r}"
            )
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl'; got {backend!r}")
        if backend == "nccl" and not torch.cuda.is_available():
            raise ValueError("backend='nccl' needs a CUDA device; none is available")
        self.world_size = check_int("world_size", world_size, minimum=1)
        self.backend = backend
        self.settle_timeout = settle_timeout
        self.membership = Membership(
            store,
            min_members=min_members,
            settle_timeout=60.0 if settle_timeout is None else settle_timeout,
            prefix=prefix,
        )
        self.history: list[GenerationChange] = []
        # joining: the generation before the one this process was admitted at, until the
        # wrapper has received its state; and the training step it then starts at
        self.joined_from: Generation | None = None
        self.start_step = 0
        self.setup_timeout = 300.0  # start() sets it
        self.extra_state = extra_state
        self.received_state: dict[str, Any] | None = None

    @property
    def generation(self) -> Generation:
        """The generation this process is in.

        Raises:
            RuntimeError: Before [`start`][gossip_nn.FaultTolerance.start].
        """
        if self.membership.generation is None:
            raise RuntimeError("call FaultTolerance.start() before training")
        return self.membership.generation

    def start(self, *, join: bool = False, timeout: float = 300.0) -> Generation:
        """Form the job's first generation, or join the running job; then initialise the
        generation's default process group.

        Args:
            join: This process joins a job that is already training (a restarted or an
                extra process): it is admitted at the next generation, and the wrapper
                it builds then receives its model, optimizer state, half of a sponsor's
                push-sum weight and the step count from a member
                ([`Generation.sponsors`][gossip_topology.Generation.sponsors]).
            timeout: Seconds to wait for the job to form, or to be admitted; also how
                long a new generation's collectives may take until training resumes in
                it (a joiner builds its model and wrapper meanwhile).

        Raises:
            MembershipError: If this process registered after the first ``world_size``
                without ``join``, or nothing happened within ``timeout`` seconds.
        """
        if self.backend == "nccl":
            _survivable_nccl()
        if join:
            generation = self.membership.join(timeout=timeout)
            self.joined_from = self.membership.previous
        else:
            generation = self.membership.form(self.world_size, timeout=timeout)
        self.membership.init_process_group(self.backend, timeout=timeout)
        self.setup_timeout = float(timeout)
        return generation

    def use_gossip_timeout(self, timeout: float) -> None:
        """Wait for check-ins at least one gossip ``timeout`` plus 5 s (the wrapper calls
        this with its own timeout unless ``settle_timeout`` was given)."""
        if self.settle_timeout is None:
            self.membership.settle_timeout = float(timeout) + 5.0

    def end_requested(self) -> str | None:
        """Why the current generation must end, or ``None`` (one store lookup)."""
        return self.membership.end_requested()

    def report(self, err: GossipPeerError) -> None:
        """Ask for the generation to end because of ``err``.

        A timeout while an end is already requested is the request's doing (a peer
        stopped to change generation), not a loss; anything else names the peer lost.
        """
        if isinstance(err, GossipTimeoutError) and self.end_requested() is not None:
            return
        member = self.generation.members[err.peer] if err.peer >= 0 else None
        self.membership.request_end(
            f"rank {err.rank} (member {self.membership.member}): {type(err).__name__} with "
            f"rank {err.peer} at gossip step {err.step}",
            lost=[] if member is None else [member],
        )


def _settled_record(
    ended: Generation, following: Generation, completed: int, settled: Sequence[Settled]
) -> RankRecord:
    """This process's [`RankRecord`][gossip_topology.RankRecord] of ``ended``.

    Args:
        ended: The generation that ended.
        following: The one after it (members of ``ended`` not in it are lost).
        completed: Gossip steps this process completed in ``ended``.
        settled: What settling its interrupted step delivered (empty if it stopped
            between steps).
    """
    lost = {r for r, member in enumerate(ended.members) if member not in following.members}
    returned = {(p, s.step) for s in settled for p in s.returned if p in lost}
    received = {(q, s.step) for s in settled for q in s.received if q in lost}
    return RankRecord(
        completed=completed,
        posted=bool(settled),
        returned=frozenset(returned),
        received_from_lost=frozenset(received),
    )


def _joiner_payload(
    ft: FaultTolerance | None,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    **counters: Any,
) -> dict[str, Any]:
    """What a sponsor hands a joiner: the module's and optimizer's state, the wrapper's
    ``counters`` (weight, step counts) and the application's ``extra_state``."""
    extra = None if ft is None else ft.extra_state
    return {
        # cloned: a parameter is a view of the flat gossip buffer, and pickling a view
        # writes its whole storage (the model once per parameter)
        "module": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "extra": None if extra is None else extra(),
        **counters,
    }


def _send_to_joiners(
    ft: FaultTolerance,
    ended: Generation,
    following: Generation,
    state: Callable[[], dict[str, Any]],
) -> int:
    """Send ``state()`` to each joiner of ``following`` this process sponsors (in the
    new generation's default group); how many it sponsored."""
    sponsored = 0
    for joiner, sponsor in following.sponsors(ended).items():
        if sponsor == ft.membership.member:
            sponsored += 1
            dist.send_object_list([state()], dst=following.rank(joiner))
    return sponsored


def _receive_from_sponsor(
    ft: FaultTolerance, module: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """A joiner: load the module and optimizer state its sponsor hands over; the
    payload (with the wrapper's counters) is returned, ``extra`` set aside in
    ``ft.received_state``."""
    assert ft.joined_from is not None
    g, member = ft.generation, ft.membership.member
    assert member is not None
    sponsor = g.sponsors(ft.joined_from)[member]
    box: list[Any] = [None]
    dist.recv_object_list(box, src=g.rank(sponsor))
    payload: dict[str, Any] = box[0]
    module.load_state_dict(payload["module"])
    optimizer.load_state_dict(payload["optimizer"])
    ft.received_state = payload["extra"]
    ft.joined_from = None
    return payload


#: NCCL's error handling modes (``TORCH_NCCL_ASYNC_ERROR_HANDLING``) that end the process
#: on a communicator error: 1 aborts and tears down, 3 tears down (torch's default).
_FATAL_NCCL_MODES = ("1", "3")


def _survivable_nccl() -> None:
    """Make an NCCL error (a lost peer) end the communicator, not the process."""
    mode = os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    if mode in _FATAL_NCCL_MODES:
        raise ValueError(
            f"TORCH_NCCL_ASYNC_ERROR_HANDLING={mode} ends the process on an NCCL error, so "
            "a lost peer would end every survivor too; unset it (fault tolerance sets 2: "
            "abort the communicator only) or set 0 or 2"
        )
    os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")


def _gossip_group_of(group: dist.ProcessGroup) -> dist.ProcessGroup:
    """The group a fault-tolerant wrapper gossips on: ``group`` itself on gloo; on NCCL a
    gloo group of the same ranks (a collective: every rank of ``group`` builds it)."""
    if dist.get_backend(group) == "gloo":
        return group
    ranks = dist.get_process_group_ranks(group)
    gloo = dist.new_group(ranks, backend="gloo")
    assert isinstance(gloo, dist.ProcessGroup)  # every rank of ``group`` is a member
    return gloo


def _form_group(
    ft: FaultTolerance,
    following: Generation,
    progress: int,
    build: Callable[[dist.ProcessGroup, Generation], None],
) -> Generation:
    """Make ``following``'s group the default one and ``build`` the gossipers on it.

    A member that dies before the group has formed (the group's rendezvous, or a
    collective of ``build``, fails) ends that generation too: the others move on without
    it, as many times as it takes. The generation formed is returned. Its collectives may
    take ``ft.setup_timeout`` (a joiner builds its model and wrapper meanwhile); the
    wrapper bounds them by the gossip timeout from its next step on.
    """
    while True:
        try:
            ft.membership.init_process_group(ft.backend, timeout=ft.membership.settle_timeout)
            group = dist.group.WORLD
            assert isinstance(group, dist.ProcessGroup)  # just initialised
            dist.set_timeout(timedelta(seconds=ft.setup_timeout), group)
            build(group, following)
            return following
        except MembershipError:
            raise
        except (RuntimeError, ValueError) as err:  # a member missing from the group
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            ft.membership.request_end(f"generation {following.number} did not form: {first}")
            ft.membership.publish_posted(-1, progress=progress)
            following = ft.membership.next()
