"""`Gossiper`: what PushSum and PushPull have in common, for code that holds either."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from gossip_comm.handle import GossipHandle

__all__ = ["Gossiper"]


@runtime_checkable
class Gossiper(Protocol):
    """A synchronous gossiper of one tensor shape: one step of ``x <- W(t) x``.

    [`PushSum`][gossip_comm.PushSum] tracks the push-sum weight;
    [`PushPull`][gossip_comm.PushPull] needs none and hands it back unchanged.
    """

    @property
    def step(self) -> int:
        """Number of steps posted so far (the schedule position)."""
        ...

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank has sent so far (messages and weights, on the wire)."""
        ...

    def mix(self, tensor: torch.Tensor, weight: float = 1.0) -> tuple[torch.Tensor, float]:
        """One blocking step; ``tensor`` is updated in place. Returns ``(tensor, weight)``."""
        ...

    def start(
        self, tensor: torch.Tensor, weight: float = 1.0
    ) -> GossipHandle[tuple[torch.Tensor, float]]:
        """Post one step and return at once; ``wait()`` gives ``(tensor, weight)``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The step counter (and, with compression, the public copies)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output."""
        ...

    def close(self, *, wait: bool = True) -> None:
        """Release background resources.

        ``wait=False`` (a peer is lost and the job ends): work still in flight is
        abandoned; the background thread is told to stop but not waited for.
        """
        ...
