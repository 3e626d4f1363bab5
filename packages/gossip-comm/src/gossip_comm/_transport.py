"""Point-to-point transport: one batched ``batch_isend_irecv`` per step, waited with a deadline.

No collective runs in the steady state and no per-edge process group is created: every
message is a ``P2POp`` on the caller's process group.

Large messages are split into chunks of ``chunk_numel`` elements, and the chunks of all
messages of a step are posted interleaved (chunk 0 of every message, then chunk 1, ...).
Two reasons, both measured on an emulated 1 Gbit/s cluster (``benchmarks/cluster``):

* a pair of ranks that send to each other in the same step got about half the line rate
  in each direction from one large gloo message per direction, and full rate from chunks;
* waiting chunk by chunk (`PendingExchange.chunks`) lets the caller mix each chunk as it
  arrives, so the one arithmetic pass overlaps the rest of the transfer.

Both sides of a pair split identically because every rank derives the chunk size from the
same agreed configuration, and gloo matches a pair's messages in posting order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from gossip_comm._backend import to_global_rank
from gossip_comm.errors import GossipError, GossipPeerError, GossipTimeoutError, PeerLostError

__all__ = ["Message", "PendingExchange", "post", "split"]


@dataclass(frozen=True)
class Message:
    """One send or receive: ``peer`` is a rank of the process group."""

    peer: int
    tensor: torch.Tensor
    send: bool


class PendingExchange:
    """The works of one posted exchange, and who each one talks to."""

    def __init__(
        self,
        works: list[dist.Work | None],
        messages: list[Message],
        *,
        rank: int,
        step: int,
        pieces: list[tuple[int, int]] | None = None,
        chunk_numel: int = 0,
    ) -> None:
        self.works, self.messages, self.rank, self.step = works, messages, rank, step
        # fault-tolerant posting: ops whose post raised (their peer is gone), by index
        self.post_errors: dict[int, BaseException] = {}
        # ops known to have completed (waited successfully), by index
        self.waited = [False] * len(works)
        # (chunk index, message index) of each posted op, in posting order.
        self.pieces = pieces if pieces is not None else [(0, i) for i in range(len(messages))]
        self.chunk_numel = chunk_numel
        self.num_chunks = 1 + max((c for c, _ in self.pieces), default=0)
        # Backends that coalesce (NCCL) return one work for the whole batch.
        self.coalesced = len(works) != len(self.pieces)
        # Once every work has completed, ``chunks`` only replays the ranges.
        self.done = False

    @classmethod
    def delivered(cls, *, rank: int, step: int, numel: int, chunk_numel: int) -> PendingExchange:
        """An exchange whose messages are already in (restored from a checkpoint).

        Its ``chunks`` yields the element ranges a live exchange of ``numel`` elements
        with the same ``chunk_numel`` would yield, without waiting for anything.
        """
        pieces = [(c, 0) for c in range(len(split(numel, chunk_numel)))]
        pending = cls([], [], rank=rank, step=step, pieces=pieces, chunk_numel=chunk_numel)
        pending.coalesced, pending.done = False, True
        return pending

    def is_completed(self) -> bool:
        """Whether every work reports completion (meaningful on NCCL; gloo reports on wait)."""
        return all(w is None or w.is_completed() for w in self.works)

    def wait(self, timeout: float) -> None:
        """Wait for every message, raising a named error if one fails or exceeds ``timeout``.

        The deadline covers the whole exchange, not each message.

        Raises:
            GossipTimeoutError: A peer did not complete within ``timeout`` seconds.
            PeerLostError: The connection to a peer broke.
        """
        for _ in self.chunks(timeout):
            pass

    def chunks(self, timeout: float) -> Iterator[slice]:
        """Wait chunk by chunk, in order; yield each chunk's element range once it is in.

        When a range is yielded, every send and receive of that chunk has completed, so
        the caller may read the received slices and overwrite the sent ones. A message
        shorter than the chunk size travels whole in chunk 0. The deadline covers the
        whole exchange.

        Raises:
            GossipTimeoutError: A peer did not complete within ``timeout`` seconds.
            PeerLostError: The connection to a peer broke.
        """
        deadline = time.monotonic() + timeout
        if self.coalesced:  # one work for the batch: all or nothing
            for i, work in enumerate(self.works):
                self._wait_one(i, work, deadline, timeout)
            self.works, self.done = [], True
            yield slice(None)
            return
        start = 0
        for chunk in range(self.num_chunks):
            stop = start
            while stop < len(self.pieces) and self.pieces[stop][0] == chunk:
                stop += 1
            if not self.done:
                for i in range(start, stop):
                    self._wait_one(i, self.works[i], deadline, timeout)
            start = stop
            if self.chunk_numel and self.num_chunks > 1:
                yield slice(chunk * self.chunk_numel, (chunk + 1) * self.chunk_numel)
            else:
                yield slice(None)
        # Drop the finished works now: gloo can abort the process at exit if Work objects
        # outlive the process group (seen with torch 2.14 and batch_isend_irecv).
        self.works, self.done = [], True

    def _wait_one(
        self, index: int, work: dist.Work | None, deadline: float, timeout: float
    ) -> None:
        if index in self.post_errors:
            exc = self.post_errors[index]
            raise self._error(index, exc, timeout) from exc
        assert work is not None
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            ok = work.wait(timeout=timedelta(seconds=remaining))
        except RuntimeError as exc:
            raise self._error(index, exc, timeout) from exc
        if ok is False:
            raise self._error(index, None, timeout)
        if not self.coalesced:
            self.waited[index] = True

    def settle(self, posted: Callable[[int, int], bool | None], timeout: float) -> list[bool]:
        """After a failure: which of this exchange's operations completed.

        Point-to-point operations are rendezvous: one completes only once both ends have
        posted it. So an operation with a live peer that ``posted`` says has posted this
        step completes, and is waited for (up to ``timeout``); one whose peer has not
        posted never will, and is abandoned. With a lost peer (``posted`` returns
        ``None``), an operation counts only if it had completed already. An abandoned
        operation is never waited on: a gloo wait that times out closes the connection
        to that peer, which would look to it like this process dying.

        Args:
            posted: For a peer rank and this exchange's step: ``True`` if the peer posted
                that step's operations, ``False`` if not, ``None`` if it is lost.
            timeout: Seconds to wait for an operation that must complete.

        Returns:
            For each operation, in posting order, whether it completed.

        Raises:
            RuntimeError: For a backend that coalesces the exchange into one work (NCCL).
        """
        if self.coalesced:
            raise RuntimeError("settling an exchange needs one work per operation (gloo)")
        out = []
        for index, work in enumerate(self.works):
            if self.waited[index] or self.done:
                out.append(True)
                continue
            peer = self.messages[self.pieces[index][1]].peer
            state = posted(peer, self.step)
            if work is None or index in self.post_errors or state is False:
                out.append(False)
                continue
            try:  # a lost peer's operation: completed already, or never
                ok = work.wait(timeout=timedelta(seconds=timeout if state else 0.001))
            except RuntimeError:
                ok = False
            out.append(ok is not False)
            self.waited[index] = ok is not False
        return out

    def _error(self, index: int, exc: BaseException | None, timeout: float) -> GossipError:
        if self.coalesced:
            peers = sorted({m.peer for m in self.messages})
            peer = peers[0] if len(peers) == 1 else -1
            who = f"one of peers {peers}"
            direction = "exchanging with"
        else:
            msg = self.messages[self.pieces[index][1]]
            peer, who = msg.peer, f"peer {msg.peer}"
            direction = "sending to" if msg.send else "receiving from"
        text = str(exc) if exc is not None else "wait() returned False"
        lowered = text.lower()
        kind: type[GossipPeerError]
        if exc is None or "timed out" in lowered or "timeout" in lowered:
            kind = GossipTimeoutError
            message = (
                f"rank {self.rank} timed out after {timeout:g}s {direction} {who} at gossip "
                f"step {self.step}; is that process alive and gossiping? ({text})"
            )
        else:
            kind = PeerLostError
            message = (
                f"rank {self.rank} lost {who} while {direction} it at gossip step {self.step}; "
                f"the peer process most likely died ({text})"
            )
        return kind(message, rank=self.rank, peer=peer, step=self.step)


def split(numel: int, chunk_numel: int) -> list[slice]:
    """The element ranges a message of ``numel`` elements travels in.

    ``chunk_numel == 0`` (or a message no longer than one chunk) means one piece.
    """
    if chunk_numel <= 0 or numel <= chunk_numel:
        return [slice(0, numel)]
    return [slice(s, min(s + chunk_numel, numel)) for s in range(0, numel, chunk_numel)]


def post(
    messages: list[Message],
    group: ProcessGroup,
    rank: int,
    step: int,
    tags: list[int] | None = None,
    chunk_numel: int | Sequence[int] = 0,
    *,
    keep_going: bool = False,
    batched: bool | None = None,
) -> PendingExchange:
    """Post every message of one step in a single ``batch_isend_irecv``.

    The order of ``messages`` between one pair of ranks must match on both sides: the
    callers send the data tensor before the weight, and receive in the same order.
    ``tags`` (one per message, default 0) keep separate streams apart. Messages longer
    than ``chunk_numel`` elements (``0``: never) travel in chunks of that many elements,
    posted interleaved across messages; both sides must use the same ``chunk_numel``.
    A sequence gives each message its own, either 0 or one common size.

    On gloo, operations are posted one by one. One that fails to post (its peer is gone)
    raises [`PeerLostError`][gossip_comm.PeerLostError] naming the rank, the peer and the
    step; with ``keep_going`` (fault-tolerant gossip) it is recorded in ``post_errors``
    instead, the others are still posted, and it raises when waited on. ``batched``
    (``None``: look the backend up) posts them in one group call, as NCCL needs.
    """
    if not messages:
        return PendingExchange([], [], rank=rank, step=step)
    tags = [0] * len(messages) if tags is None else tags
    sizes = [chunk_numel] * len(messages) if isinstance(chunk_numel, int) else list(chunk_numel)
    if len({s for s in sizes if s}) > 1:
        raise ValueError(f"messages of one exchange chunk by one size or none; got {sizes}")
    pieces: list[tuple[int, int, torch.Tensor]] = []
    for i, m in enumerate(messages):
        flat = m.tensor.view(-1)
        for c, piece in enumerate(split(flat.numel(), sizes[i])):
            pieces.append((c, i, flat[piece]))
    pieces.sort(key=lambda p: (p[0], p[1]))  # stable: chunk-major, message order within
    ops = [
        dist.P2POp(
            dist.isend if messages[i].send else dist.irecv,
            piece,
            to_global_rank(group, messages[i].peer),
            group,
            tags[i],
        )
        for _, i, piece in pieces
    ]
    index = [(c, i) for c, i, _ in pieces]
    works: list[dist.Work | None] = []
    errors: dict[int, BaseException] = {}
    if batched is None:
        batched = dist.get_backend(group) == "nccl"
    if batched:  # one group call, or a pair could deadlock
        works += dist.batch_isend_irecv(ops)
        ops = []
    # gloo: one operation at a time (what batch_isend_irecv does there), so that a post
    # that fails is known by its peer, and one whose peer is gone does not keep the
    # others from being posted
    for k, op in enumerate(ops):
        try:
            works.append(op.op(op.tensor, op.peer, op.group, op.tag))
        except RuntimeError as exc:
            works.append(None)
            errors[k] = exc
    pending = PendingExchange(
        works, messages, rank=rank, step=step, pieces=index, chunk_numel=max(sizes, default=0)
    )
    pending.post_errors = errors
    if errors and not keep_going:  # name the rank, the peer and the step at once
        first = min(errors)
        raise pending._error(first, errors[first], 0.0) from errors[first]
    return pending
