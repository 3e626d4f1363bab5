"""What a rank says when a peer is lost and the job cannot go on (without ``--fault-tolerant``).

Without fault tolerance a lost peer ends the job: a gossip exchange with it fails
(gossip-comm's `GossipPeerError` names the peer), or a collective does (DDP's
all-reduce, the preemption agreement: gloo's error names an address, not a rank).
Either way every surviving rank stops with one line that names itself, the lost rank
and the iteration, and exits non-zero; the traceback is shown only with ``--debug``.

Whom to name is found through the c10d store (under torchrun, the agent's, which
outlives every worker). Every rank beats a [`Heartbeat`][sgp_imagenet.failure.Heartbeat]
there from a thread of its own, which keeps beating while the training thread is
blocked on a peer. A rank that stops reports so first. The lost ranks are those whose
heartbeat stands still for `LOST_AFTER` seconds without such a report: a process that
died, one that hangs as a whole, or one cut off by its link. A survivor that stops on
the news, or one still blocked on another survivor, is not named. A rank whose own beats
could not reach the store for that long says so: it was most likely the one cut off.
"""

from __future__ import annotations

import contextlib
import threading
import time

import torch.distributed as dist
from torch.distributed.distributed_c10d import Store

from gossip_comm import GossipError, GossipPeerError, GossipTimeoutError, NonFiniteError

__all__ = [
    "BEAT_EVERY", "LOST_AFTER", "RECENT_GAP", "Heartbeat", "PeerFailure", "first_line",
    "is_peer_failure",
]  # fmt: skip

BEAT_EVERY = 1.0
"""Seconds between two beats of a rank's heartbeat."""

LOST_AFTER = 4.0
"""Seconds a heartbeat must stand still (with no report) for its rank to count as lost."""

RECENT_GAP = 60.0
"""Seconds since a rank's own beats last stalled for the stall to explain its failure."""

_KEY = "sgp_imagenet/heartbeat"
#: What a store whose server is gone raises (torch's DistStoreError is a RuntimeError).
_STORE_ERRORS = (RuntimeError, OSError)
#: What gloo's errors say when a peer's process is gone or does not answer (gloo raises
#: plain RuntimeErrors; NCCL's are DistBackendErrors).
_GLOO_LOST = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Connection refused",
    "Broken pipe",
    "Timed out waiting",
    "Socket Timeout",
)


