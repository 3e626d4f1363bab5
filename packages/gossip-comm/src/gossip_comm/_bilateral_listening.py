"""The fault-tolerant AD-PSGD passive: one listener thread per partner, whole exchanges,
lost partners recorded rather than raised (see ``async_bilateral``)."""

from __future__ import annotations

import math
import queue
import threading

import torch
import torch.distributed as dist

from gossip_comm._backend import to_global_rank
from gossip_comm._bilateral_passive import Passive
from gossip_comm._channel import Channel, check_finite
from gossip_comm._pair_wire import HEADER, PairCodec, post_reply
from gossip_comm._scratch import spans
from gossip_comm.errors import GossipPeerError, NonFiniteError, PeerLostError
from gossip_topology import Topology

__all__ = ["ListeningPassive"]


class ListeningPassive(Passive):
    """A passive that survives lost partners.

    It listens to each partner on a thread of its own (a partner whose process dies is
    noticed at once, even between exchanges), applies an exchange only once all of it
    has arrived and its reply has gone, records a lost partner (``check`` raises it
    once) and serves the others on; ``finish`` stops waiting after its timeout.
    """

    def __init__(self, channel: Channel, topology: Topology, codec: PairCodec | None) -> None:
        super().__init__(channel, topology, codec)
        self._raised = 0  # losses check() has raised
        self._asks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stop = threading.Event()  # finish's timeout passed: serve nothing more
        # how this generation's exchanges ended, beyond those applied (``served``): each
        # partner's goodbye or loss, exchanges a loss cut short (left unapplied), and
        # requests left unanswered when finish's timeout stopped the server
        self.ended = {"goodbye": 0, "lost": 0, "interrupted": 0, "unserved": 0}

    def _listen(self, active: int) -> None:
        """Wait for ``active``'s headers on a thread of its own; queue its requests.

        Ends at its goodbye, or when its connection fails (the process is gone).
        """
        ch = self.channel
        header = torch.empty(2, dtype=torch.int64)
        src = to_global_rank(ch.group, active)
        try:
            while True:
                work = dist.irecv(header, src=src, group=ch.group, tag=HEADER)
                assert work is not None
                work.wait()
                if int(header[1]) == 0:
                    self._count("goodbye")
                    break
                self._asks.put(active)
        except Exception as exc:  # its connection closed: the process is gone
            self._count("lost")
            first = str(exc).splitlines()[0] if str(exc) else repr(exc)
            self._lose(
                PeerLostError(
                    f"rank {ch.rank}: AD-PSGD partner rank {active} was lost at exchange "
                    f"{self.served}: {first}",
                    rank=ch.rank,
                    peer=active,
                    step=self.served,
                )
            )
        self._asks.put(-2 - active)  # this partner is done

    def _count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.ended[what] += n

    def _lose(self, err: GossipPeerError) -> None:
        """Record a lost partner (the first error about it), for ``check`` to raise."""
        with self.lock:
            if not any(e.peer == err.peer for e in self.lost):
                self.lost.append(err)

    def _respond(self, flat: torch.Tensor) -> None:
        """Answer each partner's requests as its listener queues them, one at a time,
        until every partner has said goodbye or is lost, or ``finish`` stops it."""
        for active in self.partners:
            threading.Thread(
                target=self._listen,
                args=(active,),
                daemon=True,
                name=f"gossip-adpsgd-listen{self.channel.rank}-{active}",
            ).start()
        incoming, reply = torch.empty_like(flat), torch.empty_like(flat)
        remaining = len(self.partners)
        while remaining:
            active = self._asks.get()
            if self._stop.is_set():  # this request, and any queued, go unanswered
                left = [active, *_drain(self._asks)]
                self._count("unserved", sum(1 for a in left if a >= 0))
                return
            if active < 0:
                remaining -= 1
                continue
            try:
                sent = self._average_whole(active, flat, incoming, reply)
            except NonFiniteError:
                raise  # poisoned, not lost: the job stops, as without fault tolerance
            except GossipPeerError as err:  # lost, or timed out (its type says which)
                self._count("interrupted")
                self._lose(err)
                continue
            with self.lock:
                self.served += 1
                self.bytes_sent += sent

    def _average_whole(
        self, active: int, flat: torch.Tensor, incoming: torch.Tensor, reply: torch.Tensor
    ) -> int:
        """One exchange, applied only once all of it has arrived and the reply has gone:
        an exchange that a loss interrupts leaves this rank as it was."""
        ch = self.channel
        with self.lock:
            reply.copy_(flat)
        pending = post_reply(ch, active, incoming, reply, self.served)
        pending.wait(ch.timeout)
        if ch.check_finite:
            check_finite(incoming, rank=ch.rank, peer=active, step=self.served)
        diff = incoming.sub_(reply)  # x_a - x_snapshot
        moved = 0.5 * float(diff.sum(dtype=torch.float64))
        for start, stop in spans(flat.numel(), flat.device):
            with self.lock:
                flat[start:stop].add_(diff[start:stop], alpha=0.5)
        with self.lock:
            self.moved[active] = self.moved.get(active, 0.0) + moved
        return reply.nbytes

    def check(self) -> None:
        super().check()
        if self._raised < len(self.lost):  # each loss is raised once
            self._raised += 1
            raise self.lost[self._raised - 1]

    def finish(self, wait: float) -> None:
        if self._responder is None:
            return
        try:  # every partner says goodbye or is found lost; a straggler is left
            self._responder.result(timeout=wait if math.isfinite(wait) else None)
        except TimeoutError:
            self._stop.set()  # checked before each request: none is served from now
            self._asks.put(-1)  # wakes the server if it waits for a request


def _drain(asks: queue.SimpleQueue[int]) -> list[int]:
    """Whatever is queued now."""
    out = []
    while True:
        try:
            out.append(asks.get_nowait())
        except queue.Empty:
            return out
