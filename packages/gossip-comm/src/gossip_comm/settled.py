"""What a fault-tolerant gossip step delivered when it had to be settled after a failure."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Settled"]


@dataclass(frozen=True, kw_only=True)
class Settled:
    """What a settled step delivered, peer by peer.

    Attributes:
        tensor: The settled tensor.
        weight: The settled push-sum weight; for an overlapped round
            ([`PushSum.settle_round`][gossip_comm.PushSum.settle_round]), the weight to
            add to the local one (what came back and what came in).
        step: The gossip step that failed.
        returned: Out-peers none of whose message left (its share stayed here).
        received: In-peers whose whole message arrived and was added.
        partial: Peers whose message went through in part only (some chunks).
    """

    tensor: torch.Tensor
    weight: float
    step: int
    returned: tuple[int, ...]
    received: tuple[int, ...]
    partial: tuple[int, ...]
