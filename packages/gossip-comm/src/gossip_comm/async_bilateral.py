r"""AsyncBilateral: AD-PSGD's pairwise averaging with no global step.

Active ranks ask; passive ranks answer *whoever asks first*, from a responder thread, so a
slow rank delays only the exchanges it takes part in (Lian et al., *Asynchronous
Decentralized Parallel SGD*, ICML 2018, [arXiv:1710.06952](https://arxiv.org/abs/1710.06952)).

Protocol, on a dedicated gloo group (so the responder thread never interleaves with the
caller's collectives; CUDA tensors are staged through host memory):

1. an active rank ``a`` sends a header ``[a, 1]`` (tag 1) and its snapshot (tag 0) to the
   passive ``p = out_peers(a, t)[0]`` of its ``t``-th exchange, and receives ``p``'s reply;
2. ``p``'s responder receives headers from *any* source, takes the active's snapshot, and
   under a lock copies its shared value ``S`` as the reply and sets
   $S \leftarrow (S + x_a) / 2$, then sends the reply;
3. the active sets its value to $(x_a + S_\text{reply}) / 2$: the pair's average is exact;
4. at the end every active sends a header ``[a, 0]`` to each passive it may contact; a
   passive's responder stops once every possible active has said so.

Both ends of an exchange apply the same average, so the sum over ranks is conserved.

With ``fault_tolerant=True`` (a job that survives lost ranks) a passive listens to each
partner on its own thread instead of to any source, so that a partner whose process dies
is noticed at once, even between exchanges; it applies an exchange only once the whole
of it has arrived and its reply has gone, so an exchange interrupted by a loss moves
neither end; and a lost partner is recorded (``check`` raises it once) while the
responder goes on serving the others.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from gossip_comm._backend import group_rank, group_size, resolve_group, to_global_rank
from gossip_comm._background import Worker
from gossip_comm._channel import (
    Channel,
    check_finite,
    check_pairwise,
    checked_step,
    open_channel,
)
from gossip_comm._public import PublicCopies, compression_setup
from gossip_comm._scratch import spans
from gossip_comm._transport import Message, post
from gossip_comm.compression import MessageSpec
from gossip_comm.config import GossipConfig
from gossip_comm.errors import GossipError, GossipPeerError, NonFiniteError, PeerLostError
from gossip_comm.handle import GossipHandle
from gossip_topology import Topology

__all__ = ["AsyncBilateral"]

_HEADER, _DATA = 1, 0


class _PairCodec:
    """Compressed exchanges on public copies, both ways.

    Each end sends ``C(x - sent[p])`` and moves by ``gamma / 2 * (received[p] - sent[p])``,
    exactly minus what its partner moves by (their copies are the same bits, swapped):
    the pair's sum is conserved whatever the compressor, and a lossless one with
    ``gamma = 1`` gives both ends the pair's average.
    """

    def __init__(self, public: PublicCopies, gamma: float) -> None:
        self.public, self.gamma = public, gamma
        spec = public.spec
        self._step = torch.empty(spec.numel, dtype=spec.dtype, device=spec.device)  # the move
        # Each role makes one exchange at a time (an active's on its one worker thread, a
        # passive's on its responder), so one outgoing and one incoming payload are
        # reused: fresh buffers per exchange would cost their page faults every time.
        self.outgoing, self.incoming = public.empty(), public.empty()

    @property
    def payload_bytes(self) -> int:
        """Bytes of one compressed message (the same for every message)."""
        return sum(t.nbytes for t in self.outgoing)  # no payload allocated per request

    def encode(self, peer: int, value: torch.Tensor) -> list[torch.Tensor]:
        """Encode into ``outgoing`` (returned)."""
        self.public.encode(peer, value, self.outgoing)
        return self.outgoing

    def receive(self, peer: int) -> None:
        """Add the decoding of ``incoming`` to ``peer``'s copy."""
        self.public.receive(peer, self.incoming)

    def move(
        self, peer: int, into: torch.Tensor, guard: AbstractContextManager[object] | None = None
    ) -> None:
        """Add ``gamma / 2 * (received - sent)`` to ``into``.

        With ``guard``, only the adds hold it, a cache-sized chunk at a time, so the
        training thread never waits long for the shared value.
        """
        public = self.public
        step = torch.sub(public.received(peer), public.sent(peer), out=self._step)
        if guard is None:
            into.add_(step, alpha=self.gamma / 2)
            return
        for start, stop in spans(into.numel(), into.device):
            with guard:
                into[start:stop].add_(step[start:stop], alpha=self.gamma / 2)


