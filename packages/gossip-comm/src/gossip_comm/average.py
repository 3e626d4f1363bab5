"""Stand-alone distributed averaging of any tensor by push-sum gossip."""

from __future__ import annotations

import torch

from gossip_comm.config import GossipConfig
from gossip_comm.push_sum import PushSum
from gossip_topology import Topology
from gossip_topology._checks import check_int

__all__ = ["gossip_average"]


def gossip_average(
    tensor: torch.Tensor, topology: Topology, steps: int, *, config: GossipConfig | None = None
) -> torch.Tensor:
    """Approximate the average of ``tensor`` over the group with ``steps`` push-sum steps.

    Every rank calls this with its own tensor (same shape and dtype everywhere) and gets
    back its de-biased estimate of the average; ``tensor`` itself is not modified. On the
    one-peer exponential graph with a power-of-two group, ``log2(n)`` steps give the exact
    average.

    Args:
        tensor: This rank's value.
        topology: The graph; ``world_size`` must equal the group's size.
        steps: Number of gossip steps, ``>= 0``.
        config: How to gossip, as for [`PushSum`][gossip_comm.PushSum]: mixing rule,
            process group (WORLD by default), communication device, wire dtype or
            compression, timeout. ``GossipConfig()`` when ``None``.

    Returns:
        A new tensor: this rank's estimate of the average.

    Raises:
        TypeError: If ``steps`` is not an int or ``tensor`` not a tensor.
        ValueError: If ``steps < 0`` or the ranks disagree on shape, dtype or topology.
    """
    steps = check_int("steps", steps, minimum=0)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor; got {type(tensor).__name__}")
    work = tensor.detach().clone().contiguous()
    gossiper = PushSum(topology, work, config=config)
    weight = 1.0
    try:
        for _ in range(steps):
            work, weight = gossiper.mix(work, weight)
    finally:
        gossiper.close()
    return work.div_(weight)
