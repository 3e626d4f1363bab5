"""Options shared by every data-parallel wrapper, as one small frozen dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributed import ProcessGroup

from gossip_topology import Mixing, Topology, make_topology

__all__ = ["GossipOptions"]


@dataclass(frozen=True)
class GossipOptions:
    """How a model gossips.

    Attributes:
        topology: A `gossip_topology.Topology`, a registry name, or a 2019 graph id.
        peers_per_itr: Out-peers per step when ``topology`` is a name or id.
        mixing: Mixing rule; uniform when ``None``.
        overlap: Overlap gossip with the next step's computation (OSGP).
        synch_freq: With ``overlap``, at most this many further steps may pass before a
            step's messages are folded in; 0 folds them at the next step.
        wire_dtype: ``None``, ``torch.bfloat16`` or ``torch.float16`` on the wire.
        nprocs_per_node: Processes per node for hierarchical gossip (1: every process
            gossips).
        process_group: Group to train in; WORLD when ``None``.
        timeout: Seconds to wait for one gossip step before raising.

    Raises:
        ValueError: On out-of-range values, at construction.
    """

    topology: Topology | str | int = "npeer-dynamic-directed-exponential"
    peers_per_itr: int = 1
    mixing: Mixing | None = None
    overlap: bool = False
    synch_freq: int = 0
    wire_dtype: torch.dtype | None = None
    nprocs_per_node: int = 1
    process_group: ProcessGroup | None = None
    timeout: float = 300.0

    def __post_init__(self) -> None:
        for name in ("peers_per_itr", "nprocs_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        if (
            isinstance(self.synch_freq, bool)
            or not isinstance(self.synch_freq, int)
            or (self.synch_freq < 0)
        ):
            raise ValueError(f"synch_freq must be an int >= 0; got {self.synch_freq!r}")
        if not (
            isinstance(self.timeout, int | float)
            and self.timeout > 0
            and math.isfinite(self.timeout)
        ):
            raise ValueError(f"timeout must be a positive number of seconds; got {self.timeout!r}")
        if not isinstance(self.topology, Topology | str | int) or isinstance(self.topology, bool):
            raise TypeError(
                f"topology must be a Topology, a name or a graph id; got {type(self.topology)}"
            )
        if self.synch_freq and not self.overlap:
            raise ValueError("synch_freq only applies with overlap=True")

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
