"""Who is in a fault-tolerant job, agreed through a store that outlives every worker.

Each process registers once and gets a *member id* that never changes. The members of a
generation ([`Generation`][gossip_topology.Generation]) gossip in one process group;
when one is lost, or a new process asks to join, the generation *ends* and the processes
agree on the next one:

1. Someone asks for the end (a rank whose peer failed, naming it lost; or a joiner).
   Every member notices it at its next poll of
   [`end_requested`][gossip_comm.Membership.end_requested] (one cheap store lookup), or
   when its own exchange fails or times out.
2. Each process that goes on *checks in* for the next generation.
3. As soon as every expected process has checked in (the members not reported lost,
   plus the registered joiners), or when `settle_timeout` has passed since this process
   saw a member of the ending generation check in (a joiner alone decides nothing), the
   first process to try writes the new member list with an atomic compare-and-set;
   every other process reads it. A process that checked in too late is not in it, and
   is told so.

The store is a `torch.distributed.Store`, normally a `TCPStore` served by a process that
is not a worker (`sgp-imagenet coordinator`), so that it survives any worker. If it is
lost, every call raises [`StoreLostError`][gossip_comm.StoreLostError].
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist
from torch.distributed.distributed_c10d import PrefixStore, Store

from gossip_comm.errors import MembershipError, StoreLostError
from gossip_topology import Generation
from gossip_topology._checks import check_int

__all__ = ["Membership"]

T = TypeVar("T")


def _end_groups() -> None:
    """End every process group of this process: abort them if the default one is NCCL
    (an NCCL communicator with a lost peer could hang in ``destroy``), else destroy them.

    ``_abort_process_group`` is torch's (2.14) one way to abort groups; it is marked
    experimental, and this is the one place that calls it.
    """
    if dist.get_backend() == "nccl":
        from torch.distributed.distributed_c10d import _abort_process_group

        _abort_process_group()
    else:
        dist.destroy_process_group()


class Membership:
    """One process's part in agreeing on a job's generations.

    Args:
        store: The job's store, shared by every process (and outliving them).
        min_members: Fewest members a generation may have; below it every process
            raises [`MembershipError`][gossip_comm.MembershipError].
        settle_timeout: Seconds a process waits for the others to check in before the
            next generation is decided without them.
        prefix: Key prefix, to keep several jobs (or tests) apart on one store.
        poll_interval: Seconds between store lookups while waiting.

    Attributes:
        member: This process's member id, once it has registered (``None`` before).
        generation: The generation this process is in (``None`` before ``form`` or
            ``join`` returns).
        previous: After ``join``: the generation that ended when this process was
            admitted (its members hand it their state); ``None`` otherwise.
        min_members: As given.
        settle_timeout: As given.
        poll_interval: As given.

    Raises:
        ValueError: If ``min_members < 1`` or a timeout is not positive.
    """

    def __init__(
        self,
        store: Store,
        *,
        min_members: int = 2,
        settle_timeout: float = 10.0,
        prefix: str = "gossip/",
        poll_interval: float = 0.02,
    ) -> None:
        if not isinstance(store, Store):
            raise TypeError(f"store must be a torch.distributed.Store; got {type(store).__name__}")
        self.min_members = check_int("min_members", min_members, minimum=1)
        for name, value in (("settle_timeout", settle_timeout), ("poll_interval", poll_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number of seconds; got {value!r}")
            if not 0 < value < math.inf:
                raise ValueError(
                    f"{name} must be a positive, finite number of seconds; got {value}"
                )
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str; got {type(prefix).__name__}")
        self._store, self._prefix = store, prefix
        self.settle_timeout, self.poll_interval = float(settle_timeout), float(poll_interval)
        self.member: int | None = None
        self.generation: Generation | None = None
        self.previous: Generation | None = None

    # ---------------------------------------------------------------- store access
    def _call(self, fn: Callable[..., T], key: str, *args: Any) -> T:
        """``fn(prefixed key, *args)``; a store that does not answer raises StoreLostError."""
        try:
            return fn(self._prefix + key, *args)
        except (RuntimeError, ConnectionError, OSError) as err:
            raise StoreLostError(
                f"member {self.member}: the membership store did not answer "
                f"({fn.__name__} {key}): {str(err).splitlines()[0] if str(err) else err!r}"
            ) from err

    def _has(self, key: str) -> bool:
        def check(k: str) -> bool:
            return bool(self._store.check([k]))

        return self._call(check, key)

    def _get(self, key: str) -> str:
        return bytes(self._call(self._store.get, key)).decode()

    def _set(self, key: str, value: str) -> None:
        self._call(self._store.set, key, value)

    def _add(self, key: str, amount: int) -> int:
        return int(self._call(self._store.add, key, amount))

    def _delete(self, key: str) -> None:
        self._call(self._store.delete_key, key)

    def _claim(self, key: str, value: str) -> str:
        """Set ``key`` to ``value`` unless it is set already; the value it holds after."""
        return bytes(self._call(self._store.compare_set, key, "", value)).decode()

    # ---------------------------------------------------------------- joining the job
    def register(self) -> int:
        """Get this process's member id (once): the number of processes registered before."""
        if self.member is None:
            self.member = self._add("next_id", 1) - 1
        return self.member

    def form(self, world_size: int, *, timeout: float = 300.0) -> Generation:
        """The job's first generation: the first ``world_size`` processes to register.

        Every starting process calls this; a process whose id is ``world_size`` or more
        (it registered late) is a joiner and must call
        [`join`][gossip_comm.Membership.join] instead.

        Raises:
            MembershipError: If this process is not among the first ``world_size``, or
                they have not all registered within ``timeout`` seconds.
        """
        world_size = check_int("world_size", world_size, minimum=1)
        member = self.register()
        if member >= world_size:
            raise MembershipError(
                f"member {member} registered after the first {world_size}: it joins a "
                "running job (call join())"
            )
        self._set(f"g0/in/{member}", "1")
        deadline = time.monotonic() + timeout
        while not all(self._has(f"g0/in/{m}") for m in range(world_size)):
            if time.monotonic() > deadline:
                raise MembershipError(
                    f"member {member}: only {self._add('next_id', 0)} of {world_size} "
                    f"processes registered within {timeout:g} s"
                )
            time.sleep(self.poll_interval)
        self._claim("g0/members", json.dumps(list(range(world_size))))
        self._claim("current", "0")
        self.generation = Generation(0, tuple(range(world_size)))
        return self.generation

    # ---------------------------------------------------------------- ending a generation
    def end_requested(self) -> str | None:
        """Why the current generation must end, or ``None`` while it goes on (one lookup)."""
        g = self._current()
        return self._get(f"g{g.number}/end") if self._has(f"g{g.number}/end") else None

    def request_end(self, reason: str, *, lost: Iterable[int] = ()) -> None:
        """Ask every member to move to the next generation.

        Args:
            reason: Why, for the logs (the first request's reason is kept).
            lost: Member ids this process saw fail; they are not waited for.
        """
        g = self._current()
        for m in lost:
            self._set(f"g{g.number}/lost/{m}", str(self.member))
        self._claim(f"g{g.number}/end", reason)

    def next(self) -> Generation:
        """Check in for the generation after the current one and return it.

        Raises:
            MembershipError: If this process is not in the next generation (it checked in
                too late, or was reported lost), or the next generation has fewer than
                ``min_members``.
            StoreLostError: If the store does not answer.
        """
        g = self._current()
        members = self._settle(g)
        assert members is not None  # a member's own check-in starts the deadline
        if self.member not in members:
            raise MembershipError(
                f"member {self.member} was left out of generation {g.number + 1} (members "
                f"{list(members)}): it checked in too late or was reported lost"
            )
        return self._enter(g.number + 1, members)

    def join(self, *, timeout: float = 300.0) -> Generation:
        """Join a running job: be admitted at its next generation, and return that.

        Waits for the job to form first, so a joiner started early registers after the
        job's first members.

        Raises:
            MembershipError: If no generation admits this process within ``timeout``
                seconds, or the one that does has fewer than ``min_members``.
            StoreLostError: If the store does not answer.
        """
        deadline = time.monotonic() + timeout
        while not self._has("current"):  # the job has not formed yet
            if time.monotonic() > deadline:
                raise MembershipError(f"no job formed on this store within {timeout:g} s")
            time.sleep(self.poll_interval)
        member = self.register()
        self._set(f"joiner/{member}", "1")
        while time.monotonic() < deadline:
            if self._has("finished"):
                self._delete(f"joiner/{member}")
                raise MembershipError(f"member {member}: the job is over; nothing to join")
            number = int(self._get("current"))
            g = Generation(number, tuple(json.loads(self._get(f"g{number}/members"))))
            self.generation = g
            if not self._has(f"g{number}/end") and not self._settled_in(g):
                time.sleep(self.poll_interval)  # a joiner of g is still setting up
                continue
            self._claim(f"g{number}/end", f"member {member} asks to join")
            members = self._settle(g, until=deadline)
            if members is not None and member in members:
                self._delete(f"joiner/{member}")
                self.previous = g
                return self._enter(number + 1, members)
        raise MembershipError(f"member {member}: not admitted within {timeout:g} s")

    def mark_ready(self) -> None:
        """Say that this process trains in the current generation (the wrappers call it
        at their first step in each one): a process that joined it has its state and
        polls for the next change, so another joiner may now ask for one."""
        self._set(f"g{self._current().number}/ready/{self.member}", "1")

    def _settled_in(self, g: Generation) -> bool:
        """Whether every member that joined at ``g`` trains in it (see ``mark_ready``).

        A joiner still building its model and receiving its state polls for nothing; a
        second joiner that ended ``g`` meanwhile would have it left out after
        ``settle_timeout``. So joiners come in one change at a time, unless a loss ends
        ``g`` anyway (then they check in with the survivors).
        """
        if g.number == 0:
            return True
        before = set(json.loads(self._get(f"g{g.number - 1}/members")))
        fresh = [m for m in g.members if m not in before]
        return all(self._has(f"g{g.number}/ready/{m}") for m in fresh)

    # ---------------------------------------------------------------- a generation's group
    def init_process_group(self, backend: str = "gloo", *, timeout: float = 300.0) -> None:
        """Make the current generation's process group the default one.

        Ends the previous generation's groups (if any) and initialises a new one on a
        prefix of the store: rank ``generation.rank(member)``, world size
        ``generation.world_size``. NCCL groups are *aborted*, since destroying a
        communicator with a lost peer may wait on it; gloo groups are destroyed.

        Raises:
            RuntimeError: Before ``form`` or ``join``.
        """
        g = self._current()
        assert self.member is not None
        if dist.is_initialized():
            _end_groups()
        dist.init_process_group(
            backend,
            store=PrefixStore(f"{self._prefix}g{g.number}/pg/", self._store),
            rank=g.rank(self.member),
            world_size=g.world_size,
            timeout=timedelta(seconds=timeout),
        )

    def publish_posted(self, step: int, progress: int = 0) -> None:
        """Record, before checking in for the next generation, the last gossip step this
        process posted in the current one (``-1``: none) and how many training steps it
        has completed (see [`resume_step`][gossip_comm.Membership.resume_step])."""
        value = f"{int(step)} {int(progress)}"
        self._set(f"g{self._current().number}/posted/{self.member}", value)

    def _published(self, ended: Generation, member: int) -> tuple[int, int]:
        step, progress = self._get(f"g{ended.number}/posted/{member}").split()
        return int(step), int(progress)

    def resume_step(self, ended: Generation) -> int:
        """The training step from which the survivors of ``ended`` gossip together again.

        Ranks of a synchronous gossip job drift a step or two apart before a loss is
        noticed; a survivor behind the others trains without gossip until it reaches
        this step, so that every member gossips the same steps from here on. Call it
        after [`next`][gossip_comm.Membership.next].

        Returns:
            The largest ``progress`` published by a member of ``ended`` that is in the
            current generation.
        """
        current = self._current()
        return max(self._published(ended, m)[1] for m in current.members if m in ended.members)

    def posted(self, ended: Generation) -> Callable[[int, int], bool | None]:
        """What a settling gossiper asks about its peers (see ``PushSum.settle``).

        Call it after [`next`][gossip_comm.Membership.next], with the generation that
        ended.

        Returns:
            ``posted(rank, step)`` for a rank of ``ended``: ``None`` if that member is not
            in the current generation (it is lost), else whether it posted gossip step
            ``step`` of ``ended`` (it published ``publish_posted`` before checking in, so
            the answer is in the store).
        """
        current = self._current()
        cache: dict[int, int] = {}

        def posted(rank: int, step: int) -> bool | None:
            member = ended.members[rank]
            if member not in current.members:
                return None
            if member not in cache:
                cache[member] = self._published(ended, member)[0]
            return cache[member] >= step

        return posted

    def finish(self) -> None:
        """Record that the job is over (it finished, or stopped on a preemption): a
        process that asks to join it later is told so at once instead of waiting."""
        self._set("finished", str(self.member))

    # ---------------------------------------------------------------- stopping together
    def propose_stop(self, step: int) -> int:
        """Ask every member to stop after training step ``step`` (for example to write a
        checkpoint on preemption); the first proposal stands.

        Returns:
            The step the job stops after (an earlier proposal's, if there was one).
        """
        return int(self._claim("stop", str(int(step))))

    def stop_step(self) -> int | None:
        """The step the job stops after, once a member proposed one (one lookup)."""
        return int(self._get("stop")) if self._has("stop") else None

    # ---------------------------------------------------------------- agreement
    def _current(self) -> Generation:
        if self.generation is None:
            raise RuntimeError("no generation yet: call form() or join() first")
        return self.generation

    def _settle(self, g: Generation, *, until: float = math.inf) -> tuple[int, ...] | None:
        """Check in for generation ``g.number + 1``; its members, once decided.

        The ``settle_timeout`` counts from the first check-in of a member of ``g``: a
        joiner alone decides nothing, however long the members are busy elsewhere (an
        evaluation, a checkpoint). ``until``: a ``time.monotonic()`` deadline after which
        a joiner gives up waiting (``None`` is returned).
        """
        nxt = g.number + 1
        self._set(f"g{nxt}/in/{self.member}", "1")
        lost = {m for m in g.members if self._has(f"g{g.number}/lost/{m}")}
        deadline = math.inf
        while not self._has(f"g{nxt}/members"):
            # joiners: registered ids outside ``g`` still flagged (members need no lookup)
            registered = self._add("next_id", 0)
            outside = (m for m in range(registered) if m not in g.members)
            candidates = set(g.members) | {m for m in outside if self._has(f"joiner/{m}")}
            present = {m for m in candidates if self._has(f"g{nxt}/in/{m}")}
            now = time.monotonic()
            if deadline == math.inf and present & set(g.members):
                deadline = now + self.settle_timeout
            if present >= candidates - lost or now > deadline:
                self._claim(f"g{nxt}/members", json.dumps(sorted(present)))
                break
            if now > until or self._has("finished"):
                return None
            time.sleep(self.poll_interval)
        return tuple(json.loads(self._get(f"g{nxt}/members")))

    def _enter(self, number: int, members: tuple[int, ...]) -> Generation:
        if int(self._get("current")) < number:
            self._set("current", str(number))
        if len(members) < self.min_members:
            raise MembershipError(
                f"member {self.member}: generation {number} has {len(members)} member(s), "
                f"fewer than min_members={self.min_members}: the job stops"
            )
        self.generation = Generation(number, members)
        return self.generation