class PeerFailure(Exception):  # noqa: N818 - carries the line the rank prints
    """The job cannot go on: ``line`` says who stopped, whom it lost, and where.

    Attributes:
        line: The one line the rank prints (see `Heartbeat.describe`).
    """

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failed exchange or collective (a peer gone, or too slow), or
    the `PeerFailure` that says so."""
    if isinstance(err, GossipError | dist.DistError | PeerFailure):
        return True
    return isinstance(err, RuntimeError) and any(w in str(err) for w in _GLOO_LOST)


class Heartbeat:
    """This rank's heartbeat in the default group's store, and the others' as it reads them.

    Start it once the process group exists, stop it at the end (or use it as a context
    manager). Beating costs one store increment per `BEAT_EVERY` seconds per rank.

    Args:
        rank: This rank.
        world: The job's ranks.
        every: Seconds between beats.
        store: Where to beat; the default group's store when ``None``.
    """

    def __init__(
        self, rank: int, world: int, *, every: float = BEAT_EVERY, store: Store | None = None
    ) -> None:
        self.rank, self.world, self.every = rank, world, every
        self._store = _store() if store is None else store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # this rank's own longest stretch without a beat reaching the store, and when it
        # ended (monotonic s); a stretch still going on counts up to now
        self._last_ok = time.monotonic()
        self._gap = (0.0, 0.0)
        self._lost: list[int] = []

    def __enter__(self) -> Heartbeat:
        if self._store is not None:
            self._thread = threading.Thread(
                target=self._beat, daemon=True, name=f"sgp-imagenet-heartbeat{self.rank}"
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _beat(self) -> None:
        assert self._store is not None
        while not self._stop.is_set():
            try:
                self._store.add(f"{_KEY}/{self.rank}", 1)
            except _STORE_ERRORS:
                return  # the store went with a lost rank: nothing to say through it
            now = time.monotonic()
            if now - self._last_ok - self.every > self._gap[0]:
                self._gap = (now - self._last_ok - self.every, now)
            self._last_ok = now
            self._stop.wait(self.every)

    def own_gap(self, *, within: float = RECENT_GAP) -> float:
        """The longest time this rank's beats could not reach the store, among stretches
        that ended in the last ``within`` seconds or go on now (its link's outage)."""
        now = time.monotonic()
        ongoing = now - self._last_ok - self.every if self._thread is not None else 0.0
        gap, ended = self._gap
        return max(ongoing, gap if now - ended <= within else 0.0)

    def describe(self, err: BaseException, *, where: str, lost_after: float = LOST_AFTER) -> str:
        """Report that this rank stops, find whom it lost, and say so in one line.

        Args:
            err: The failure (`is_peer_failure`).
            where: The iteration, in words (``"iteration 37 (epoch 0, ...)"``).
            lost_after: Seconds a heartbeat must stand still to count as lost.

        Returns:
            The line to print, ``sgp-imagenet: rank R stopped at WHERE: ...``.
        """
        head = f"sgp-imagenet: rank {self.rank} stopped at {where}: "
        if isinstance(err, NonFiniteError):  # poisoned, not lost: it names the sender
            reason = str(err).splitlines()[0]
            self._report(reason)
            return head + reason
        self._report(None)
        lost = self._lost = self._stalled(lost_after)
        peer = err.peer if isinstance(err, GossipPeerError) else None
        ranks = ", ".join(map(str, lost))
        plural = len(lost) > 1
        if lost:
            said = (
                f"rank{'s' if plural else ''} {ranks} {'are' if plural else 'is'} lost (no "
                f"heartbeat for {lost_after:g} s; {'they' if plural else 'it'} most likely "
                f"died, or lost {'their links' if plural else 'its link'})"
            )
            if peer is not None and peer not in lost:
                said += f"; this rank's exchange with rank {peer} failed on the news"
        elif (first := self._first_reason()) is not None:  # another rank stopped first
            said = f"it stopped after another rank did ({first})"
        elif (gap := self.own_gap()) >= max(lost_after, self.every):  # its own beats stalled
            said = (
                f"this rank could not reach the job's store for {gap:.1f} s, so its own link "
                "most likely went down"
                + ("" if peer is None else f" (meanwhile its exchange with rank {peer} failed)")
            )
        elif isinstance(err, GossipTimeoutError):
            said = (
                f"rank {peer} did not answer within the gossip timeout (its heartbeat goes on: "
                "it is alive but stuck or far too slow; see --gossip-timeout)"
            )
        elif peer is not None:
            said = f"rank {peer} is lost (its connection closed; it most likely died)"
        else:
            said = f"a collective failed ({first_line(err)})"
        return (
            head
            + said
            + (
                ". Without --fault-tolerant the job cannot go on: relaunch it to resume from the "
                "last checkpoint (--resume auto), or add --fault-tolerant to train on without a "
                "lost rank; --debug shows the traceback"
            )
        )

    def linger(self, timeout: float, *, lost_after: float = LOST_AFTER) -> list[int]:
        """Keep this process (and the store it serves) up until every other rank has
        said that it stops, or is lost, for at most ``timeout`` seconds.

        Without torchrun's agent, rank 0's process serves the store. If it exits at
        once, a survivor that stops later finds no store, and cannot tell whom it lost.
        A rank counts as lost once `describe` named it, or once its heartbeat stands
        still for ``lost_after`` seconds while this waits.

        Returns:
            The ranks it stopped waiting for at the deadline.
        """
        if self._store is None:
            return []
        deadline = time.monotonic() + timeout
        waiting = {r for r in range(self.world) if r != self.rank} - set(self._lost)
        beats, moved = self._beats() or {}, {r: time.monotonic() for r in waiting}
        while waiting and time.monotonic() < deadline:
            try:
                waiting -= {r for r in waiting if self._store.check([f"{_KEY}/stopped/{r}"])}
            except _STORE_ERRORS:
                return sorted(waiting)
            now, latest = time.monotonic(), self._beats() or {}
            for r in list(waiting):
                if latest.get(r) != beats.get(r):
                    moved[r] = now
                elif now - moved[r] >= lost_after:
                    waiting.discard(r)  # gone meanwhile
            beats = latest
            time.sleep(min(0.1, self.every))
        return sorted(waiting)

    def report_stop(self, reason: str) -> None:
        """Tell the others that this rank stops for ``reason`` of its own (a full disk, a
        broken file): a rank that stops after it names the reason instead of a loss."""
        self._report(reason)

    def _report(self, reason: str | None) -> None:
        """Tell the others that this rank stops (it is not lost), and, if it is the first
        to stop for a ``reason`` of its own (a poisoned message), why."""
        if self._store is not None:
            with contextlib.suppress(*_STORE_ERRORS):
                self._store.set(f"{_KEY}/stopped/{self.rank}", "1")
                if reason is not None:  # the first such reason stays
                    self._store.compare_set(f"{_KEY}/first", "", reason)

    def _first_reason(self) -> str | None:
        """The reason the first rank to stop for one gave, if any did."""
        if self._store is None:
            return None
        try:
            if not self._store.check([f"{_KEY}/first"]):
                return None
            return self._store.get(f"{_KEY}/first").decode()
        except _STORE_ERRORS:
            return None

    def _beats(self) -> dict[int, int] | None:
        """Every other rank's beat count, or ``None`` if the store is out of reach."""
        assert self._store is not None
        others = [r for r in range(self.world) if r != self.rank]
        try:  # add(key, 0) reads a counter (0 if it never beat)
            return {r: int(self._store.add(f"{_KEY}/{r}", 0)) for r in others}
        except _STORE_ERRORS:
            return None

    def _stalled(self, lost_after: float) -> list[int]:
        """The ranks whose heartbeat stood still for ``lost_after`` s and that did not
        report stopping; empty if the store is out of reach."""
        if self._store is None or (before := self._beats()) is None:
            return []
        time.sleep(lost_after)
        after = self._beats()
        if after is None:
            return []
        stalled = []
        for r, n in before.items():
            if after[r] != n:
                continue
            try:
                if not self._store.check([f"{_KEY}/stopped/{r}"]):
                    stalled.append(r)
            except _STORE_ERRORS:
                return []
        return stalled


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (at most 200 characters), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _store() -> Store | None:
    """The default group's store (its timeout is the group's: the heartbeat only uses
    calls that never wait); ``None`` without one."""
    world = dist.group.WORLD
    if world is None:
        return None
    try:
        return world.get_group_store()
    except _STORE_ERRORS:  # no store: say what this rank knows
        return None
