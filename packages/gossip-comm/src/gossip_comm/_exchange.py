"""The engine behind PushSum and PushPull: one rank's step of ``x <- W(t) x``.

Senders post their buffer unscaled and receivers apply ``W[rank, q]``: rank ``q``'s
column of ``W`` is plain data that every rank can compute (gossip-topology's
`RankSchedule`), so nobody makes scaled copies and the local update is one pass (``lerp``
for one in-peer on a doubly-stochastic row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gossip_comm._channel import Channel, check_finite, checked_step, parse_saved_round
from gossip_comm._engine import Engine, Flight
from gossip_comm._transport import Message, PendingExchange
from gossip_comm.handle import GossipHandle
from gossip_comm.settled import Settled
from gossip_topology import RankSchedule, RankStep

__all__ = ["ExchangeEngine", "InFlight"]


@dataclass(kw_only=True)
class InFlight(Flight):
    """One posted step: its messages, the schedule entry and the buffers it uses."""

    recvs: list[torch.Tensor]
    staging: torch.Tensor | None  # host copy of a CUDA tensor gossiped over gloo
    wire: torch.Tensor | None  # the buffer cast to the wire dtype

    def keep(self, snapshot: torch.Tensor, out: torch.Tensor) -> None:
        """Overlap mode: ``out <- W[rank, rank] * snapshot``, what the sender keeps."""
        torch.mul(snapshot, self.kept_weight, out=out)


class ExchangeEngine(Engine[InFlight]):
    """Buffers and steps for gossiping one tensor shape's value over one channel.

    Args:
        channel: The gossiper's validated channel.
        schedule: This rank's rows and columns of ``W(t)``.
        carries_weight: Whether the push-sum weight travels with each message.
    """

    def __init__(self, channel: Channel, schedule: RankSchedule, *, carries_weight: bool) -> None:
        super().__init__(channel, schedule, carries_weight=carries_weight)
        self._spare_staging: list[torch.Tensor] = []
        self._spare_wire: list[torch.Tensor] = []
        # a lower-precision wire: received chunks are widened into these before mixing
        # (a mixed-dtype add is several times slower than a cast and a lerp)
        self._spare_widen: list[list[torch.Tensor]] = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The step counter, so a restored run continues the same schedule."""
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the step counter.

        Raises:
            ValueError: If ``state["step"]`` is not an int >= 0.
        """
        self.step = checked_step(state)

    # ------------------------------------------------------------------ steps
    def _recv_set(self, count: int) -> list[torch.Tensor]:
        bufs = self._pool.pop() if self._pool else []
        while len(bufs) < count:
            bufs.append(self.channel.empty())
        return bufs

    def post(self, tensor: torch.Tensor, weight: float) -> InFlight:
        """Post one step's sends and receives; ``tensor`` must not change until finished."""
        ch = self.channel
        ch.check(tensor)
        info, step = self._next()
        staging = wire = None
        if tensor.device != ch.device:  # CUDA tensor over gloo: stage through host memory
            if self._spare_staging:
                staging = self._spare_staging.pop()
            else:
                pin = torch.cuda.is_available()
                staging = torch.empty(ch.numel, dtype=ch.dtype, pin_memory=pin)
            staging.copy_(tensor.reshape(-1))
            buf = staging
        else:
            buf = tensor.view(-1)
        send = buf
        if ch.wire_dtype != ch.dtype and info.out_peers:
            wire = self._spare_wire.pop() if self._spare_wire else ch.empty()
            wire.copy_(buf)
            send = wire
        recvs = self._recv_set(len(info.in_peers))
        messages = [Message(p, send, True) for p in info.out_peers]
        messages += [Message(q, recvs[i], False) for i, q in enumerate(info.in_peers)]
        weight_recvs = self._weight_messages(info, weight, messages)
        pending = self._send(messages, step)
        return InFlight(
            pending=pending,
            info=info,
            step=step,
            buf=buf,
            target=tensor,
            weight=weight,
            recvs=recvs,
            weight_recvs=weight_recvs,
            staging=staging,
            wire=wire,
        )

    def delivered(self, flight: InFlight) -> dict[str, Any]:
        """Wait for ``flight`` and return what it delivered, leaving it unfolded.

        The result is plain data (CPU tensors, floats) that a checkpoint can hold;
        `restore` turns it back into a flight that folds in exactly as ``flight`` would.
        """
        flight.pending.wait(self.channel.timeout)
        recvs = flight.recvs[: len(flight.info.in_peers)]
        return self._saved(flight, "messages", [r.detach().to("cpu", copy=True) for r in recvs])

    def restore(self, state: Mapping[str, Any]) -> InFlight:
        """A flight whose messages are already in, from `delivered`'s output.

        Raises:
            ValueError: If ``state`` does not match this engine's schedule, buffer size
                or wire dtype, or its step has not been posted yet.
        """
        ch = self.channel
        step, weight, messages, weights = parse_saved_round(state, "messages", self.step)
        info = self.schedule[step]
        if len(messages) != len(info.in_peers):
            raise ValueError(
                f"in-flight gossip state for step {step} holds {len(messages)} messages; "
                f"rank {ch.rank} has {len(info.in_peers)} in-peers at that step"
            )
        if len(weights) != (len(info.in_peers) if self.carries_weight else 0):
            raise ValueError(
                f"in-flight gossip state for step {step} holds {len(weights)} weights; "
                f"expected {len(info.in_peers) if self.carries_weight else 0}"
            )
        for m in messages:
            if not isinstance(m, torch.Tensor) or m.numel() != ch.numel:
                raise ValueError(
                    f"in-flight gossip message must be a tensor of {ch.numel} elements; "
                    f"got {getattr(m, 'shape', type(m).__name__)}"
                )
            if m.dtype != ch.wire_dtype:
                raise ValueError(
                    f"in-flight gossip message has dtype {m.dtype}; the wire dtype is "
                    f"{ch.wire_dtype}"
                )
        recvs = self._recv_set(len(messages))
        for r, m in zip(recvs, messages, strict=False):
            r.copy_(m.reshape(-1))
        weight_recvs = [torch.tensor([w], dtype=torch.float64, device=ch.device) for w in weights]
        pending = PendingExchange.delivered(
            rank=ch.rank, step=step, numel=ch.numel, chunk_numel=ch.chunk_numel
        )
        # only ``finish`` reads ``buf``; a restored flight is only ever accumulated
        buf = torch.empty(0, dtype=ch.dtype, device=ch.device)
        return InFlight(
            pending=pending,
            info=info,
            step=step,
            buf=buf,
            target=buf,
            weight=weight,
            recvs=recvs,
            weight_recvs=weight_recvs,
            staging=None,
            wire=None,
        )

    def _release(self, flight: InFlight) -> None:
        """Return the step's borrowed buffers for later steps to reuse."""
        self._pool.append(flight.recvs)
        if flight.staging is not None:
            self._spare_staging.append(flight.staging)
        if flight.wire is not None:
            self._spare_wire.append(flight.wire)

    def _chunks(self, flight: InFlight) -> Iterator[tuple[slice, list[torch.Tensor]]]:
        """Wait for ``flight`` chunk by chunk; yield each range with its received slices.

        The push-sum weights travel in the first chunk and are checked before anything
        is yielded. With ``check_finite``, a chunk holding NaN or Inf raises before it is
        mixed (earlier chunks have been mixed by then).
        """
        ch, info = self.channel, flight.info
        recvs = flight.recvs[: len(info.in_peers)]
        widen: list[torch.Tensor] = []
        if ch.wire_dtype != ch.dtype and recvs:
            widen = self._spare_widen.pop() if self._spare_widen else []
            size = ch.chunk_numel if flight.pending.num_chunks > 1 else ch.numel
            widen = [w for w in widen if w.numel() >= size]  # a whole step needs whole ones
            while len(widen) < len(recvs):
                widen.append(torch.empty(size, dtype=ch.dtype, device=ch.device))
        try:
            yield from self._chunk_parts(flight, recvs, widen)
        finally:
            if widen:
                self._spare_widen.append(widen)

    def _chunk_parts(
        self, flight: InFlight, recvs: list[torch.Tensor], widen: list[torch.Tensor]
    ) -> Iterator[tuple[slice, list[torch.Tensor]]]:
        ch, info = self.channel, flight.info
        first = True
        for sl in flight.pending.chunks(ch.timeout):
            if first and ch.check_finite:
                for q, w in zip(info.in_peers, flight.weight_recvs, strict=False):
                    check_finite(float(w.item()), rank=ch.rank, peer=q, step=flight.step)
            first = False
            parts = [r[sl] for r in recvs]
            if ch.check_finite:
                for q, part in zip(info.in_peers, parts, strict=True):
                    check_finite(part, rank=ch.rank, peer=q, step=flight.step)
            if widen:
                parts = [w[: p.numel()].copy_(p) for w, p in zip(widen, parts, strict=False)]
            yield sl, parts

    def _mix_in(self, flight: InFlight) -> None:
        """Mix each chunk into ``flight.buf`` in place as it arrives."""
        info, buf = flight.info, flight.buf
        for sl, parts in self._chunks(flight):
            _mix_into(buf[sl], parts, info)
            flight.mixed += 1

    def settle(self, posted: Callable[[int, int], bool | None]) -> Settled:
        """Finish the step that failed with exactly what was delivered (fault tolerance).

        Waits for the operations that must complete (see
        [`PendingExchange.settle`][gossip_comm._transport.PendingExchange.settle]); then
        each part of the tensor not yet mixed keeps its own share, takes back the shares
        whose sends did not complete, and adds the received ones; the weight likewise.

        Raises:
            RuntimeError: If no step failed.
        """
        flight, self.interrupted = self.interrupted, None
        if flight is None:
            raise RuntimeError("no interrupted gossip step to settle")
        try:
            done = flight.pending.settle(posted, self.channel.timeout)
            fold = _Fold(flight, done)
            for c in range(flight.mixed, len(fold.ranges)):
                self._fold_range(flight, fold, c)
            weight = fold.weight(flight)
            if flight.target.device != flight.buf.device:
                flight.target.copy_(flight.buf.view(flight.target.shape))
            return fold.settled(flight, weight)
        finally:
            self._release(flight)

    def _fold_range(self, flight: InFlight, fold: _Fold, c: int) -> None:
        info, sl = flight.info, fold.ranges[c]
        x = flight.buf[sl]
        out = x * info.self_weight
        for j, a in enumerate(info.out_weights):
            if not fold.delivered(j, c):
                out.add_(x, alpha=a)  # the share that did not leave comes back
        for j, a in enumerate(info.in_weights):
            if fold.delivered(fold.n_out + j, c):
                out.add_(flight.recvs[j][sl].to(out.dtype), alpha=a)
        x.copy_(out)

    def accumulate(
        self, flight: InFlight, into: torch.Tensor, base: torch.Tensor | None = None
    ) -> float:
        """Wait for ``flight`` and add ``sum_q W[r, q] x_q`` into ``into`` (overlap mode).

        Unlike ``finish``, the local share is left alone: the caller scaled its own
        numerator by ``W[r, r]`` when it sent. Each chunk is added as it arrives. With
        ``base``, ``into`` receives ``base + sum_q W[r, q] x_q`` instead (one pass where
        an in-place add and a copy would take two); ``into`` may then be the tensor
        ``flight`` sent, since each chunk is written only once its send is complete.

        Returns:
            ``sum_q W[r, q] w_q``, the weight received; ``(1 - W[r, r]) * weight`` when the
            weight does not travel.
        """
        try:
            info = flight.info
            flat = into.view(-1)
            source = None if base is None else base.view(-1)
            for sl, parts in self._chunks(flight):
                dest = flat[sl]
                first = source is not None
                for r, a in zip(parts, info.in_weights, strict=True):
                    # a CUDA numerator gossiped over gloo receives into host buffers
                    r = r.to(dest.device, non_blocking=True)
                    if first:
                        assert source is not None
                        torch.add(source[sl], r, alpha=a, out=dest)
                        first = False
                    else:
                        dest.add_(r, alpha=a)
                if first:  # no in-peers at this step
                    assert source is not None
                    dest.copy_(source[sl])
                flight.mixed += 1
            weight = self._weight_received(flight)
        except Exception:
            if not self.channel.fault_tolerant:  # else kept whole for `settle_round`
                self._release(flight)
            raise
        self._release(flight)
        return weight

    def settle_round(
        self, flight: InFlight, into: torch.Tensor, posted: Callable[[int, int], bool | None]
    ) -> Settled:
        """Overlap mode, fault tolerance: finish a round with exactly what was delivered.

        Waits for the operations that must complete (see
        [`PendingExchange.settle`][gossip_comm._transport.PendingExchange.settle]); then
        adds into ``into`` the received parts not added yet (an ``accumulate`` that failed
        may have added some chunks) and, for every part of a send that did not go
        through, the share that did not leave (``W[q, r]`` times the snapshot sent).

        Returns:
            What was settled; its ``weight`` is the weight to add to the local one (the
            received weights and the shares that came back).
        """
        try:
            done = flight.pending.settle(posted, self.channel.timeout)
            fold = _Fold(flight, done)
            info, flat = flight.info, into.view(-1)
            sent = flight.target.reshape(-1)
            for c, sl in enumerate(fold.ranges):
                for j, a in enumerate(info.out_weights):
                    if not fold.delivered(j, c):
                        flat[sl].add_(sent[sl], alpha=a)  # the share that did not leave
                if c < flight.mixed:
                    continue  # its received parts were added before the failure
                for j, a in enumerate(info.in_weights):
                    if fold.delivered(fold.n_out + j, c):
                        flat[sl].add_(flight.recvs[j][sl].to(flat.device, flat.dtype), alpha=a)
            return fold.settled(flight, fold.moved(flight))
        finally:
            self._release(flight)

    def start(
        self, tensor: torch.Tensor, weight: float
    ) -> GossipHandle[tuple[torch.Tensor, float]]:
        """Post a step and return a handle; mixing happens when the messages are in."""
        return self._handle(self.post(tensor, weight))

    def mix(self, tensor: torch.Tensor, weight: float) -> tuple[torch.Tensor, float]:
        """Post a step and finish it in the calling thread."""
        return self.finish(self.post(tensor, weight))


