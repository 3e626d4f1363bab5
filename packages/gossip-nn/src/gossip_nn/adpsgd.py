r"""BilateralGossipDataParallel: AD-PSGD behind the plain PyTorch training loop.

Lian et al., *Asynchronous Decentralized Parallel Stochastic Gradient Descent*, ICML 2018
([arXiv:1710.06952](https://arxiv.org/abs/1710.06952)). No rank waits for a global step:

- an **active** rank, after its optimizer step, asks its partner to average a snapshot of
  its parameters and goes on computing, without ever waiting for the answer: after each
  later step it checks whether the exchange has come home, adopts it if so (adding the
  pair's move to whatever its model has become since) and sends the next one. On a slow
  link an active takes several local steps per exchange, at the pace of its own compute;
  its gradients are as stale as the exchange in flight;
- a **passive** rank answers requests from a responder thread, on a shared copy of its
  parameters guarded by a lock; each optimizer step adopts that copy (averages included)
  and adds its own update to it. The parameters a forward pass sees are only ever
  written by the training thread, so no forward sees a half-applied update.

Each exchange replaces both ends by their average, so the sum of the models over all ranks
changes only by the optimizer updates.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from gossip_comm import (
    AsyncBilateral,
    GossipHandle,
    GossipPeerError,
    NonFiniteError,
    common_references,
)
from gossip_nn._async_exact import ExchangeLedger
from gossip_nn._base import (
    DataParallelModule,
    bind_flat,
    load_outer_state,
    network_average,
    save_outer_state,
)
from gossip_nn._buffers import BufferSync, floating_buffers
from gossip_nn.averaging import ExactAveragingSchedule
from gossip_nn.fault_tolerance import (
    GenerationChange,
    _form_group,
    _joiner_payload,
    _receive_from_sponsor,
    _send_to_joiners,
)
from gossip_nn.options import GossipOptions
from gossip_nn.progress import GlobalProgress
from gossip_nn.slowmo import slowmo_step
from gossip_nn.validate import check_wrapper_arguments, checked_parameters
from gossip_topology import EvenOddExponential, Generation, RankRecord, Topology, topology_at

__all__ = ["ADPSGD_TOPOLOGY", "BilateralGossipDataParallel"]

ADPSGD_TOPOLOGY = "dynamic-bipartite-exponential"
"""AD-PSGD's default topology: bipartite, one peer per step."""


class _ActiveRole:
    """Keeps one exchange in flight and never waits for it: training keeps its own pace.

    After each optimizer step, if the exchange in flight has come home, the active adopts
    it and sends the next one, a snapshot of the model as it is now; if not, it goes on
    training, and the exchange is adopted after a later step. Adopting adds the
    exchange's move, ``averaged - sent``, to whatever the model has become meanwhile
    (optimizer updates, and forward-pass edits of floating buffers such as BatchNorm
    statistics), so nothing done since the snapshot is lost, and the active moves by
    exactly minus what its partner moved by: the pair's sum is kept.
    """

    def __init__(self, pairs: AsyncBilateral, buf: torch.Tensor, ledger: ExchangeLedger) -> None:
        self.pairs, self.buf, self.ledger = pairs, buf, ledger
        self.adopted = 0
        # fault tolerance: the partner of the exchange in flight, and what each
        # partner's exchanges moved this rank's sum by
        self.partner = -1
        self.moved: dict[int, float] = {}
        self._pending: GossipHandle[torch.Tensor] | None = None
        self._spare: torch.Tensor | None = None  # the last snapshot, reused
        self._sent = torch.empty_like(buf)  # buf when the snapshot in flight was taken

    def sync(self, *, wait: bool = True) -> bool:
        """Adopt the exchange in flight (``wait=False``: only if it is home); whether any."""
        pending = self._pending
        if pending is None or not (wait or pending.is_completed()):
            return False
        averaged = pending.wait()
        if self.pairs.fault_tolerant:
            moved = float(averaged.sum(dtype=torch.float64) - self._sent.sum(dtype=torch.float64))
            self.moved[self.partner] = self.moved.get(self.partner, 0.0) + moved
        self.buf.sub_(self._sent).add_(averaged)  # buf + (averaged - sent)
        self._pending, self._spare = None, averaged
        self.adopted += 1
        return True

    def after_update(self) -> None:
        if self._pending is not None and not self.sync(wait=False):
            return  # still in flight: train on, try again after the next step
        snapshot = self._spare if self._spare is not None else torch.empty_like(self.buf)
        self._spare = None
        snapshot.copy_(self.buf)
        self._sent.copy_(self.buf)
        self.partner = self.ledger.note_request()
        self._pending = self.pairs.request(snapshot)

    def settle(self) -> str:
        """Fault tolerance: adopt the exchange in flight if it completes; if its partner
        is lost it is dropped, and this rank stays as it was (its snapshot comes home).

        Returns:
            What became of it: ``"adopted"``, ``"dropped"`` or ``"none"`` (none in
            flight).
        """
        try:
            return "adopted" if self.sync() else "none"
        except NonFiniteError:
            raise  # poisoned, not lost: the job stops, as without fault tolerance
        except GossipPeerError:
            self._pending = None
            return "dropped"

    def restored(self) -> None:
        self._pending = None


