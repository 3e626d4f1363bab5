r"""GossipDataParallel: SGP, OSGP and D-PSGD behind the plain PyTorch training loop.

The wrapped module's trainable parameters are re-bound as views into one flat buffer per
dtype and device, so gossip touches them without packing. Between optimizer steps the
parameters hold the de-biased model $z_i = x_i / w_i$ that forward and backward see. An
optimizer *pre*-step hook and a *post*-step hook hand the buffers to the algorithm's step
object (see ``gossip_nn._steps``), so the training loop is unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gossip_comm import (
    GossipPeerError,
    comm_device_for,
    common_references,
)
from gossip_nn._base import (
    DataParallelModule,
    bind_flat,
    load_outer_state,
    make_ddp,
    network_average,
    save_outer_state,
)
from gossip_nn._buffers import BufferSync
from gossip_nn._steps import GOSSIP_ALGORITHMS, Compression, GossipStep, build_step
from gossip_nn.averaging import ExactAveragingSchedule
from gossip_nn.fault_tolerance import (
    GenerationChange,
    _form_group,
    _gossip_group_of,
    _joiner_payload,
    _receive_from_sponsor,
    _send_to_joiners,
    _settled_record,
)
from gossip_nn.hierarchy import Hierarchy, Shards, build_hierarchy
from gossip_nn.options import GossipOptions
from gossip_nn.slowmo import slowmo_step
from gossip_nn.validate import check_wrapper_arguments, checked_parameters
from gossip_topology import Generation, Topology, topology_at

__all__ = ["GossipDataParallel"]


class GossipDataParallel(DataParallelModule):
    """Decentralised data parallelism by gossip: SGP, OSGP or D-PSGD.

    Args:
        module: The model, identical on every rank.
        optimizer: The optimizer over exactly ``module``'s trainable parameters; the
            wrapper hooks its ``step``.
        algorithm: ``"sgp"`` (push-sum), ``"osgp"`` (push-sum overlapped with the next
            step's computation, at most ``options.synch_freq`` steps stale) or
            ``"dpsgd"`` (push-pull on a doubly-stochastic graph).
        options: Topology, mixing and communication settings.

    Attributes:
        options: The options in force (``GossipOptions()`` when none were given).
        topology: The graph built from ``options.topology`` for the ranks that gossip.

    Raises:
        ValueError: If the model differs across ranks, the optimizer does not own the
            parameters, the topology does not fit the group or the algorithm, or an
            option does not apply to the algorithm.
        RuntimeError: If ``torch.distributed`` is not initialised.

    Example:
        ```python
        model = GossipDataParallel(net, opt, options=GossipOptions(topology="ring"))
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()          # gossip happens here, through the optimizer's hooks
        opt.zero_grad()
        ```
    """

    _ddp: DistributedDataParallel | None

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        algorithm: str = "sgp",
        options: GossipOptions | None = None,
    ) -> None:
        super().__init__()
        check_wrapper_arguments(module, optimizer, options)
        if algorithm not in GOSSIP_ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {', '.join(GOSSIP_ALGORITHMS)} (the gossip "
                f"algorithms; AR-SGD and AD-PSGD have wrappers of their own); got {algorithm!r}"
            )
        options = GossipOptions() if options is None else options
        options.check_fault_tolerance(algorithm)
        self.module, self.options = module, options
        ft = options.fault_tolerance
        joining = ft is not None and ft.joined_from is not None  # its model comes from a member
        self._group, self._params = checked_parameters(
            module, optimizer, algorithm, options, same_model=not joining
        )
        self._hierarchy: Hierarchy | None = None
        self._gossip_group, self._participants = self._group, dist.get_world_size(self._group)
        if ft is not None:
            self._gossip_group = _gossip_group_of(self._group)
        if options.nprocs_per_node > 1:
            self._hierarchy = build_hierarchy(self._group, options.nprocs_per_node)
            self._gossip_group = self._hierarchy.plane_group
            self._participants = self._hierarchy.nodes
        self.topology = (
            topology_at(options.topology, self._participants, options.peers_per_itr)
            if joining
            else options.build_topology(self._participants)
        )
        self._flat = bind_flat(self._params)
        self._buffer_sync = BufferSync(module, options.buffers, self._group)
        self._shards = Shards(self._flat.buffers + self._buffer_sync.gossiped, self._hierarchy)
        self._hold_ddp(  # DDP averages gradients inside the node
            make_ddp(module, self._hierarchy.node_group, sync_buffers=False)
            if self._hierarchy is not None
            else None
        )
        self._compression = self._plan_compression()
        self._sent_before = 0  # bytes sent by the steps that set_topology replaced
        # fault-tolerant gossip always sends the weight: say so in the state, so that
        # every member (a joiner too) reloads a checkpoint the same way
        self._step = self._build_step(
            algorithm, self.topology, always_send_weight=options.fault_tolerance is not None
        )
        self._exact = ExactAveragingSchedule(
            every=options.global_average_every, warmup_steps=options.allreduce_warmup_steps
        )
        self._slowmo = (
            slowmo_step(options.slowmo, self._flat.buffers) if options.slowmo is not None else None
        )
        options.warn_ignored(algorithm)
        self._ft = options.fault_tolerance
        self._gossip_from = 0  # fault tolerance: the step survivors gossip together again
        self._bounded = False  # collectives bounded by the gossip timeout (from step 1)
        if self._ft is not None:
            self._check_fault_tolerance()
        self._hook(optimizer)
        if joining:
            self._receive_state()

    def _check_fault_tolerance(self) -> None:
        assert self._ft is not None
        if len(self._step.gossipers) != 1:
            raise ValueError(
                "fault_tolerance needs the gossiped state in one flat buffer (one dtype and "
                f"device, and buffers='local' for a model with floating buffers); this "
                f"model gossips {len(self._step.gossipers)} buffers"
            )
        self._ft.use_gossip_timeout(self.options.timeout)

    def _bound_collectives(self) -> None:
        """Fault tolerance, once training: the generation's collectives time out after
        the gossip ``timeout`` too (the group's own timeout covers its rendezvous and the
        set-up), so that a member blocked in one on a member that left notices within
        the settle timeout."""
        dist.set_timeout(timedelta(seconds=self.options.timeout), self._group)
        self._bounded = True
        assert self._ft is not None
        self._ft.membership.mark_ready()

    def _plan_compression(self) -> Compression | None:
        """Layouts and common starting values of the gossiped views, with compression."""
        if self.options.compression is None:
            return None
        shapes = [[self._flat.shapes[i] for i in idx] for idx in self._flat.indices]
        shapes += [[b.shape] for b in self._buffer_sync.gossiped]
        return Compression(
            layouts=self._shards.layouts(shapes),
            references=common_references(self._shards.views, self._gossip_group),
        )

    def _build_step(
        self, algorithm: str, topology: Topology, always_send_weight: bool = False
    ) -> GossipStep:
        self._weights_travel = always_send_weight
        # every rebuild (set_topology, a reload) keeps the common start: an edge first
        # used later starts from it on both ends, as the first edges did
        compression = self._compression
        return build_step(
            algorithm,
            self._shards,
            topology,
            self.options.comm_config(self._gossip_group),
            synch_freq=self.options.synch_freq,
            dpsgd_order=self.options.dpsgd_order,
            always_send_weight=always_send_weight,
            compression=compression,
        )

    def _weights_unequal(self) -> bool:
        """Whether any gossip participant's push-sum weight differs from 1 (a collective)."""
        device = comm_device_for(self._gossip_group, None)
        off = torch.tensor([abs(self._step.weight - 1.0)], dtype=torch.float64, device=device)
        dist.all_reduce(off, op=dist.ReduceOp.MAX, group=self._gossip_group)
        return bool(off.item() > 0.0)

    @property
    def algorithm(self) -> str:
        """``"sgp"``, ``"osgp"`` or ``"dpsgd"``."""
        return self._step.algorithm

    @property
    def ps_weight(self) -> float:
        """This rank's push-sum weight ``w_i`` (always 1 for D-PSGD)."""
        return self._step.weight

    @property
    def in_flight(self) -> int:
        """OSGP: gossip steps sent but not yet folded in (0 for SGP and D-PSGD)."""
        return self._step.in_flight

    # ------------------------------------------------------------------- hooks
    @property
    def bytes_sent(self) -> int:
        """Bytes this process has sent in gossip messages so far (exact averages and
        in-node traffic not included), over every topology it has gossiped on."""
        return self._sent_before + self._step.bytes_sent

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module (through DDP over the node, with ``nprocs_per_node > 1``)."""
        if self._ddp is not None:
            return self._ddp(*args, **kwargs)
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._ft is not None and not self._bounded:
            self._bound_collectives()
        if self._ft is not None and self._ft.end_requested() is not None:
            self._recover(None)  # another member asked: change generation between steps
        self._guarded(lambda: self._step.before_update(exact=self._exact.peek()))

    @torch.no_grad()
    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._guarded(lambda: self._step.after_update(exact=self._exact.advance()))
        if self._slowmo is not None and self._slowmo.advance():
            self._step.exact_average()
            self._slowmo.apply(self._flat.buffers, float(optimizer.param_groups[0]["lr"]))
        self._buffer_sync.after_step()

    # --------------------------------------------------------------- fault tolerance
    def _guarded(self, gossip: Callable[[], None]) -> None:
        """Run one gossip phase; with fault tolerance a failed exchange moves the job
        to its next generation instead of ending it."""
        if self._ft is None:
            gossip()
            return
        if self._updates < self._gossip_from:
            return  # behind the other survivors: catch up without gossip
        try:
            gossip()
        except GossipPeerError as err:
            self._recover(err)

    def _recover(self, err: GossipPeerError | None) -> None:
        """Settle this generation with the survivors and gossip on in the next one."""
        ft, entered, started = self._ft, time.time(), time.monotonic()
        assert ft is not None
        if err is not None:
            ft.report(err)
        ended, step = ft.generation, self._step
        interrupted, posted = step.interrupted, step.gossip_steps - 1
        # this optimizer step counts as done once its failed gossip is settled
        ft.membership.publish_posted(posted, progress=self._updates + (err is not None))
        reason = ft.end_requested() or "requested"
        following = ft.membership.next()  # MembershipError: too few left, or left out
        settled = step.settle(ft.membership.posted(ended)) if interrupted else []
        self._gossip_from = ft.membership.resume_step(ended)
        record = _settled_record(ended, following, posted + 1 - interrupted, settled)
        weight = step.weight
        self._retire(step)
        following = self._regroup(following, step.algorithm, weight)
        self._hand_over(ended, following)
        ft.history.append(
            GenerationChange(
                ended=ended,
                started=following,
                reason=reason,
                lost=tuple(m for m in ended.members if m not in following.members),
                joined=tuple(m for m in following.members if m not in ended.members),
                at=entered,
                seconds=time.monotonic() - started,
                record=record,
                weight=self._step.weight,
                exchanges=tuple((s.step, s.returned, s.received) for s in settled),
            )
        )

    def _regroup(self, following: Generation, algorithm: str, weight: float) -> Generation:
        """Gossip in ``following``'s group, on the graph rebuilt at its size.

        A member that dies before the group has formed (the group's rendezvous or the
        gossipers' agreement fails) ends that generation too: the others move on without
        it, as many times as it takes, and the generation they gossip in is returned.
        """
        ft, chosen = self._ft, self.topology
        assert ft is not None

        def build(group: dist.ProcessGroup, g: Generation) -> None:
            self._group = self._buffer_sync.group = group
            self._gossip_group = _gossip_group_of(group)
            self._bounded = False
            self.topology = topology_at(chosen, g.world_size)
            self._step = self._build_step(algorithm, self.topology, always_send_weight=True)

        following = _form_group(ft, following, self._gossip_from, build)
        self._participants = following.world_size
        self._step.weight = weight  # the schedule starts afresh at the new size
        return following

    def _hand_over(self, ended: Generation, following: Generation) -> None:
        """Give each joiner this process sponsors half of its push-sum mass: the same
        de-biased model and half the weight, with the optimizer state and step counts."""
        ft = self._ft
        assert ft is not None

        def state() -> dict[str, Any]:
            self._step.weight /= 2  # x / 2 stays here, x / 2 leaves: the sum is unchanged
            return self._state_for_joiner()

        _send_to_joiners(ft, ended, following, state)

    def _state_for_joiner(self) -> dict[str, Any]:
        """What a joiner receives: the module's state (de-biased), the optimizer's, this
        process's weight, the step counts and the application's ``extra_state``."""
        assert self._optimizer is not None
        return _joiner_payload(
            self._ft,
            self.module,
            self._optimizer,
            weight=self._step.weight,
            updates=max(self._updates, self._gossip_from),
            gossip_from=self._gossip_from,
        )

    def _receive_state(self) -> None:
        """A joiner: take the model, optimizer state, weight and step counts its sponsor
        hands over (the sponsor's half of its push-sum mass)."""
        ft = self._ft
        assert ft is not None and self._optimizer is not None
        payload = _receive_from_sponsor(ft, self.module, self._optimizer)
        self._step.weight = float(payload["weight"])
        self._updates = ft.start_step = int(payload["updates"])
        self._gossip_from = int(payload["gossip_from"])

    # --------------------------------------------------------------- lifecycle
    def _settle_for_checkpoint(self) -> None:
        """Nothing to do: OSGP's rounds in flight are saved as they are."""

    @torch.no_grad()
    def finish_gossip(self) -> None:
        """Fold in every in-flight overlapped message; parameters stay de-biased."""
        self._step.finish()

    @contextmanager
    def average_for_eval(self) -> Iterator[None]:
        r"""Temporarily replace every rank's parameters with the exact network average.

        Computes $\sum_i x_i / \sum_i w_i$ with one all-reduce per buffer (a collective:
        every rank must enter) and restores the local de-biased parameters on exit.
        """
        self.finish_gossip()
        gossiped = self._flat.buffers + self._buffer_sync.gossiped
        with (
            network_average(gossiped, self.ps_weight, self._group),
            self._buffer_sync.plain_average(),
        ):
            yield

    @torch.no_grad()
    def set_topology(
        self, topology: Topology | str | int | None = None, *, peers_per_itr: int | None = None
    ) -> None:
        """Gossip on another graph from the next step on (the 2019 peers-per-iteration schedule).

        A collective at an iteration boundary: every rank must call it between the same
        two optimizer steps, with the same arguments. Messages still in flight (OSGP)
        are folded in first, so no push-sum mass is lost; the push-sum weight carries
        over, and the step counter goes on, so a dynamic graph starts at the phase of
        the current step (``step mod period``) rather than at its beginning.

        Args:
            topology: A `gossip_topology.Topology` for the gossip participants, a
                registry name or a 2019 graph id; ``None`` keeps the graph in
                ``options.topology`` (to change only ``peers_per_itr``).
            peers_per_itr: Out-peers per step for a name or id; the current value when
                ``None``.

        Raises:
            ValueError: If the graph does not suit the algorithm or the group, or
                ``peers_per_itr`` disagrees with a given `Topology` (or, without
                ``topology``, with the built `Topology` the wrapper gossips on).
        """
        kept = topology is None
        if topology is None:
            topology = self.options.topology
        if (
            isinstance(topology, Topology)
            and peers_per_itr is not None
            and peers_per_itr != topology.peers_per_itr
        ):
            raise ValueError(
                f"peers_per_itr={peers_per_itr} disagrees with the "
                f"{'current' if kept else 'given'} topology's "
                f"peers_per_itr={topology.peers_per_itr}; "
                + (
                    "a built Topology has its peers: pass a registry name or id to change them"
                    if kept
                    else "pass one or the other"
                )
            )
        k = self.options.peers_per_itr if peers_per_itr is None else peers_per_itr
        if isinstance(topology, Topology):
            k = topology.peers_per_itr
        options = dataclasses.replace(self.options, topology=topology, peers_per_itr=k)
        new_topology = options.build_topology(self._participants)
        self.finish_gossip()
        carried = self._step.state_dict()  # push-sum weight and step counters
        # a regular graph keeps equal weights equal and need not send them; weights
        # already unequal (after a non-regular graph) must travel from now on
        unequal = self._step.algorithm != "dpsgd" and self._weights_unequal()
        old, self.options = self._step, options
        try:
            self._step = self._build_step(old.algorithm, new_topology, unequal)
        except Exception:
            self.options = dataclasses.replace(options, topology=self.topology)
            raise
        self._step.load_state_dict(carried)
        self._retire(old)
        self.topology = new_topology

    def _retire(self, old: GossipStep) -> None:
        """Close a replaced step, keeping the count of what it sent."""
        self._sent_before += old.bytes_sent
        old.close()

    def _gossip_state(self) -> dict[str, Any]:
        state = self._step.state_dict()
        state["weights_travel"] = self._weights_travel
        save_outer_state(state, self._exact, self._slowmo)
        return state

    def _load_gossip_state(self, state: dict[str, Any]) -> None:
        if state.get("weights_travel") and not self._weights_travel:
            # saved after a switch to a regular graph with unequal weights: keep sending
            # them (every rank loads the same flag, so every rank rebuilds)
            old = self._step
            self._step = self._build_step(old.algorithm, self.topology, True)
            self._retire(old)
        self._step.load_state_dict(state)
        load_outer_state(state, self._exact, self._slowmo)

    def _release_without_waiting(self) -> None:
        self._step.close(wait=False)

    def close(self) -> None:
        """Finish gossip, remove the optimizer hooks and release gossip threads."""
        self.finish_gossip()
        self._unhook()
        self._step.close()
