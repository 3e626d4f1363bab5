"""An AD-PSGD passive rank's part: a responder thread answers whoever asks first (see
``async_bilateral``); `ListeningPassive` is the fault-tolerant one."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial

import torch
import torch.distributed as dist

from gossip_comm._background import Worker
from gossip_comm._channel import Channel, check_finite
from gossip_comm._pair_wire import DATA, HEADER, PairCodec, post_reply
from gossip_comm._transport import Message, post
from gossip_comm.errors import GossipError, GossipPeerError
from gossip_topology import Topology

__all__ = ["Passive"]


class Passive:
    """A passive rank's part: a responder thread answers whoever asks first.

    Attributes:
        lost: Partners found gone, as the errors that said so (only a
            `ListeningPassive` finds any).
        moved: What each partner's exchanges moved the shared value's sum by (kept by a
            `ListeningPassive`).
    """

    def __init__(self, channel: Channel, topology: Topology, codec: PairCodec | None) -> None:
        self.channel, self.codec = channel, codec
        rank = channel.rank
        self.partners = sorted(
            {a for t in range(topology.period) for a in topology.in_peers(rank, t)}
        )
        self.served = 0
        self.bytes_sent = 0
        self.lock = threading.Lock()
        # held by the responder while it uses the public copies, and by a restore that
        # resets them; the shared value's lock is held only while the shared value is
        # written, so the training thread never waits for an encode
        self.codec_lock = threading.Lock()
        self.lost: list[GossipPeerError] = []
        self.moved: dict[int, float] = {}
        self._worker = Worker(f"gossip-adpsgd-responder{rank}")
        self._responder: Future[None] | None = None

    def serve(self, shared: torch.Tensor) -> None:
        if self._responder is not None:
            raise RuntimeError("serve() was already called")
        if shared.device.type != "cpu" or not shared.is_contiguous():
            raise ValueError("shared must be a contiguous CPU tensor")
        self._responder = self._worker.submit(lambda: self._respond(shared.view(-1)))

    def _respond(self, flat: torch.Tensor) -> None:
        """Answer requests until every partner has said goodbye."""
        ch = self.channel
        exchange: Callable[[int, torch.Tensor], int] = self._average_compressed
        if self.codec is None:  # both buffers reused: one exchange at a time
            exchange = partial(
                self._average, incoming=torch.empty_like(flat), reply=torch.empty_like(flat)
            )
        remaining = len(self.partners)
        header = torch.empty(2, dtype=torch.int64)
        active = -1
        try:
            while remaining:
                work = dist.irecv(header, group=ch.group, tag=HEADER)  # from any active
                assert work is not None
                work.wait()
                active, kind = int(header[0]), int(header[1])
                if kind == 0:
                    remaining -= 1
                    continue
                sent = exchange(active, flat)
                with self.lock:
                    self.served += 1
                    self.bytes_sent += sent
        except GossipPeerError:
            raise
        except Exception as exc:  # name who and when, whatever went wrong
            raise GossipPeerError(
                f"rank {ch.rank}: the AD-PSGD responder failed serving rank {active} at "
                f"exchange {self.served}: {exc}",
                rank=ch.rank,
                peer=active,
                step=self.served,
            ) from exc

    def _average(
        self, active: int, flat: torch.Tensor, *, incoming: torch.Tensor, reply: torch.Tensor
    ) -> int:
        """One exchange with ``active``, uncompressed; the bytes sent."""
        ch = self.channel
        # Reply with a snapshot while the request streams in (full duplex), then add half
        # the difference chunk by chunk: x_p += (x_a - x_snapshot) / 2. Equal to the
        # pairwise average when x_p did not move meanwhile; if the training thread updated
        # x_p, its update is kept, and x_a + x_p is conserved either way.
        with self.lock:
            reply.copy_(flat)
        pending = post_reply(ch, active, incoming, reply, self.served)
        for sl in pending.chunks(ch.timeout):
            if ch.check_finite:
                check_finite(incoming[sl], rank=ch.rank, peer=active, step=self.served)
            diff = incoming[sl].sub_(reply[sl])  # scratch: x_a - x_snapshot
            with self.lock:
                flat[sl].add_(diff, alpha=0.5)
        return reply.nbytes

    def _average_compressed(self, active: int, flat: torch.Tensor) -> int:
        """As ``_average``, with compressed differences both ways (see ``PairCodec``)."""
        ch, codec = self.channel, self.codec
        assert codec is not None
        incoming = codec.incoming
        # Encoding reads the shared value once, without its lock: a value the training
        # thread is adding to meanwhile is still *a* value of this rank, and the pair's
        # sum depends only on the copies, which both ends update with the same decoded
        # bits.
        with self.codec_lock:
            reply = codec.encode(active, flat)
        messages = [Message(active, t, False) for t in incoming]
        messages += [Message(active, t, True) for t in reply]
        pending = post(
            messages,
            ch.group,
            ch.rank,
            self.served,
            tags=[DATA] * len(messages),
            chunk_numel=ch.chunk_to(active),
            batched=ch.batched,
        )
        pending.wait(ch.timeout)
        if ch.check_finite:
            for t in incoming:
                if t.is_floating_point():
                    check_finite(t, rank=ch.rank, peer=active, step=self.served)
        with self.codec_lock:
            codec.receive(active)
            codec.move(active, flat, guard=self.lock)
        return sum(t.nbytes for t in reply)

    def check(self) -> None:
        if self._responder is not None and self._responder.done():
            self._responder.result()  # re-raises the responder's error, if it had one

    def finish(self, wait: float) -> None:
        if self._responder is None:
            return
        try:
            self._responder.result(timeout=wait if math.isfinite(wait) else None)
        except TimeoutError:
            raise GossipError(
                f"rank {self.channel.rank}: actives {self.partners} did not all finish within "
                f"{wait:g}s"
            ) from None
