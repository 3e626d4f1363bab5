"""Options shared by every data-parallel wrapper, as one small frozen dataclass."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import torch
from torch.distributed import ProcessGroup

from gossip_comm import Compressor, GossipConfig
from gossip_nn.fault_tolerance import FaultTolerance
from gossip_nn.slowmo import SlowMoOptions
from gossip_topology import (
    LEGACY_IDS,
    TOPOLOGY_NAMES,
    Mixing,
    OuterOptimizer,
    Topology,
    check_doubly_stochastic,
    make_topology,
)
from gossip_topology._checks import check_int

__all__ = [
    "AVERAGE_BY",
    "BUFFER_MODES",
    "DPSGD_ORDERS",
    "FAULT_TOLERANT_ALGORITHMS",
    "GossipOptions",
]

AVERAGE_BY: tuple[str, ...] = ("allreduce", "sgp", "dpsgd")
"""How local SGD and DiLoCo average: exactly, or by one push-sum or push-pull gossip round."""

BUFFER_MODES: tuple[str, ...] = ("average", "local", "broadcast")
"""What happens to floating-point buffers (BatchNorm statistics); see `GossipOptions`."""

DPSGD_ORDERS: tuple[str, ...] = ("mix-then-update", "update-then-mix")
"""D-PSGD's two update orders; see `GossipOptions`."""

FAULT_TOLERANT_ALGORITHMS: tuple[str, ...] = ("sgp", "osgp", "dpsgd", "adpsgd")
"""The algorithms that survive a lost rank with `GossipOptions.fault_tolerance`."""

# The options each algorithm reads; any other option set to a non-default value does
# nothing there, and the wrapper says so with a UserWarning.
_COMMON = {"process_group", "buffers"}
_GOSSIP = _COMMON | {
    "topology",
    "peers_per_itr",
    "legacy_phone_book",
    "mixing",
    "wire_dtype",
    "nprocs_per_node",
    "timeout",
    "chunk_bytes",
    "check_finite",
    "global_average_every",
    "allreduce_warmup_steps",
    "slowmo",
    "compression",
    "consensus_step",
}
_OUTER = _COMMON | {
    "average_every",
    "average_by",
    "topology",
    "peers_per_itr",
    "legacy_phone_book",
    "mixing",
    "wire_dtype",
    "timeout",
    "chunk_bytes",
    "check_finite",
}
_USED_BY: dict[str, frozenset[str]] = {
    "ar": frozenset(_COMMON),
    "sgp": frozenset(_GOSSIP | {"fault_tolerance"}),
    "osgp": frozenset(_GOSSIP | {"synch_freq", "fault_tolerance"}),
    "dpsgd": frozenset(_GOSSIP | {"dpsgd_order", "fault_tolerance"}),
    # asynchronous pairs: no overlap bound, no hierarchy, and a plain average of each pair
    "adpsgd": frozenset(
        _GOSSIP - {"mixing", "wire_dtype", "nprocs_per_node"} | {"fault_tolerance"}
    ),
    # many local steps, then one exact average (and, for DiLoCo, an outer step)
    # (with gossip averaging, the graph and communication options too)
    "localsgd": frozenset(_OUTER),
    "diloco": frozenset(_OUTER | {"outer"}),
}


