"""What both gossip engines share: the schedule position, the push-sum weight, handles.

``ExchangeEngine`` sends a rank's value itself and ``CompressedEngine`` compressed
differences from public copies. Around their payloads a step is the same: take the
schedule's entry, send the push-sum weight (when it travels) beside the payloads in one
``batch_isend_irecv``, and once the step is in, mix the weight, hand the tensor back
(from its host copy, for a CUDA tensor gossiped over gloo) and return the borrowed
buffers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from gossip_comm._background import Worker
from gossip_comm._channel import Channel
from gossip_comm._transport import Message, PendingExchange, post
from gossip_comm.handle import GossipHandle
from gossip_comm.settled import Settled
from gossip_topology import RankSchedule, RankStep

__all__ = ["Engine", "Flight"]


@dataclass(kw_only=True)
class Flight:
    """One posted step: what every engine's step holds.

    Keyword-only: several fields are tensors, and swapped positions would type-check.
    ``kept_weight`` and ``in_weights`` are derived from ``info``: ``W[rank, rank]`` and
    ``W[rank, q]`` unless a subclass mixes with another matrix.
    """

    pending: PendingExchange
    info: RankStep
    step: int
    target: torch.Tensor  # the caller's tensor
    buf: torch.Tensor  # its flat view on the comm device (or a host staging copy)
    weight: float
    weight_recvs: list[torch.Tensor]
    mixed: int = field(default=0, init=False)  # chunks already mixed in (fault tolerance)
    kept_weight: float = field(init=False)  # the share of its value and weight kept
    in_weights: tuple[float, ...] = field(init=False)  # the share of each in-peer's value

    def __post_init__(self) -> None:
        self.kept_weight, self.in_weights = self.info.self_weight, self.info.in_weights


F = TypeVar("F", bound=Flight)


class Engine(ABC, Generic[F]):
    """The state and the steps both engines share, over one validated channel.

    Args:
        channel: The gossiper's validated channel (``open_channel``).
        schedule: This rank's rows and columns of ``W(t)``.
        carries_weight: Whether the push-sum weight travels with each message.
    """

    def __init__(self, channel: Channel, schedule: RankSchedule, *, carries_weight: bool) -> None:
        self.channel = channel
        self.schedule = schedule
        self.carries_weight = carries_weight
        self.step = 0
        self.bytes_sent = 0  # payload and weights handed to the transport, all steps
        # Buffers are borrowed by a step and returned when it finishes, so overlapped
        # steps in flight at once (OSGP with synch_freq > 0) never share one.
        self._pool: list[list[torch.Tensor]] = []
        self._worker = Worker(f"gossip-rank{channel.rank}")
        # fault tolerance: the blocking step that failed, kept whole for `settle`
        self.interrupted: F | None = None

    # ------------------------------------------------------- what differs
    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The step counter, so a restored run continues the same schedule."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output."""

    @abstractmethod
    def post(self, tensor: torch.Tensor, weight: float) -> F:
        """Post one step; in overlap mode the caller then keeps its share (``keep``)."""

    @abstractmethod
    def start(
        self, tensor: torch.Tensor, weight: float
    ) -> GossipHandle[tuple[torch.Tensor, float]]:
        """Post one step; the handle mixes it in when its messages are there."""

    @abstractmethod
    def mix(self, tensor: torch.Tensor, weight: float) -> tuple[torch.Tensor, float]:
        """Post one step and finish it in the calling thread."""

    @abstractmethod
    def _mix_in(self, flight: F) -> None:
        """Wait for ``flight`` and mix what it delivered into ``flight.buf``."""

    @abstractmethod
    def _release(self, flight: F) -> None:
        """Return the step's borrowed buffers for later steps to reuse."""

    @abstractmethod
    def accumulate(self, flight: F, into: torch.Tensor, base: torch.Tensor | None = None) -> float:
        """Overlap mode: add what ``flight`` delivered into ``into``; the weight received."""

    @abstractmethod
    def delivered(self, flight: F) -> dict[str, Any]:
        """Wait for ``flight``; what it delivered, as CPU data, left unfolded."""

    @abstractmethod
    def restore(self, state: Mapping[str, Any]) -> F:
        """A flight whose messages are in, from `delivered`'s output."""

    def settle(self, posted: Callable[[int, int], bool | None]) -> Settled:
        """Finish the step that failed with exactly what was delivered (fault tolerance).

        Raises:
            RuntimeError: If this engine cannot (compressed gossip), or no step failed.
        """
        raise RuntimeError(f"{type(self).__name__} cannot settle a failed step")

    def settle_round(
        self, flight: F, into: torch.Tensor, posted: Callable[[int, int], bool | None]
    ) -> Settled:
        """Overlap mode: finish a round in flight with exactly what was delivered.

        Raises:
            RuntimeError: If this engine cannot (compressed gossip).
        """
        raise RuntimeError(f"{type(self).__name__} cannot settle a round in flight")

    # ------------------------------------------------------- what is shared
    def _next(self) -> tuple[RankStep, int]:
        """This step's schedule entry and number; counts the step as posted."""
        info, step = self.schedule[self.step], self.step
        self.step += 1
        return info, step

    def _weight_messages(
        self, info: RankStep, weight: float, messages: list[Message]
    ) -> list[torch.Tensor]:
        """Append the push-sum weight's messages (float64) when it travels; its receives."""
        if not self.carries_weight:
            return []
        device = self.channel.device
        weight_send = torch.tensor([weight], dtype=torch.float64, device=device)
        weight_recvs = [torch.empty(1, dtype=torch.float64, device=device) for _ in info.in_peers]
        messages += [Message(p, weight_send, True) for p in info.out_peers]
        messages += [Message(q, w, False) for q, w in zip(info.in_peers, weight_recvs, strict=True)]
        return weight_recvs

    def _send(self, messages: list[Message], step: int) -> PendingExchange:
        """Post one step's messages in one ``batch_isend_irecv``, counting the bytes sent."""
        ch = self.channel
        self.bytes_sent += sum(m.tensor.nbytes for m in messages if m.send)
        chunks = [ch.chunk_to(m.peer) for m in messages]
        return post(
            messages,
            ch.group,
            ch.rank,
            step,
            chunk_numel=chunks,
            keep_going=ch.fault_tolerant,
            batched=ch.batched,
        )

    def _weight_in(self, flight: F) -> float:
        """``sum_q a_q w_q`` over the weights received (only when they travel)."""
        weights = [float(w.item()) for w in flight.weight_recvs]
        return math.fsum(a * w for a, w in zip(flight.in_weights, weights, strict=True))

    def _weight_received(self, flight: F) -> float:
        """What ``accumulate`` returns: the weight received; when the weight does not
        travel (every weight stays equal), the share the sender gave away, which is what
        it would have received."""
        if self.carries_weight:
            return self._weight_in(flight)
        return (1.0 - flight.kept_weight) * flight.weight

    def finish(self, flight: F) -> tuple[torch.Tensor, float]:
        """Wait for ``flight`` and mix it into the tensor it was posted from (a tensor
        staged on the host is copied back); ``(tensor, weight)``."""
        try:
            self._mix_in(flight)
        except Exception:
            if self.channel.fault_tolerant:
                self.interrupted = flight  # its buffers stay borrowed until settled
            else:
                self._release(flight)
            raise
        try:
            weight = flight.weight
            if self.carries_weight:
                weight = flight.kept_weight * weight + self._weight_in(flight)
            if flight.target.device != flight.buf.device:
                flight.target.copy_(flight.buf.view(flight.target.shape))
            return flight.target, weight
        finally:
            self._release(flight)

    def _saved(self, flight: F, key: str, items: list[Any]) -> dict[str, Any]:
        """`delivered`'s output: the step, the weight sent, ``items`` under ``key`` and
        the weights received."""
        return {
            "step": flight.step,
            "weight": flight.weight,
            key: items,
            "weights": [float(w.item()) for w in flight.weight_recvs],
        }

    def _handle(self, flight: F) -> GossipHandle[tuple[torch.Tensor, float]]:
        """A handle that finishes ``flight``: on CPU the background worker blocks in the
        backend's own ``Work.wait`` and mixes, so the handle completes without the caller
        waiting; on CUDA the works are polled and the mixing runs on the caller's stream
        when it waits."""
        if self.channel.device.type == "cpu":
            return GossipHandle(future=self._worker.submit(lambda: self.finish(flight)))
        return GossipHandle(poll=flight.pending.is_completed, finish=lambda: self.finish(flight))

    def close(self, *, wait: bool = True) -> None:
        """Stop the background worker, if one was started (``wait=False``: without
        waiting for it)."""
        self._worker.close(timeout=None if wait else 0.0)
