"""An AD-PSGD active rank's part: ask partners in schedule order; at the end, say goodbye
(see ``async_bilateral``)."""

from __future__ import annotations

import time

import torch

from gossip_comm._background import Worker
from gossip_comm._channel import Channel, check_finite
from gossip_comm._pair_wire import DATA, HEADER, PairCodec
from gossip_comm._transport import Message, post
from gossip_comm.errors import GossipPeerError
from gossip_comm.handle import GossipHandle
from gossip_topology import Topology

__all__ = ["Active"]


class Active:
    """An active rank's part: ask partners in schedule order; at the end, say goodbye."""

    def __init__(
        self,
        channel: Channel,
        topology: Topology,
        codec: PairCodec | None,
        fault_tolerant: bool = False,
    ) -> None:
        self.channel, self.topology, self.codec = channel, topology, codec
        self.fault_tolerant = fault_tolerant
        rank = channel.rank
        self.partners = sorted(
            {p for t in range(topology.period) for p in topology.out_peers(rank, t)}
        )
        self.step = 0
        self.bytes_sent = 0
        self._replies: list[torch.Tensor] = []
        self._worker = Worker(f"gossip-adpsgd{rank}")

    def request(self, snapshot: torch.Tensor) -> GossipHandle[torch.Tensor]:
        ch, step = self.channel, self.step
        (peer,) = self.topology.out_peers(ch.rank, step)
        self.step += 1
        flat = snapshot.detach().view(-1) if snapshot.is_contiguous() else None
        if flat is not None and flat.device.type == "cpu":
            host = flat  # the caller's snapshot is ours until wait(): average it in place
        else:
            host = snapshot.detach().reshape(-1).to("cpu", copy=True)
        header = torch.tensor([ch.rank, 1], dtype=torch.int64)
        self.bytes_sent += header.nbytes
        if self.codec is not None:
            return self._request_compressed(snapshot, host, header, peer, step)
        self.bytes_sent += host.nbytes
        # reply buffers are reused: a fresh 100 MB buffer per request costs page faults
        reply = self._replies.pop() if self._replies else torch.empty_like(host)
        pending = post(
            [Message(peer, header, True), Message(peer, host, True), Message(peer, reply, False)],
            ch.group,
            ch.rank,
            step,
            tags=[HEADER, DATA, DATA],
            chunk_numel=ch.chunk_to(peer),
            batched=ch.batched,
        )

        def finish() -> torch.Tensor:
            # each chunk is averaged as it arrives (its send is done by then too)
            for sl in pending.chunks(ch.timeout):
                if ch.check_finite:
                    check_finite(reply[sl], rank=ch.rank, peer=peer, step=step)
                host[sl].lerp_(reply[sl], 0.5)
            self._replies.append(reply)
            if host.data_ptr() != snapshot.data_ptr():
                snapshot.copy_(host.view(snapshot.shape))
            return snapshot

        return GossipHandle(future=self._worker.submit(finish))

    def _request_compressed(
        self,
        snapshot: torch.Tensor,
        host: torch.Tensor,
        header: torch.Tensor,
        peer: int,
        step: int,
    ) -> GossipHandle[torch.Tensor]:
        ch, codec = self.channel, self.codec
        assert codec is not None
        self.bytes_sent += codec.payload_bytes

        def finish() -> torch.Tensor:
            # encoded on the worker, so the training thread does not pay for it
            payload, reply = codec.encode(peer, host), codec.incoming
            messages = [Message(peer, header, True)]
            messages += [Message(peer, t, True) for t in payload]
            messages += [Message(peer, t, False) for t in reply]
            pending = post(
                messages,
                ch.group,
                ch.rank,
                step,
                tags=[HEADER] + [DATA] * (len(messages) - 1),
                chunk_numel=ch.chunk_to(peer),  # both ways at once: chunked between hosts
                batched=ch.batched,
            )
            pending.wait(ch.timeout)
            if ch.check_finite:
                for t in reply:
                    if t.is_floating_point():
                        check_finite(t, rank=ch.rank, peer=peer, step=step)
            codec.receive(peer)
            codec.move(peer, host)
            if host.data_ptr() != snapshot.data_ptr():
                snapshot.copy_(host.view(snapshot.shape))
            return snapshot

        return GossipHandle(future=self._worker.submit(finish))

    def finish(self, wait: float) -> None:
        """Say goodbye to every partner; the sends take at most the channel's timeout.

        Fault tolerant: each partner separately, all within one deadline, and one that
        is gone is skipped (its connection is closed, so the send fails at once).
        """
        ch = self.channel
        header = torch.tensor([ch.rank, 0], dtype=torch.int64)
        if self.fault_tolerant:
            deadline = time.monotonic() + min(wait, ch.timeout)
            sent = []
            for p in self.partners:
                try:
                    goodbye = [Message(p, header, True)]
                    sent.append(post(goodbye, ch.group, ch.rank, self.step, tags=[HEADER]))
                except GossipPeerError:
                    continue  # lost: it waits for nothing
            for pending in sent:
                try:
                    pending.wait(max(deadline - time.monotonic(), 0.0))
                except GossipPeerError:
                    continue
            self._worker.close(timeout=ch.timeout)
            return
        pending = post(
            [Message(p, header, True) for p in self.partners],
            ch.group,
            ch.rank,
            self.step,
            tags=[HEADER] * len(self.partners),
            batched=ch.batched,
        )
        pending.wait(ch.timeout)
        self._worker.close(timeout=ch.timeout)

    def check(self) -> None:
        """Nothing runs in the background between requests; their errors reach ``wait``."""