@dataclass(frozen=True, kw_only=True)
class GossipOptions:
    r"""How a model gossips. The algorithm itself is chosen apart from these options.

    Attributes:
        topology: A `gossip_topology.Topology`, a registry name, or a 2019 graph id.
        peers_per_itr: Out-peers per step when ``topology`` is a name or id.
        legacy_phone_book: With a 2019 graph id (0-5) as ``topology``: build the phone
            books exactly as the 2019 code did (see `gossip_topology.make_topology`).
        mixing: Mixing rule; uniform when ``None``.
        synch_freq: OSGP only: at most this many further steps may pass before a step's
            messages are folded in; 0 folds them at the next step.
        wire_dtype: ``None``, ``torch.bfloat16`` or ``torch.float16`` on the wire.
        compression: Send compressed differences from per-edge public copies instead of
            the model (CHOCO-style; the network average stays exact whatever the
            compressor): a [`gossip_comm.Compressor`][gossip_comm.Compressor] or a spec
            string, ``"bf16"``, ``"fp16"``, ``"int8"``, ``"int8:stochastic"``,
            ``"topk:F"`` or ``"lowrank:R"``; see the "Sending less" page. Every gossip
            algorithm (AD-PSGD's pairs both send compressed differences and apply the
            same decoded values, so each pair's sum is conserved); ``None`` sends the
            model itself.
        consensus_step: With ``compression``, the consensus step size in (0, 1]; the
            compressor's default when ``None``.
        nprocs_per_node: Processes per node for hierarchical gossip (1: every process
            gossips).
        process_group: Group to train in; WORLD when ``None``.
        timeout: Seconds to wait for one gossip step before raising.
        chunk_bytes: Size of the pieces large messages travel in (see
            [`GossipConfig`][gossip_comm.GossipConfig]); ``None``: the backend's default.
        check_finite: Check every received message for NaN or Inf and raise
            [`NonFiniteError`][gossip_comm.NonFiniteError], naming the receiving rank,
            the sender and the step, before the value is mixed in (one reduction per
            message; off by default).
        buffers: What happens to floating-point buffers such as BatchNorm's running
            mean and variance. ``"average"`` (the default, chosen by the measurement in
            the docs' benchmarks page) gossips them with the parameters every step;
            ``"local"`` leaves each rank's own; ``"broadcast"`` copies the group's rank
            0 buffers to every rank after each step, like DDP's ``broadcast_buffers``.
            Integer buffers (``num_batches_tracked``) are never averaged.
            [`average_for_eval`][gossip_nn.DataParallelModule.average_for_eval] averages
            floating buffers exactly in every mode.
        dpsgd_order: D-PSGD only. ``"mix-then-update"`` (Lian et al.:
            $x \leftarrow Wx - \gamma g(x)$) or ``"update-then-mix"`` (the 2019 code:
            $x \leftarrow W(x - \gamma g(x))$, which equals AR-SGD on the complete graph).
        global_average_every: Every this many steps, replace gossip by an exact
            all-reduce average of the model (Gossip-PGA, Chen et al., ICML 2021,
            [arXiv:2105.09080](https://arxiv.org/abs/2105.09080)); 0 never.
        allreduce_warmup_steps: Run the first this many steps as AR-SGD (the exact
            average after every update), then gossip; 0 gossips from the start.
        slowmo: A slow momentum outer step every ``slowmo.every`` iterations (see
            [`SlowMoOptions`][gossip_nn.SlowMoOptions]); ``None`` for none.
        average_every: Local SGD and DiLoCo: inner steps between two averages.
        average_by: Local SGD and DiLoCo: ``"allreduce"`` (the exact average),
            ``"sgp"`` (one push-sum gossip round on ``topology``: no global collective)
            or ``"dpsgd"`` (one push-pull round, a doubly-stochastic graph).
        outer: DiLoCo: the outer optimizer acting on the averaged pseudo-gradient
            ([`OuterOptimizer`][gossip_topology.OuterOptimizer]); ``None``: DiLoCo's
            Nesterov step (learning rate 0.7, momentum 0.9).
        fault_tolerance: Survive lost ranks (see
            [`FaultTolerance`][gossip_nn.FaultTolerance]); SGP, OSGP, D-PSGD and
            AD-PSGD, on gloo.
            ``None``: a lost rank raises on its peers, and the job ends.

    Raises:
        TypeError: If ``topology`` or an integer option has the wrong type.
        ValueError: On out-of-range values, at construction.
    """

    topology: Topology | str | int = "npeer-dynamic-directed-exponential"
    peers_per_itr: int = 1
    legacy_phone_book: bool = False
    mixing: Mixing | None = None
    synch_freq: int = 0
    wire_dtype: torch.dtype | None = None
    nprocs_per_node: int = 1
    process_group: ProcessGroup | None = None
    timeout: float = 300.0
    chunk_bytes: int | None = None
    check_finite: bool = False
    buffers: str = "average"
    dpsgd_order: str = "mix-then-update"
    global_average_every: int = 0
    allreduce_warmup_steps: int = 0
    slowmo: SlowMoOptions | None = None
    compression: Compressor | str | None = None
    consensus_step: float | None = None
    average_every: int = 32
    average_by: str = "allreduce"
    outer: OuterOptimizer | None = None
    fault_tolerance: FaultTolerance | None = None

    def __post_init__(self) -> None:
        check_int("peers_per_itr", self.peers_per_itr, minimum=1)
        check_int("nprocs_per_node", self.nprocs_per_node, minimum=1)
        check_int("synch_freq", self.synch_freq, minimum=0)
        check_int("global_average_every", self.global_average_every, minimum=0)
        check_int("allreduce_warmup_steps", self.allreduce_warmup_steps, minimum=0)
        check_int("average_every", self.average_every, minimum=1)
        if self.outer is not None and not isinstance(self.outer, OuterOptimizer):
            raise TypeError(
                "outer must be a gossip_topology.OuterOptimizer or None; got "
                f"{type(self.outer).__name__}"
            )
        if not isinstance(self.legacy_phone_book, bool):
            raise TypeError(
                f"legacy_phone_book must be a bool; got {type(self.legacy_phone_book).__name__}"
            )
        if self.slowmo is not None and not isinstance(self.slowmo, SlowMoOptions):
            raise TypeError(
                f"slowmo must be a SlowMoOptions or None; got {type(self.slowmo).__name__}"
            )
        for name, allowed in (
            ("buffers", BUFFER_MODES),
            ("dpsgd_order", DPSGD_ORDERS),
            ("average_by", AVERAGE_BY),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}"
                )
        if not isinstance(self.topology, Topology | str | int) or isinstance(self.topology, bool):
            raise TypeError(
                f"topology must be a Topology, a name or a graph id; got {type(self.topology)}"
            )
        self._check_topology_name()
        if self.process_group is not None and not isinstance(self.process_group, ProcessGroup):
            raise TypeError(
                "process_group must be a torch.distributed.ProcessGroup or None; got "
                f"{type(self.process_group).__name__}"
            )
        if self.fault_tolerance is not None and not isinstance(
            self.fault_tolerance, FaultTolerance
        ):
            raise TypeError(
                "fault_tolerance must be a FaultTolerance or None; got "
                f"{type(self.fault_tolerance).__name__}"
            )
        self.comm_config(None)  # the communication options are checked in one place

    def _check_topology_name(self) -> None:
        """A name or graph id must be one the registry builds, and ``legacy_phone_book``
        needs a phone-book graph (the 2019 graphs, ids 0-5): checked here, before any
        world size is known."""
        if isinstance(self.topology, Topology):
            if self.legacy_phone_book:
                raise ValueError(
                    "legacy_phone_book=True applies only to a topology given by name or "
                    f"2019 graph id; got {self.topology!r}"
                )
            return
        if isinstance(self.topology, int):
            if self.topology not in LEGACY_IDS:
                raise ValueError(
                    f"topology: unknown graph id {self.topology}; known ids are "
                    f"{sorted(LEGACY_IDS)}"
                )
            return
        key = self.topology.strip().lower().replace("_", "-")  # as make_topology reads it
        if key not in TOPOLOGY_NAMES:
            raise ValueError(
                f"topology: unknown topology {self.topology!r}; choose one of "
                f"{', '.join(TOPOLOGY_NAMES)}"
            )
        if self.legacy_phone_book and key not in LEGACY_IDS.values():
            raise ValueError(
                "legacy_phone_book=True applies only to the 2019 graphs 0-5 "
                f"({', '.join(LEGACY_IDS.values())}); got topology {self.topology!r}"
            )

    def check_world_size(self, algorithm: str, world_size: int) -> Topology | None:
        """Check, before any process group exists, what a wrapper for ``algorithm`` would
        refuse in a group of ``world_size`` ranks: a hierarchy that does not divide it, a
        graph that does not exist at that size (too many peers, an odd bipartite graph),
        or one the algorithm cannot gossip on.

        A launcher knows the world size before it starts any process; it asks here, so a
        job that cannot work stops before any rank joins a group.

        Args:
            algorithm: One of ``gossip_nn.ALGORITHMS``.
            world_size: The ranks the group will hold.

        Returns:
            The topology the wrapper would build (``None`` for ``"ar"``, ``"localsgd"``
            and ``"diloco"``, which average exactly and have none).

        Raises:
            TypeError: If ``world_size`` is not an int.
            ValueError: Naming the option and the world size.
        """
        check_int("world_size", world_size, minimum=1)
        if algorithm not in _USED_BY:
            raise ValueError(f"algorithm must be one of {', '.join(_USED_BY)}; got {algorithm!r}")
        if algorithm == "ar" or (
            algorithm in ("localsgd", "diloco") and self.average_by == "allreduce"
        ):  # exact averages: no graph
            return None
        if world_size % self.nprocs_per_node:
            raise ValueError(
                f"nprocs_per_node={self.nprocs_per_node} must divide the world size "
                f"{world_size} (every node holds the same number of processes)"
            )
        participants = world_size // self.nprocs_per_node
        try:
            topology = self.build_topology(participants)
        except ValueError as exc:
            raise ValueError(
                f"topology {self.topology!r} with peers_per_itr={self.peers_per_itr} does "
                f"not exist for {participants} gossiping participants: {exc}"
            ) from None
        if algorithm == "adpsgd" and (not topology.is_bipartite or topology.peers_per_itr != 1):
            raise ValueError(
                f"topology: AD-PSGD needs a bipartite graph with one peer per step; "
                f"{topology!r} is not: try dynamic-bipartite-exponential"
            )
        if algorithm == "dpsgd" or self.average_by == "dpsgd":
            check_doubly_stochastic(topology, self.mixing, owner="topology: D-PSGD")
        return topology

    def check_fault_tolerance(self, algorithm: str, *, planned: bool = False) -> None:
        """Refuse ``fault_tolerance`` where it cannot work yet, naming why.

        Args:
            algorithm: The algorithm these options are for.
            planned: Check as if ``fault_tolerance`` were set (a command line checks its
                flags before any process, and so any store, exists).

        Raises:
            ValueError: For AR-SGD, or an option that needs every rank in a collective
                (or state a lost rank takes with it).
        """
        if self.fault_tolerance is None and not planned:
            return
        if algorithm == "ar":
            raise ValueError(
                "fault_tolerance: AR-SGD all-reduces over every rank, so a lost rank stops "
                "every collective; train with a gossip algorithm to survive one"
            )
        if algorithm not in FAULT_TOLERANT_ALGORITHMS:
            raise ValueError(
                f"fault_tolerance: {algorithm!r} cannot survive a lost rank yet; "
                f"supported: {', '.join(FAULT_TOLERANT_ALGORITHMS)}"
            )
        conflicts = [
            name
            for name, present in (
                ("compression", self.compression is not None),
                ("global_average_every", self.global_average_every > 0),
                ("allreduce_warmup_steps", self.allreduce_warmup_steps > 0),
                ("slowmo", self.slowmo is not None),
                ("nprocs_per_node", self.nprocs_per_node > 1),
                ("process_group", self.process_group is not None),
                ("buffers='broadcast'", self.buffers == "broadcast"),
            )
            if present
        ]
        if conflicts:
            raise ValueError(
                f"fault_tolerance does not combine with {', '.join(conflicts)} yet: each "
                "needs every rank in a collective, or a group that outlives a generation"
            )

    def ignored_by(self, algorithm: str) -> list[str]:
        """The options set away from their defaults that ``algorithm`` does not use."""
        used = _USED_BY[algorithm]
        return [
            f.name
            for f in fields(self)
            if f.name not in used and getattr(self, f.name) != f.default
        ]

    def warn_ignored(self, algorithm: str, *, stacklevel: int = 3) -> None:
        """Warn (``UserWarning``) once per option that ``algorithm`` ignores."""
        for name in self.ignored_by(algorithm):
            warnings.warn(
                f"{name}={getattr(self, name)!r} does nothing with algorithm {algorithm!r}; "
                "leave it unset",
                UserWarning,
                stacklevel=stacklevel,
            )

    def comm_config(self, process_group: ProcessGroup | None) -> GossipConfig:
        """The [`GossipConfig`][gossip_comm.GossipConfig] for gossip in ``process_group``.

        Raises:
            ValueError: If ``timeout``, ``wire_dtype``, ``chunk_bytes``, ``compression`` or
                ``consensus_step`` is invalid.
        """
        return GossipConfig(
            fault_tolerant=self.fault_tolerance is not None,
            mixing=self.mixing,
            process_group=process_group,
            wire_dtype=self.wire_dtype,
            timeout=self.timeout,
            chunk_bytes=self.chunk_bytes,
            check_finite=self.check_finite,
            compression=self.compression,
            consensus_step=self.consensus_step,
        )

    def build_topology(self, world_size: int) -> Topology:
        """The topology for ``world_size`` gossiping participants.

        Raises:
            ValueError: If a given `Topology` has another ``world_size``.
        """
        if isinstance(self.topology, Topology):
            if self.topology.world_size != world_size:
                raise ValueError(
                    f"topology has world_size={self.topology.world_size} but "
                    f"{world_size} participants gossip; build it for {world_size}"
                )
            return self.topology
        return make_topology(
            self.topology,
            world_size,
            self.peers_per_itr,
            legacy_phone_book=self.legacy_phone_book,
        )
