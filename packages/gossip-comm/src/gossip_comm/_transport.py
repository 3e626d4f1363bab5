"""Point-to-point transport: one batched ``batch_isend_irecv`` per step, waited with a deadline.

No collective runs in the steady state and no per-edge process group is created: every
message is a ``P2POp`` on the caller's process group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from gossip_comm._backend import to_global_rank
from gossip_comm.errors import GossipError, GossipTimeoutError, PeerLostError

__all__ = ["Message", "PendingExchange", "post"]


@dataclass(frozen=True)
class Message:
    """One send or receive: ``peer`` is a rank of the process group."""

    peer: int
    tensor: torch.Tensor
    send: bool


class PendingExchange:
    """The works of one posted exchange, and who each one talks to."""

    def __init__(
        self, works: list[dist.Work], messages: list[Message], rank: int, step: int
    ) -> None:
        self.works, self.messages, self.rank, self.step = works, messages, rank, step
        # Backends that coalesce (NCCL) return one work for the whole batch.
        self.coalesced = len(works) != len(messages)

    def is_completed(self) -> bool:
        """Whether every work reports completion (meaningful on NCCL; gloo reports on wait)."""
        return all(w.is_completed() for w in self.works)

    def wait(self, timeout: float) -> None:
        """Wait for every message, raising a named error if one fails or exceeds ``timeout``.

        The deadline covers the whole exchange, not each message.

        Raises:
            GossipTimeoutError: A peer did not complete within ``timeout`` seconds.
            PeerLostError: The connection to a peer broke.
        """
        deadline = time.monotonic() + timeout
        for i, work in enumerate(self.works):
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                ok = work.wait(timeout=timedelta(seconds=remaining))
            except RuntimeError as exc:
                raise self._error(i, exc, timeout) from exc
            if ok is False:
                raise self._error(i, None, timeout)
        # Drop the finished works now: gloo can abort the process at exit if Work objects
        # outlive the process group (seen with torch 2.14 and batch_isend_irecv).
        self.works = []

    def _error(self, index: int, exc: BaseException | None, timeout: float) -> GossipError:
        if self.coalesced:
            peers = sorted({m.peer for m in self.messages})
            peer = peers[0] if len(peers) == 1 else -1
            who = f"one of peers {peers}"
            direction = "exchanging with"
        else:
            msg = self.messages[index]
            peer, who = msg.peer, f"peer {msg.peer}"
            direction = "sending to" if msg.send else "receiving from"
        text = str(exc) if exc is not None else "wait() returned False"
        lowered = text.lower()
        if exc is None or "timed out" in lowered or "timeout" in lowered:
            return GossipTimeoutError(
                f"rank {self.rank} timed out after {timeout:g}s {direction} {who} at gossip "
                f"step {self.step}; is that process alive and gossiping? ({text})",
                rank=self.rank,
                peer=peer,
                step=self.step,
            )
        return PeerLostError(
            f"rank {self.rank} lost {who} while {direction} it at gossip step {self.step}; "
            f"the peer process most likely died ({text})",
            rank=self.rank,
            peer=peer,
            step=self.step,
        )


def post(
    messages: list[Message],
    group: ProcessGroup,
    rank: int,
    step: int,
    tags: list[int] | None = None,
) -> PendingExchange:
    """Post every message of one step in a single ``batch_isend_irecv``.

    The order of ``messages`` between one pair of ranks must match on both sides: the
    callers send the data tensor before the weight, and receive in the same order.
    ``tags`` (one per message, default 0) keep separate streams apart.
    """
    if not messages:
        return PendingExchange([], [], rank, step)
    tags = [0] * len(messages) if tags is None else tags
    ops = [
        dist.P2POp(
            dist.isend if m.send else dist.irecv,
            m.tensor,
            to_global_rank(group, m.peer),
            group,
            tag,
        )
        for m, tag in zip(messages, tags, strict=True)
    ]
    works = dist.batch_isend_irecv(ops)
    return PendingExchange(list(works), messages, rank, step)