#: Elements a passive syncs at a time on CPU: 1 MiB of float32, in cache.
_SYNC_CHUNK = 1 << 18


class _PassiveRole:
    """Answers from a responder thread on a locked shared copy; syncs with it every step.

    The responder moves ``shared`` by each exchange's half-difference. After each
    optimizer step the training thread adds to ``shared`` what its own model did since
    the last sync (the update, and forward-pass edits of floating buffers), measured
    against ``base``, and adopts ``shared``, chunk by chunk; the forward pass only ever
    sees the training thread's own copy.
    """

    def __init__(self, pairs: AsyncBilateral, buf: torch.Tensor, *, serve: bool = True) -> None:
        self.pairs, self.buf = pairs, buf
        self.shared = buf.detach().to("cpu", copy=True)
        self.base = buf.clone()  # buf as of the last sync: what shared already holds of it
        if serve:
            pairs.serve(self.shared)

    def start(self) -> None:
        """Answer requests from now on (a joiner, once it holds its sponsor's model)."""
        self.pairs.serve(self.shared)

    def sync(self, *, check: bool = True) -> None:
        if check:
            self.pairs.check()  # a responder error surfaces in the training thread
        buf, base, shared, lock = self.buf, self.base, self.shared, self.pairs.lock
        # In cache-sized chunks on CPU (a third less memory traffic than four whole
        # passes), each holding the lock only for its own add.
        step = _SYNC_CHUNK if buf.device.type == "cpu" else buf.numel()
        for start in range(0, buf.numel(), step):
            b, a = buf[start : start + step], base[start : start + step]
            s = shared[start : start + step]
            own = torch.sub(b, a, out=a)  # this rank's moves since the last sync
            own = own.to(s.device)
            with lock:
                s.add_(own)
            # Outside the lock: an element copied before an exchange's move reaches it
            # takes the move at the next sync instead, since shared keeps it and base is
            # taken from buf.
            b.copy_(s)
            a.copy_(b)

    def after_update(self) -> None:
        self.sync()

    def settle(self) -> str:
        """Fault tolerance, once the responder has stopped: adopt the shared value."""
        self.sync(check=False)
        return "none"

    def restored(self) -> None:
        with self.pairs.lock:
            self.shared.copy_(self.buf)
        self.base.copy_(self.buf)