class _Active:
    """An active rank's part: ask partners in schedule order; at the end, say goodbye."""

    def __init__(
        self,
        channel: Channel,
        topology: Topology,
        codec: _PairCodec | None,
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
            tags=[_HEADER, _DATA, _DATA],
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
                tags=[_HEADER] + [_DATA] * (len(messages) - 1),
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
                    sent.append(post(goodbye, ch.group, ch.rank, self.step, tags=[_HEADER]))
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
            tags=[_HEADER] * len(self.partners),
            batched=ch.batched,
        )
        pending.wait(ch.timeout)
        self._worker.close(timeout=ch.timeout)

    def check(self) -> None:
        """Nothing runs in the background between requests; their errors reach ``wait``."""


class _Passive:
    """A passive rank's part: a responder thread answers whoever asks first."""

    def __init__(
        self,
        channel: Channel,
        topology: Topology,
        codec: _PairCodec | None,
        fault_tolerant: bool = False,
    ) -> None:
        self.channel, self.codec = channel, codec
        self.fault_tolerant = fault_tolerant
        # fault tolerant: partners found gone (in order), how many of them were raised
        # by check(), and what each partner's exchanges moved this rank's sum by
        self.lost: list[GossipPeerError] = []
        self._raised = 0
        self.moved: dict[int, float] = {}
        self._asks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stop = threading.Event()  # finish's timeout passed: serve nothing more
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
        self._worker = Worker(f"gossip-adpsgd-responder{rank}")
        self._responder: Future[None] | None = None

    def serve(self, shared: torch.Tensor) -> None:
        if self._responder is not None:
            raise RuntimeError("serve() was already called")
        if shared.device.type != "cpu" or not shared.is_contiguous():
            raise ValueError("shared must be a contiguous CPU tensor")
        if self.fault_tolerant:
            self._responder = self._worker.submit(lambda: self._serve_each(shared.view(-1)))
            return
        self._responder = self._worker.submit(lambda: self._loop(shared.view(-1)))

    # ------------------------------------------------------------ fault tolerant
    def _listen(self, active: int) -> None:
        """Wait for ``active``'s headers on a thread of its own; queue its requests.

        Ends at its goodbye, or when its connection fails (the process is gone).
        """
        ch = self.channel
        header = torch.empty(2, dtype=torch.int64)
        src = to_global_rank(ch.group, active)
        try:
            while True:
                work = dist.irecv(header, src=src, group=ch.group, tag=_HEADER)
                assert work is not None
                work.wait()
                if int(header[1]) == 0:
                    break
                self._asks.put(active)
        except Exception as exc:  # its connection closed: the process is gone
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

    def _lose(self, err: GossipPeerError) -> None:
        """Record a lost partner (the first error about it), for ``check`` to raise."""
        with self.lock:
            if not any(e.peer == err.peer for e in self.lost):
                self.lost.append(err)

    def _serve_each(self, flat: torch.Tensor) -> None:
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
            if self._stop.is_set():
                return
            if active < 0:
                remaining -= 1
                continue
            try:
                sent = self._average_whole(active, flat, incoming, reply)
            except NonFiniteError:
                raise  # poisoned, not lost: the job stops, as without fault tolerance
            except GossipPeerError as err:  # lost, or timed out (its type says which)
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
        pending = post(
            [Message(active, incoming, False), Message(active, reply, True)],
            ch.group,
            ch.rank,
            self.served,
            tags=[_DATA, _DATA],
            chunk_numel=ch.chunk_to(active),
            batched=ch.batched,
        )
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

    # ------------------------------------------------------------------ classic
    def _loop(self, flat: torch.Tensor) -> None:
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
                work = dist.irecv(header, group=ch.group, tag=_HEADER)  # from any active
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
        pending = post(
            [Message(active, incoming, False), Message(active, reply, True)],
            ch.group,
            ch.rank,
            self.served,
            tags=[_DATA, _DATA],
            chunk_numel=ch.chunk_to(active),
            batched=ch.batched,
        )
        for sl in pending.chunks(ch.timeout):
            if ch.check_finite:
                check_finite(incoming[sl], rank=ch.rank, peer=active, step=self.served)
            diff = incoming[sl].sub_(reply[sl])  # scratch: x_a - x_snapshot
            with self.lock:
                flat[sl].add_(diff, alpha=0.5)
        return reply.nbytes

    def _average_compressed(self, active: int, flat: torch.Tensor) -> int:
        """As ``_average``, with compressed differences both ways (see ``_PairCodec``)."""
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
            tags=[_DATA] * len(messages),
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
        if self._raised < len(self.lost):  # fault tolerant: each loss is raised once
            self._raised += 1
            raise self.lost[self._raised - 1]

    def finish(self, wait: float) -> None:
        if self._responder is None:
            return
        if self.fault_tolerant:
            try:  # every partner says goodbye or is found lost; a straggler is left
                self._responder.result(timeout=wait if math.isfinite(wait) else None)
            except TimeoutError:
                self._stop.set()  # checked before each request: none is served from now
                self._asks.put(-1)  # wakes the server if it waits for a request
            return
        try:
            self._responder.result(timeout=wait if math.isfinite(wait) else None)
        except TimeoutError:
            raise GossipError(
                f"rank {self.channel.rank}: actives {self.partners} did not all finish within "
                f"{wait:g}s"
            ) from None


