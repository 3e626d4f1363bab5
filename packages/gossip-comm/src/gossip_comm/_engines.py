"""Which engine a gossiper runs: compressed differences, or the value itself."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gossip_comm._compressed import CompressedEngine
from gossip_comm._exchange import ExchangeEngine
from gossip_comm.config import GossipConfig
from gossip_topology import Topology

__all__ = ["build_engine"]


def build_engine(
    topology: Topology,
    like: torch.Tensor,
    *,
    config: GossipConfig,
    carries_weight: bool,
    owner: str,
    force_weight: bool = False,
    layout: Sequence[torch.Size] | None = None,
    reference: torch.Tensor | None = None,
) -> ExchangeEngine | CompressedEngine:
    """The engine for ``config``: compressed differences, or the value itself."""
    if config.compression is not None:
        return CompressedEngine(
            topology,
            like,
            config=config,
            carries_weight=carries_weight,
            owner=owner,
            force_weight=force_weight,
            layout=layout,
            reference=reference,
        )
    if layout is not None or reference is not None:
        raise ValueError(f"{owner}: layout and reference only apply with config.compression")
    return ExchangeEngine(
        topology,
        like,
        config=config,
        carries_weight=carries_weight,
        owner=owner,
        force_weight=force_weight,
    )