def _mix_into(buf: torch.Tensor, recvs: list[torch.Tensor], info: RankStep) -> None:
    """``buf <- W[r, r] buf + sum_q W[r, q] recv_q``, in one pass where possible."""
    if not recvs:
        if info.self_weight != 1.0:
            buf.mul_(info.self_weight)
        return
    if len(recvs) == 1 and abs(info.self_weight + info.in_weights[0] - 1.0) < 1e-15:
        buf.lerp_(recvs[0], info.in_weights[0])
        return
    buf.mul_(info.self_weight)
    for r, a in zip(recvs, info.in_weights, strict=True):
        buf.add_(r, alpha=a)


class _Fold:
    """Which parts of a failed step's messages were delivered."""

    def __init__(self, flight: InFlight, done: list[bool]) -> None:
        pending, info = flight.pending, flight.info
        self.ops = {piece: ok for piece, ok in zip(pending.pieces, done, strict=True)}
        size = pending.chunk_numel if pending.num_chunks > 1 else 0
        self.ranges = (
            [slice(c * size, (c + 1) * size) for c in range(pending.num_chunks)]
            if size
            else [slice(None)]
        )
        self.n_out, self.n_in = len(info.out_peers), len(info.in_peers)

    def delivered(self, message: int, chunk: int) -> bool:
        """Whether ``message``'s part in range ``chunk`` went through (an unchunked
        message travels whole in chunk 0)."""
        return self.ops.get((chunk, message), self.ops.get((0, message), False))

    def whole(self, message: int) -> bool | None:
        """``True``: every part went through; ``False``: none; ``None``: some."""
        parts = {ok for (_, m), ok in self.ops.items() if m == message}
        return parts.pop() if len(parts) == 1 else None

    def weight(self, flight: InFlight) -> float:
        """The weight after the step: the kept share plus `moved`."""
        if not flight.weight_recvs:  # the weight does not travel
            return flight.weight
        return flight.kept_weight * flight.weight + self.moved(flight)

    def moved(self, flight: InFlight) -> float:
        """The weight that came back (sends that failed) or in (receives that went
        through)."""
        info, w = flight.info, flight.weight
        base = self.n_out + self.n_in
        total = 0.0
        for j, a in enumerate(info.out_weights):
            if not self.delivered(base + j, 0):
                total += a * w
        for j, a in enumerate(info.in_weights):
            if self.delivered(base + self.n_out + j, 0):
                total += a * float(flight.weight_recvs[j].item())
        return total

    def settled(self, flight: InFlight, weight: float) -> Settled:
        info = flight.info
        base = self.n_out + self.n_in
        weighted = bool(flight.weight_recvs)

        def state(data: int, w: int) -> bool | None:
            parts = {self.whole(data)} | ({self.whole(w)} if weighted else set())
            return parts.pop() if len(parts) == 1 else None

        sent = [state(j, base + j) for j in range(self.n_out)]
        got = [state(self.n_out + j, base + self.n_out + j) for j in range(self.n_in)]
        return Settled(
            tensor=flight.target,
            weight=weight,
            step=flight.step,
            returned=tuple(p for p, s in zip(info.out_peers, sent, strict=True) if s is False),
            received=tuple(q for q, s in zip(info.in_peers, got, strict=True) if s is True),
            partial=tuple(
                sorted(
                    {p for p, s in zip(info.out_peers, sent, strict=True) if s is None}
                    | {q for q, s in zip(info.in_peers, got, strict=True) if s is None}
                )
            ),
        )