class AsyncBilateral:
    """Asynchronous pairwise averaging between active and passive ranks (gloo).

    Every rank of ``config.process_group`` must construct it (it creates a gloo group).
    A rank's role, active or passive, is fixed by the bipartite topology and chosen at
    construction.

    Args:
        topology: Bipartite, ``peers_per_itr == 1``; actives pick partners from it.
        like: A tensor with the shape and dtype to average (any device).
        config: ``process_group``, ``timeout`` (how long an active waits for a reply),
            ``check_finite``, ``compression`` and ``consensus_step`` apply; messages
            travel in ``like``'s dtype on CPU, so ``mixing``, ``wire_dtype`` and
            ``comm_device`` must stay unset. With ``compression`` each exchange sends
            compressed differences from per-partner public copies both ways, and each
            end moves by ``consensus_step / 2`` times the difference of its copies, so
            the pair's sum is conserved exactly whatever the compressor.
        layout: With compression, the shapes ``like`` concatenates (see
            [`PushSum`][gossip_comm.PushSum]).
        reference: With compression, the common starting value of the public copies.

    With ``config.fault_tolerant`` (a job that goes on without lost ranks), a passive
    listens to each partner separately, so a partner that dies is noticed at once; it
    applies each exchange whole or not at all; and it records a lost partner (``check``
    raises it, once) and serves the others on. ``finish`` skips lost partners and, after
    its timeout, stops waiting for the others.

    Attributes:
        rank: This rank, in ``config.process_group``.
        topology: The bipartite graph partners are drawn from.
        timeout: Seconds an active rank waits for its partner's reply.
        is_passive: Whether this rank is passive: it only answers requests.
        fault_tolerant: ``config.fault_tolerant``.

    Raises:
        TypeError: If ``topology`` is not a ``Topology``.
        ValueError: If the topology is not bipartite with one peer per step, or an
            option that does not apply is set.
    """

    def __init__(
        self,
        topology: Topology,
        like: torch.Tensor,
        *,
        config: GossipConfig | None = None,
        layout: Sequence[torch.Size] | None = None,
        reference: torch.Tensor | None = None,
    ) -> None:
        config = GossipConfig() if config is None else config
        check_pairwise(
            topology,
            config,
            owner="AsyncBilateral",
            unsupported=("mixing", "wire_dtype", "comm_device"),  # CPU, like's dtype
        )
        group = resolve_group(config.process_group)
        n = group_size(group)
        gossip_group = dist.new_group([to_global_rank(group, r) for r in range(n)], backend="gloo")
        assert isinstance(gossip_group, ProcessGroup)  # every rank is a member
        cpu_like = torch.empty(like.shape, dtype=like.dtype)
        setup = compression_setup(config, like, layout, reference, owner="AsyncBilateral")
        channel = open_channel(
            topology,
            cpu_like,
            GossipConfig(
                process_group=gossip_group,
                timeout=config.timeout,
                check_finite=config.check_finite,
                fault_tolerant=config.fault_tolerant,
            ),
            owner="AsyncBilateral",
            extra=[] if setup is None else setup.agreement,
        )
        self._codec = None
        if setup is not None:
            spec = MessageSpec(
                numel=channel.numel, dtype=channel.dtype, device=channel.device, layout=setup.layout
            )
            copies = PublicCopies(
                setup.compressor, spec, channel.rank, setup.reference, "AsyncBilateral"
            )
            self._codec = _PairCodec(copies, setup.gamma)
        self.rank = group_rank(group)
        self.topology = topology
        self.timeout = channel.timeout
        self.is_passive = topology.is_passive(self.rank)
        self.fault_tolerant = config.fault_tolerant
        self._role: _Active | _Passive = (
            _Passive(channel, topology, self._codec, self.fault_tolerant)
            if self.is_passive
            else _Active(channel, topology, self._codec, self.fault_tolerant)
        )
        self._finished = False

    @property
    def partners(self) -> list[int]:
        """Ranks this rank may average with."""
        return list(self._role.partners)

    @property
    def step(self) -> int:
        """Requests made so far (actives); 0 on passive ranks."""
        return self._role.step if isinstance(self._role, _Active) else 0

    @property
    def served(self) -> int:
        """Requests answered so far (passives); 0 on active ranks."""
        return self._role.served if isinstance(self._role, _Passive) else 0

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank has sent so far: requests and headers, or replies."""
        return self._role.bytes_sent

    @property
    def lost(self) -> list[int]:
        """Fault tolerant, passive: partners found gone so far (an active's own losses
        reach ``handle.wait()``); empty otherwise."""
        return [e.peer for e in self._role.lost] if isinstance(self._role, _Passive) else []

    def moved_with(self, peer: int) -> float:
        """Fault tolerant, passive: the sum over elements of what the exchanges with
        ``peer`` applied so far moved this rank's shared value by (0.0 otherwise)."""
        if not isinstance(self._role, _Passive):
            return 0.0
        with self._role.lock:
            return self._role.moved.get(peer, 0.0)

    def state_dict(self) -> dict[str, Any]:
        """The request counter (an active's position in its schedule).

        With compression the public copies are *not* saved: no global step exists at which
        both ends of every pair have applied the same exchanges, so saved copies could
        disagree. `load_state_dict` starts every pair afresh instead, from the common
        reference (or zero) on both ends, which keeps each pair's copies equal.
        """
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the request counter (passives have none); restart the public copies.

        Raises:
            ValueError: If ``state["step"]`` is not an int >= 0.
        """
        step = checked_step(dict(state))
        if self._codec is not None:
            guard = self._role.codec_lock if isinstance(self._role, _Passive) else nullcontext()
            with guard:
                self._codec.public.reset()
        if isinstance(self._role, _Active):
            self._role.step = step

    def _passive(self, what: str) -> _Passive:
        if not isinstance(self._role, _Passive):
            raise RuntimeError(f"rank {self.rank} is active: it requests, it does not {what}")
        return self._role

    @property
    def lock(self) -> threading.Lock:
        """Passive: held by the responder while it reads or averages the shared value.

        Raises:
            RuntimeError: On an active rank.
        """
        return self._passive("hold a shared value").lock

    def check(self) -> None:
        """Re-raise, in the calling thread, an error the responder thread met.

        Call it at every training step; [`finish`][gossip_comm.AsyncBilateral.finish]
        re-raises such an error too. A no-op on active ranks, whose errors reach
        ``handle.wait()``. Fault tolerant: raises each lost partner once, while the
        responder serves the others on.

        Raises:
            GossipPeerError: Naming this rank, the active it was serving and the exchange.
        """
        self._role.check()

    # ------------------------------------------------------------------ active
    def request(self, snapshot: torch.Tensor) -> GossipHandle[torch.Tensor]:
        """Active: average ``snapshot`` with this exchange's partner; returns at once.

        ``handle.wait()`` returns ``snapshot``, averaged in place with the partner's value;
        a contiguous CPU ``snapshot`` is sent and averaged without a copy, so do not
        modify it before then.

        Raises:
            RuntimeError: On a passive rank, or after ``finish``.
        """
        if not isinstance(self._role, _Active) or self._finished:
            raise RuntimeError(f"rank {self.rank} cannot request: passive or finished")
        return self._role.request(snapshot)

    # ----------------------------------------------------------------- passive
    def serve(self, shared: torch.Tensor) -> None:
        """Passive: answer requests from a background thread, averaging into ``shared``.

        ``shared`` (CPU, contiguous) is read and written only under
        [`lock`][gossip_comm.AsyncBilateral.lock].

        Raises:
            RuntimeError: On an active rank, or if called twice.
        """
        self._passive("serve").serve(shared)

    # -------------------------------------------------------------------- both
    def finish(self, timeout: float | None = None) -> None:
        """End this rank's part: actives tell their passives; passives wait for all actives.

        Call after an active's last request has completed. Fault tolerant: lost partners
        are skipped, and a passive stops waiting after ``timeout`` (see
        ``fault_tolerant``) instead of raising.

        Raises:
            GossipError: If a passive's responder failed, or did not end within ``timeout``.
        """
        if self._finished:
            return
        self._finished = True
        self._role.finish(self.timeout if timeout is None else timeout)
