r"""The engine behind compressed PushSum and PushPull: differences on the wire, sums exact.

Rank $i$ keeps, for every edge it has used, a *public copy*: $\hat x_{i\to j}$ of its own
value as out-peer $j$ knows it, and $\hat x_{k\to i}$ of in-peer $k$'s value. One step,
with $P = W(t)$ and the consensus step $\gamma$ (CHOCO-SGD's, Koloskova, Stich and Jaggi,
ICML 2019, [arXiv:1902.00340](https://arxiv.org/abs/1902.00340), on per-edge copies so
that it holds on directed, time-varying graphs):

1. for each out-peer $j$: $q = C(x_i - \hat x_{i\to j})$, $\hat x_{i\to j} \mathrel{+}=
   D(q)$, send $q$;
2. for each in-peer $k$: receive $q_k$, $\hat x_{k\to i} \mathrel{+}= D(q_k)$;
3. $x_i \leftarrow x_i - \gamma \sum_j P_{ji} \hat x_{i\to j} + \gamma \sum_k P_{ik}
   \hat x_{k\to i}$ and $w_i \leftarrow (1 - \gamma(1 - P_{ii})) w_i + \gamma \sum_k
   P_{ik} w_k$.

Sender and receiver update their copies of $\hat x_{i\to j}$ with the same decoded payload,
so what a sender removes is exactly what its receiver adds: $\sum_i x_i$ and $\sum_i w_i$
are conserved to rounding whatever the compressor $C$. gossip-topology's
``simulate_compressed_push_sum`` runs the same steps in numpy and is the tests' oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from gossip_comm._channel import Channel, check_finite, checked_step, parse_saved_round
from gossip_comm._engine import Engine, Flight
from gossip_comm._public import CompressionSetup, PublicCopies
from gossip_comm._scratch import spans
from gossip_comm._transport import Message, PendingExchange
from gossip_comm.compression import Compressor, MessageSpec
from gossip_comm.handle import GossipHandle
from gossip_topology import RankSchedule, RankStep

__all__ = ["CompressedEngine", "CompressedFlight"]


@dataclass(kw_only=True)
class CompressedFlight(Flight):
    """One posted compressed step: its payloads and the buffers it uses.

    It mixes with ``(1 - gamma) I + gamma P``: ``kept_weight`` is ``1 - gamma (1 - P_ii)``,
    the share of the weight a rank keeps, and ``in_weights`` are ``gamma P_ik``.
    """

    gamma: float
    sends: list[list[torch.Tensor]]
    recvs: list[list[torch.Tensor]]
    kept: bool  # the sent copies are out (``post`` or ``keep``), not the fold's to take
    # overlap mode, until ``keep``: ``(into, base)`` -> into = base minus the sent shares
    take_out: Callable[[torch.Tensor, torch.Tensor | None], None] | None = None

    def keep(self, snapshot: torch.Tensor, out: torch.Tensor) -> None:
        """Overlap mode: ``out`` <- ``snapshot`` minus the shares of the sent copies.

        One pass, whether ``out`` is the snapshot itself or another contiguous tensor of
        its dtype and device (anything else: computed in the snapshot, then copied).

        Raises:
            RuntimeError: If the round's copies were already taken out (a second call).
        """
        take_out, self.take_out = self.take_out, None
        if take_out is None:
            raise RuntimeError(
                "keep() was already called for this gossip round, or the round needs none"
            )
        flat = out.view(-1) if out.is_contiguous() else out
        if (
            flat.dim() != 1
            or flat.device != self.buf.device
            or flat.dtype != self.buf.dtype
            or flat.data_ptr() == self.buf.data_ptr()
        ):
            take_out(self.buf, None)  # in place, as it always was
            if out.data_ptr() != self.buf.data_ptr():
                out.copy_(self.buf.view(out.shape))
            return
        take_out(flat, self.buf)

    def __post_init__(self) -> None:
        self.kept_weight = 1.0 - self.gamma * (1.0 - self.info.self_weight)
        self.in_weights = tuple(self.gamma * a for a in self.info.in_weights)


class CompressedEngine(Engine[CompressedFlight]):
    """Public copies, payload buffers and steps of compressed gossip of one tensor shape.

    Args:
        channel: The gossiper's validated channel, agreed on with ``setup.agreement``.
        schedule: This rank's rows and columns of ``W(t)``.
        setup: The checked compressor, consensus step, layout and reference.
        carries_weight: Whether the push-sum weight travels with each message.

    Raises:
        ValueError: If the layout does not fit the compressor.
    """

    def __init__(
        self,
        channel: Channel,
        schedule: RankSchedule,
        setup: CompressionSetup,
        *,
        carries_weight: bool,
    ) -> None:
        ch = channel
        self.compressor: Compressor = setup.compressor
        self.gamma = setup.gamma
        self.spec = MessageSpec(
            numel=ch.numel, dtype=ch.dtype, device=ch.device, layout=setup.layout
        )
        self.public = PublicCopies(self.compressor, self.spec, ch.rank, setup.reference, ch.owner)
        super().__init__(channel, schedule, carries_weight=carries_weight)
        # a restored round's stand-in for the tensor it was sent from (only accumulated)
        self._nothing = torch.empty(0, dtype=ch.dtype, device=ch.device)
        self._keep_due: CompressedFlight | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The step counter, every public copy and every edge's compressor state (CPU)."""
        return {"step": self.step, **self.public.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output.

        Raises:
            ValueError: If the step is not an int >= 0, or the state has no public copies
                (it was saved without compression) or a copy of another size.
        """
        step = checked_step(dict(state))
        self.public.load_state_dict(state)
        self.step = step

    # ------------------------------------------------------------------ steps
    def _payloads(self) -> list[torch.Tensor]:
        return self._pool.pop() if self._pool else self.public.empty()

    def post(
        self, tensor: torch.Tensor, weight: float, *, sent_out: str = "keep"
    ) -> CompressedFlight:
        """Encode and post one step.

        The payloads are encoded before this returns. ``sent_out`` says when the sent
        copies' shares leave ``tensor``: ``"post"`` at once (in place), ``"keep"``
        when the caller calls the flight's ``keep`` (overlap mode, before anything else
        is posted), ``"finish"`` in the pass of `finish` that adds the received copies
        in (a blocking step, finished before anything else is posted).

        Raises:
            ValueError: If ``sent_out`` is none of those.
            RuntimeError: If the previous round's ``keep`` is still due.
        """
        if sent_out not in ("post", "keep", "finish"):
            raise ValueError(f"sent_out must be 'post', 'keep' or 'finish'; got {sent_out!r}")
        if self._keep_due is not None and self._keep_due.take_out is not None:
            raise RuntimeError(
                "call keep() for the gossip round just sent before sending the next one"
            )
        ch = self.channel
        ch.check(tensor)
        info, step = self._next()
        buf = tensor.view(-1)
        if tensor.device != ch.device:  # CUDA tensor over gloo: work in host memory
            buf = buf.to(ch.device)
        sends = []
        for peer in info.out_peers:
            payload = self._payloads()
            self.public.encode(peer, buf, payload)
            sends.append(payload)
        if sent_out == "post":
            self._mix(info, buf, sent=True, received=False)
        for q in info.in_peers:  # both ends of an edge create their copies in one step
            self.public.received(q)
        recvs = [self._payloads() for _ in info.in_peers]
        messages = [
            Message(p, t, True)
            for p, payload in zip(info.out_peers, sends, strict=True)
            for t in payload
        ]
        messages += [
            Message(q, t, False)
            for q, payload in zip(info.in_peers, recvs, strict=True)
            for t in payload
        ]
        weight_recvs = self._weight_messages(info, weight, messages)
        pending = self._send(messages, step)
        flight = CompressedFlight(
            pending=pending,
            info=info,
            step=step,
            target=tensor,
            buf=buf,
            weight=weight,
            gamma=self.gamma,
            sends=sends,
            recvs=recvs,
            weight_recvs=weight_recvs,
            kept=sent_out != "finish",
            take_out=partial(self._mix, info, sent=True, received=False)
            if sent_out == "keep"
            else None,
        )
        self._keep_due = flight if sent_out == "keep" else None
        return flight

    def _wait(self, flight: CompressedFlight) -> None:
        ch = self.channel
        flight.pending.wait(ch.timeout)
        if ch.check_finite:
            for q, w in zip(flight.info.in_peers, flight.weight_recvs, strict=False):
                check_finite(float(w.item()), rank=ch.rank, peer=q, step=flight.step)
            for q, payload in zip(flight.info.in_peers, flight.recvs, strict=True):
                for t in payload:
                    if t.is_floating_point():
                        check_finite(t, rank=ch.rank, peer=q, step=flight.step)

    def _mix(
        self,
        info: RankStep,
        into: torch.Tensor,
        base: torch.Tensor | None = None,
        *,
        sent: bool,
        received: bool,
    ) -> None:
        """``into`` (or ``base``) minus ``gamma P_ji xhat_i->j`` over the out-peers (with
        ``sent``), plus ``gamma P_ik xhat_k->i`` over the in-peers (with ``received``).

        One pass a cache-sized chunk at a time on CPU, so ``into`` is read and written
        once whatever the number of copies; the same operations, in the same order, as
        one whole-tensor op per copy, so the same bits.
        """
        terms = []
        if sent:
            terms += [
                (self.public.sent(p), -self.gamma * share)
                for p, share in zip(info.out_peers, info.out_weights, strict=True)
            ]
        if received:
            terms += [
                (self.public.received(q), self.gamma * a)
                for q, a in zip(info.in_peers, info.in_weights, strict=True)
            ]
        if any(t.device != into.device for t, _ in terms):  # a CUDA tensor over gloo
            terms = [(t.to(into.device, non_blocking=True), a) for t, a in terms]
        if base is not None and not terms:
            into.copy_(base)
            return
        for start, stop in spans(into.numel(), into.device):
            x = into[start:stop]
            for i, (t, a) in enumerate(terms):
                # the first term reads base, if given, instead of a copy of it in x
                src = base[start:stop] if i == 0 and base is not None else x
                if a < 0:
                    torch.sub(src, t[start:stop], alpha=-a, out=x)
                else:
                    torch.add(src, t[start:stop], alpha=a, out=x)

    def _fold_in(
        self,
        flight: CompressedFlight,
        into: torch.Tensor,
        base: torch.Tensor | None = None,
    ) -> None:
        """Decode the received payloads into the in-copies and mix them in (and the sent
        copies out, if ``post`` left them)."""
        for q, payload in zip(flight.info.in_peers, flight.recvs, strict=True):
            self.public.receive(q, payload)
        self._mix(flight.info, into, sent=not flight.kept, received=True, base=base)

    def _release(self, flight: CompressedFlight) -> None:
        self._pool.extend(flight.sends)
        self._pool.extend(flight.recvs)
        flight.sends, flight.recvs = [], []

    def _mix_in(self, flight: CompressedFlight) -> None:
        """Wait for ``flight`` and fold its messages into ``flight.buf``."""
        self._wait(flight)
        self._fold_in(flight, flight.buf)

    def accumulate(
        self, flight: CompressedFlight, into: torch.Tensor, base: torch.Tensor | None = None
    ) -> float:
        """Overlap mode: add what ``flight`` delivered into ``into`` (``base + ...`` with ``base``).

        Returns:
            The push-sum weight received.

        Raises:
            RuntimeError: If the round's ``keep`` is still due (nothing is changed).
        """
        if flight.take_out is not None:
            raise RuntimeError("call keep() for a gossip round before receiving it")
        try:
            self._wait(flight)
            if base is not None and base.data_ptr() == into.data_ptr():
                base = None
            elif base is not None and (base.device != into.device or not base.is_contiguous()):
                into.copy_(base)
                base = None
            self._fold_in(flight, into.view(-1), None if base is None else base.view(-1))
            return self._weight_received(flight)
        finally:
            self._release(flight)

    def delivered(self, flight: CompressedFlight) -> dict[str, Any]:
        """Wait for ``flight``; its received payloads and weights as CPU data, unfolded."""
        self._wait(flight)
        payloads = [[t.detach().to("cpu", copy=True) for t in p] for p in flight.recvs]
        return self._saved(flight, "payloads", payloads)

    def restore(self, state: Mapping[str, Any]) -> CompressedFlight:
        """A flight whose payloads are in, from `delivered`'s output.

        Raises:
            ValueError: If ``state`` does not fit this engine's schedule or payloads.
        """
        ch = self.channel
        step, weight, payloads, weights = parse_saved_round(state, "payloads", self.step)
        info = self.schedule[step]
        expected_w = len(info.in_peers) if self.carries_weight else 0
        if len(payloads) != len(info.in_peers) or len(weights) != expected_w:
            raise ValueError(
                f"in-flight gossip state for step {step} holds {len(payloads)} payloads and "
                f"{len(weights)} weights; rank {ch.rank} expects {len(info.in_peers)} and "
                f"{expected_w}"
            )
        recvs = [self._payloads() for _ in payloads]
        for dest, saved in zip(recvs, payloads, strict=True):
            if len(saved) != len(dest) or any(
                s.shape != d.shape or s.dtype != d.dtype for s, d in zip(saved, dest, strict=False)
            ):
                raise ValueError(
                    f"in-flight gossip payload does not fit {self.compressor!r}: got "
                    f"{[(tuple(s.shape), s.dtype) for s in saved]}"
                )
            for d, s in zip(dest, saved, strict=True):
                d.copy_(s)
        return CompressedFlight(
            pending=PendingExchange.delivered(rank=ch.rank, step=step, numel=0, chunk_numel=0),
            info=info,
            step=step,
            target=self._nothing,
            buf=self._nothing,
            weight=weight,
            gamma=self.gamma,
            sends=[],
            recvs=recvs,
            weight_recvs=[
                torch.tensor([w], dtype=torch.float64, device=ch.device) for w in weights
            ],
            kept=True,
        )

    def start(
        self, tensor: torch.Tensor, weight: float
    ) -> GossipHandle[tuple[torch.Tensor, float]]:
        """Post a step; the handle folds the messages in when they are there."""
        # the sent shares leave at once: others may post meanwhile
        return self._handle(self.post(tensor, weight, sent_out="post"))

    def mix(self, tensor: torch.Tensor, weight: float) -> tuple[torch.Tensor, float]:
        """Post a step and finish it in the calling thread."""
        return self.finish(self.post(tensor, weight, sent_out="finish"))
