"""Stand-alone distributed averaging of any tensor by push-sum gossip."""

from __future__ import annotations

import torch
from torch.distributed import ProcessGroup

from gossip_comm.config import GossipConfig
from gossip_comm.push_sum import PushSum
from gossip_topology import Mixing, Topology
from gossip_topology._checks import check_int

__all__ = ["gossip_average"]


def gossip_average(
    tensor: torch.Tensor,
    topology: Topology,
    steps: int,
    *,
    mixing: Mixing | None = None,
    process_group: ProcessGroup | None = None,
    comm_device: torch.device | str | None = None,
    wire_dtype: torch.dtype | None = None,
    timeout: float = 300.0,
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
        mixing: Mixing rule; uniform by default.
        process_group: Group to average over; WORLD when ``None``.
        comm_device: Device for communication buffers.
        wire_dtype: Optional lower-precision wire dtype.
        timeout: Seconds to wait for one step's messages.

    The options are [`GossipConfig`][gossip_comm.GossipConfig]'s, spelled out as keywords
    because they read better in a one-off call.

    Returns:
        A new tensor: this rank's estimate of the average.

    Raises:
        TypeError: If ``steps`` is not an int.
        ValueError: If ``steps < 0`` or the ranks disagree on shape, dtype or topology.
    """
    steps = check_int("steps", steps, minimum=0)
    config = GossipConfig(
        mixing=mixing,
        process_group=process_group,
        comm_device=comm_device,
        wire_dtype=wire_dtype,
        timeout=timeout,
    )
    work = tensor.detach().clone().contiguous()
    gossiper = PushSum(topology, work, config=config)
    weight = 1.0
    try:
        for _ in range(steps):
            work, weight = gossiper.mix(work, weight)
    finally:
        gossiper.close()
    return work.div_(weight)
