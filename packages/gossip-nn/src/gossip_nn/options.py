"""Options shared by every data-parallel wrapper, as one small frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed import ProcessGroup

from gossip_comm import GossipConfig
from gossip_topology import Mixing, Topology, check_int, make_topology

__all__ = ["GossipOptions"]


@dataclass(frozen=True, kw_only=True)
class GossipOptions:
    """How a model gossips. The algorithm itself is chosen apart from these options.

    Attributes:
        topology: A `gossip_topology.Topology`, a registry name, or a 2019 graph id.
        peers_per_itr: Out-peers per step when ``topology`` is a name or id.
        mixing: Mixing rule; uniform when ``None``.
        synch_freq: OSGP only: at most this many further steps may pass before a step's
            messages are folded in; 0 folds them at the next step.
        wire_dtype: ``None``, ``torch.bfloat16`` or ``torch.float16`` on the wire.
        nprocs_per_node: Processes per node for hierarchical gossip (1: every process
            gossips).
        process_group: Group to train in; WORLD when ``None``.
        timeout: Seconds to wait for one gossip step before raising.
        chunk_bytes: Size of the pieces large messages travel in (see
            [`GossipConfig`][gossip_comm.GossipConfig]); ``None``: the backend's default.

    Raises:
        TypeError: If ``topology`` or an integer option has the wrong type.
        ValueError: On out-of-range values, at construction.
    """

    topology: Topology | str | int = "npeer-dynamic-directed-exponential"
    peers_per_itr: int = 1
    mixing: Mixing | None = None
    synch_freq: int = 0
    wire_dtype: torch.dtype | None = None
    nprocs_per_node: int = 1
    process_group: ProcessGroup | None = None
    timeout: float = 300.0
    chunk_bytes: int | None = None

    def __post_init__(self) -> None:
        check_int("peers_per_itr", self.peers_per_itr, minimum=1)
        check_int("nprocs_per_node", self.nprocs_per_node, minimum=1)
        check_int("synch_freq", self.synch_freq, minimum=0)
        if not isinstance(self.topology, Topology | str | int) or isinstance(self.topology, bool):
            raise TypeError(
                f"topology must be a Topology, a name or a graph id; got {type(self.topology)}"
            )
        self.comm_config(None)  # the communication options are checked in one place

    def comm_config(self, process_group: ProcessGroup | None) -> GossipConfig:
        """The [`GossipConfig`][gossip_comm.GossipConfig] for gossip in ``process_group``.

        Raises:
            ValueError: If ``timeout``, ``wire_dtype`` or ``chunk_bytes`` is invalid.
        """
        return GossipConfig(
            mixing=self.mixing,
            process_group=process_group,
            wire_dtype=self.wire_dtype,
            timeout=self.timeout,
            chunk_bytes=self.chunk_bytes,
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
        return make_topology(self.topology, world_size, self.peers_per_itr)
