"""Errors raised by gossip communication, each naming the rank, the peer and the step."""

from __future__ import annotations

__all__ = [
    "GossipError",
    "GossipPeerError",
    "GossipTimeoutError",
    "MembershipError",
    "NonFiniteError",
    "PeerLostError",
    "StoreLostError",
]


class GossipError(RuntimeError):
    """Base class of every gossip communication failure."""


class GossipPeerError(GossipError):
    """A failure attributable to one peer.

    Attributes:
        rank: The rank (in the gossip process group) that observed the failure.
        peer: The peer rank involved.
        step: The gossip step at which it happened.
    """

    def __init__(self, message: str, *, rank: int, peer: int, step: int) -> None:
        super().__init__(message)
        self.rank, self.peer, self.step = rank, peer, step

    def __reduce__(self) -> tuple[object, tuple[type[GossipPeerError], str, int, int, int]]:
        return (_rebuild, (type(self), str(self), self.rank, self.peer, self.step))


class GossipTimeoutError(GossipPeerError):
    """A peer did not deliver its message within the configured timeout."""


class PeerLostError(GossipPeerError):
    """The connection to a peer broke: its process most likely died."""


class NonFiniteError(GossipPeerError):
    """A message from a peer held NaN or Inf (only checked when asked for)."""


class MembershipError(GossipError):
    """A fault-tolerant job cannot go on with this process: it was left out of the next
    generation, or too few members are left."""


class StoreLostError(MembershipError):
    """The membership store (the coordinator) did not answer."""


def _rebuild(
    cls: type[GossipPeerError], message: str, rank: int, peer: int, step: int
) -> GossipPeerError:
    """Unpickle a peer error (errors cross process boundaries in the test harness)."""
    return cls(message, rank=rank, peer=peer, step=step)