class BilateralGossipDataParallel(DataParallelModule):
    """AD-PSGD: asynchronous pairwise gossip on a bipartite graph.

    Args:
        module: The model, identical on every rank; all trainable parameters must share
            one dtype and device.
        optimizer: The optimizer over exactly ``module``'s trainable parameters.
        options: ``topology`` must be bipartite with one peer per step (by default
            [`ADPSGD_TOPOLOGY`][gossip_nn.ADPSGD_TOPOLOGY]). ``synch_freq`` and
            ``nprocs_per_node > 1`` are errors; ``wire_dtype``, ``mixing`` and
            ``dpsgd_order`` raise a ``UserWarning`` and do nothing.
            ``global_average_every``, ``allreduce_warmup_steps`` and ``slowmo`` average
            exactly at the same *local* iteration of every rank, after bringing every
            pairwise exchange home.
            ``buffers="average"`` (the default) averages floating buffers in each
            pairwise exchange, with the parameters; ``"broadcast"`` is refused, since
            it would be a collective every step.

    Attributes:
        options: The options in force (``GossipOptions()`` when none were given).
        topology: The bipartite graph built from ``options.topology``.

    Raises:
        ValueError: If the topology is not bipartite, the model differs across ranks, or
            an option cannot apply.

    Call [`close`][gossip_nn.BilateralGossipDataParallel.close] on every rank when
    training ends: actives tell their passives they are done, and passives answer until
    every active has.
    """

    algorithm = "adpsgd"
    """``"adpsgd"``."""

    synchronous = False
    """``False``: each rank steps at its own pace; no step is global."""

    def __init__(
        self, module: nn.Module, optimizer: Optimizer, *, options: GossipOptions | None = None
    ) -> None:
        super().__init__()
        check_wrapper_arguments(module, optimizer, options)
        options = GossipOptions(topology=ADPSGD_TOPOLOGY) if options is None else options
        options.check_fault_tolerance("adpsgd")
        if options.synch_freq or options.nprocs_per_node != 1:
            raise ValueError(
                "AD-PSGD is asynchronous already: synch_freq and nprocs_per_node > 1 do not apply"
            )
        if options.buffers == "broadcast":
            raise ValueError(
                "buffers='broadcast' would be a collective every step, which AD-PSGD's "
                "asynchronous ranks do not make; use 'average' or 'local'"
            )
        self.module, self.options = module, options
        self._ft = options.fault_tolerance
        joining = self._ft is not None and self._ft.joined_from is not None
        self._group, params = checked_parameters(
            module, optimizer, "adpsgd", options, same_model=not joining
        )
        averaged = floating_buffers(module) if options.buffers == "average" else []
        if len({(t.dtype, t.device) for t in [*params, *averaged]}) != 1:
            raise ValueError(
                "AD-PSGD needs every trainable parameter"
                + (" and floating buffer" if averaged else "")
                + " in one dtype and on one device"
                + (" (or buffers='local')" if averaged else "")
            )
        n = dist.get_world_size(self._group)
        self.topology = options.build_topology(n) if self._ft is None else self._topology_at(n)
        self._buf = bind_flat([*params, *averaged]).buffers[0]
        self._buffer_sync = BufferSync(module, options.buffers, self._group, bind=not averaged)
        self._compressed: dict[str, Any] = {}
        if options.compression is not None:  # shapes for per-tensor compressors
            self._compressed["layout"] = [t.shape for t in [*params, *averaged]]
            self._compressed["reference"] = common_references([self._buf], self._group)[0]
        self._connect(self.topology, serve=not joining)  # a joiner first needs its model
        edited = sum(p.numel() for p in params)
        self._exact = ExactAveragingSchedule(
            every=options.global_average_every, warmup_steps=options.allreduce_warmup_steps
        )
        self._slowmo = (
            slowmo_step(options.slowmo, [self._buf[:edited]])
            if options.slowmo is not None
            else None
        )
        self._edited = edited
        options.warn_ignored("adpsgd")
        self._closed = False
        self._bounded = False  # fault tolerance: collectives bounded by the gossip timeout
        if self._ft is not None:
            self._ft.use_gossip_timeout(options.timeout)
        self._hook(optimizer)
        if joining:
            self._receive_state()

    def _topology_at(self, n: int) -> Topology:
        """Fault tolerance: the chosen graph at ``n`` ranks; where a bipartite graph does
        not exist at that size (an odd one), the even-odd exponential one."""
        return topology_at(self.options.topology, n, fallback=EvenOddExponential)

    def _connect(self, topology: Topology, *, serve: bool = True) -> None:
        """Build the pairs, the exchange ledger, this rank's role and the global step
        counter on the current group (collectives: every rank builds them together);
        ``serve=False``: a passive answers only once told to (``_PassiveRole.start``)."""
        comm = dataclasses.replace(self.options, mixing=None, wire_dtype=None)
        self._pairs = AsyncBilateral(
            topology,
            self._buf,
            config=comm.comm_config(self.options.process_group),
            **self._compressed,
        )
        self._ledger = ExchangeLedger(self._pairs, topology, self._group, self.options.timeout)
        self._role: _ActiveRole | _PassiveRole = (
            _PassiveRole(self._pairs, self._buf, serve=serve)
            if self._pairs.is_passive
            else _ActiveRole(self._pairs, self._buf, self._ledger)
        )
        self._progress = GlobalProgress(process_group=self.options.process_group)

    def _fixed_topology_reason(self) -> str:
        return (
            "AD-PSGD's pairs are fixed when the wrapper is built (a bipartite graph, one "
            "peer per step); build a new wrapper to gossip on another graph"
        )

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank has sent in pairwise exchanges so far (requests or replies)."""
        return self._pairs.bytes_sent

    @property
    def exchanges(self) -> int:
        """Pairwise exchanges completed so far: adopted (active) or answered (passive).

        An active never waits for an exchange between steps, so on a slow link this
        grows more slowly than its step count; ``close`` adopts the last one.
        """
        if isinstance(self._role, _ActiveRole):
            return self._role.adopted
        return self._pairs.served

    @property
    def is_passive(self) -> bool:
        """Whether this rank answers (passive) rather than asks (active)."""
        return self._pairs.is_passive

    @torch.no_grad()
    def finish_gossip(self) -> None:
        """Adopt every average completed so far (an active waits for its open request)."""
        self._role.sync()

    @torch.no_grad()
    def _settle_for_checkpoint(self) -> None:
        """Bring every pairwise exchange home on both ends before the state is read.

        A collective, at the same local iteration of every rank (as every checkpoint of
        every rank's own state is): an active adopts its open exchange and a passive
        waits until its responder has applied every request sent to it; then no rank
        sends a new request until every rank has adopted its state (a passive could
        otherwise apply an exchange its active's state does not hold). So the saved
        models hold each exchange on both ends or on neither, and their sum is exactly
        the sum of the models trained. After `close`, nothing is in flight.
        """
        if self._closed:
            self._role.sync()
            return
        self._ledger.drain()
        self._role.sync()
        self._ledger.hold()

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far by all ranks together (read from the store).

        Ranks progress at their own pace, so a learning-rate schedule or a stopping rule
        should follow this global count rather than a rank's own step count (what the
        2019 code's shared iteration file was for).
        """
        return self._progress.value

    @torch.no_grad()
    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._ft is None or self._closed:
            return
        if not self._bounded:  # from the first step on, as the push-sum wrapper does
            dist.set_timeout(timedelta(seconds=self.options.timeout), self._group)
            self._bounded = True
            self._ft.membership.mark_ready()
        if self._ft.end_requested() is not None:
            self._recover(None)  # another member asked: change generation between steps

    @torch.no_grad()
    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        exact = self._exact.advance()
        outer = self._slowmo is not None and self._slowmo.advance()
        if exact or outer:
            self._average_exactly(float(optimizer.param_groups[0]["lr"]) if outer else None)
        elif self._ft is None:
            self._role.after_update()
        else:
            try:
                self._role.after_update()
            except NonFiniteError:
                raise
            except GossipPeerError as err:  # a partner is lost: go on without it
                self._recover(err)
        self._progress.add(1)

    # --------------------------------------------------------------- fault tolerance
    def _recover(self, err: GossipPeerError | None) -> None:
        """Settle this generation's exchanges and pair up again with the survivors.

        An active brings its exchange in flight home (or drops it, if its partner is
        lost: it stays as it was) and says goodbye to its partners; a passive serves
        every live partner until its goodbye, then adopts its shared value. So every
        exchange between two survivors counts on both ends or on neither. Then the
        survivors agree on the next generation and rebuild the pairs at its size.
        """
        ft, entered, started = self._ft, time.time(), time.monotonic()
        assert ft is not None
        if err is not None:
            ft.report(err)
        ended = ft.generation
        in_flight = self._role.settle()
        # a passive waits for its partners' goodbyes at most one gossip timeout, so that
        # it checks in within the settle timeout of the first member that did
        self._pairs.finish(timeout=self.options.timeout)
        self._role.settle()
        ft.membership.publish_posted(-1, progress=self._updates)
        reason = ft.end_requested() or "requested"
        following = ft.membership.next()  # MembershipError: too few left, or left out
        lost = [r for r, m in enumerate(ended.members) if m not in following.members]
        moved = sum(
            self._role.moved.get(r, 0.0)
            if isinstance(self._role, _ActiveRole)
            else self._pairs.moved_with(r)
            for r in lost
        )
        # (before the pairs and roles are rebuilt at the new size)
        settled = {in_flight: 1} if isinstance(self._role, _ActiveRole) else self._pairs.ended
        following = self._regroup(following, self._progress.value)
        _send_to_joiners(ft, ended, following, self._state_for_joiner)
        if any(m not in ended.members for m in following.members):
            dist.barrier()  # no request before every joiner holds its model
        ft.history.append(
            GenerationChange(
                ended=ended,
                started=following,
                reason=reason,
                lost=tuple(m for m in ended.members if m not in following.members),
                joined=tuple(m for m in following.members if m not in ended.members),
                at=entered,
                seconds=time.monotonic() - started,
                record=RankRecord(completed=self._updates),
                weight=1.0,
                moved_from_lost=moved,
                settled=settled,
            )
        )

    def _regroup(self, following: Generation, total: int) -> Generation:
        """Pair up in ``following``'s group, on the graph rebuilt at its size; the
        global step count carries over. A member lost while the group forms ends that
        generation too, as many times as it takes; the generation formed is returned."""
        ft = self._ft
        assert ft is not None

        def build(group: dist.ProcessGroup, g: Generation) -> None:
            self._group = self._buffer_sync.group = group
            self._bounded = False
            self.topology = self._topology_at(g.world_size)
            self._connect(self.topology)
            self._progress.load_state_dict({"global_step": total})

        return _form_group(ft, following, self._updates, build)

    def _state_for_joiner(self) -> dict[str, Any]:
        """The module and optimizer state, and the step count, for a joiner."""
        assert self._ft is not None and self._optimizer is not None
        return _joiner_payload(self._ft, self.module, self._optimizer, updates=self._updates)

    def _receive_state(self) -> None:
        """A joiner: take its sponsor's model, optimizer state and step count (AD-PSGD
        has no weight: the joiner starts as a copy of its sponsor)."""
        ft = self._ft
        assert ft is not None and self._optimizer is not None
        self._progress.load_state_dict({"global_step": 0})  # as the members' regroup does
        payload = _receive_from_sponsor(ft, self.module, self._optimizer)
        self._role.restored()  # the shared copy and base follow the received model
        if isinstance(self._role, _PassiveRole):
            self._role.start()
        self._updates = ft.start_step = int(payload["updates"])
        dist.barrier()  # as the members: every joiner holds its model before any request

    def _average_exactly(self, slowmo_lr: float | None) -> None:
        """Every rank takes the exact average (then SlowMo's outer step, if due).

        A collective at the same local iteration of every rank: every exchange is brought
        home first, and no new one starts before every rank holds the average.
        """
        self._ledger.drain()
        self._role.sync()
        dist.all_reduce(self._buf, group=self._group)
        self._buf.div_(dist.get_world_size(self._group))
        if slowmo_lr is not None and self._slowmo is not None:
            self._slowmo.apply([self._buf[: self._edited]], slowmo_lr)
        self._role.restored()
        dist.barrier(group=self._group)

    @contextmanager
    def average_for_eval(self) -> Iterator[None]:
        """Temporarily hold the exact network average (one all-reduce; all ranks enter)."""
        self.finish_gossip()
        with network_average([self._buf], 1.0, self._group), self._buffer_sync.plain_average():
            yield

    def _release_without_waiting(self) -> None:
        # no goodbyes: the job ends; the requester and responder threads are daemons
        self._closed = True

    def close(self) -> None:
        """End gossip on this rank (every rank must call it) and adopt the final state.

        With fault tolerance a partner lost near the end is skipped, and a passive waits
        for every live partner's goodbye (a lost one's connection closes at once).
        """
        if self._closed:
            return
        if self._ft is not None:
            self._role.settle()
            self._closed = True
            self._pairs.finish(timeout=math.inf)
            self._role.settle()
            self._unhook()
            return
        self.finish_gossip()
        self._closed = True
        self._pairs.finish()
        self.finish_gossip()
        self._unhook()

    def _gossip_state(self) -> dict[str, Any]:
        state = {
            "ps_weight": 1.0,
            "gossip": [self._pairs.state_dict()],
            "progress": self._progress.state_dict(),
        }
        save_outer_state(state, self._exact, self._slowmo)
        return state

    @torch.no_grad()
    def _load_gossip_state(self, state: dict[str, Any]) -> None:
        """Restore the exchange counter and (a collective) the global step count."""
        self._pairs.load_state_dict(state["gossip"][0])
        self._role.restored()
        if "progress" in state:
            self._progress.load_state_dict(state["progress"])
        load_outer_state(state, self._exact, self._slowmo)
