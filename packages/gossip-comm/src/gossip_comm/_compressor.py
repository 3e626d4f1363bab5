"""The compressor protocol: what a message looks like, and what a compressor must do."""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gossip_comm._scratch import Scratch

__all__ = ["Compressor", "EdgeState", "MessageSpec", "Payload", "checksum"]

Payload = Sequence[Tensor]
"""A message on the wire: the tensors a compressor writes (for example codes and scales)."""

EdgeState = dict[str, Tensor]
"""What a compressor keeps for one edge between messages (a warm start, a generator's
state), created by ``init_state`` and saved with the gossiper's state."""


@dataclass(frozen=True, kw_only=True)
class MessageSpec:
    """What one gossip message looks like: the compressor sizes its payload from this.

    Attributes:
        numel: Elements in the message.
        dtype: The message's floating dtype.
        device: Where the payload tensors live (the communication device).
        layout: Shapes of the tensors whose flattened concatenation is the message (for
            example a model's parameters); ``(torch.Size([numel]),)`` when unknown.
    """

    numel: int
    dtype: torch.dtype
    device: torch.device
    layout: tuple[torch.Size, ...]


class Compressor(ABC):
    r"""The protocol every compressor follows; subclass it for your own.

    A compressor is configuration only. What it must remember between messages on one
    edge (a warm start, a random generator) lives in the ``state`` dict that
    `init_state` creates for each edge; the gossiper keeps it and saves it in its
    ``state_dict``. ``encode`` and ``decode`` must be deterministic given the payload:
    the sender and the receiver both decode the same payload into their copies of the
    sender's public value, and those copies must stay equal.

    Attributes:
        name: A short name for logs and errors.
        default_consensus_step: The consensus step size $\gamma$ used when the
            configuration gives none: how far each step moves towards the neighbours'
            public copies (1 is plain push-sum for a lossless compressor).

    Examples:
        A compressor that sends the message as it is (useful as a check):

        ```python
        class Identity(Compressor):
            name = "identity"

            def payload_like(self, spec):
                return [torch.empty(spec.numel, dtype=spec.dtype, device=spec.device)]

            def encode(self, spec, value, payload, state):
                payload[0].copy_(value)

            def decode(self, spec, payload, out):
                out.copy_(payload[0])
        ```
    """

    name: str = "custom"
    default_consensus_step: float = 1.0

    @abstractmethod
    def payload_like(self, spec: MessageSpec) -> list[torch.Tensor]:
        """Fresh, uninitialised payload tensors for one message of ``spec``."""

    def init_state(self, spec: MessageSpec, *, src: int, dst: int) -> EdgeState:
        """The state of edge ``src -> dst`` before its first message (default: none)."""
        return {}

    @abstractmethod
    def encode(self, spec: MessageSpec, value: Tensor, payload: Payload, state: EdgeState) -> None:
        """Write the compressed form of the flat ``value`` into ``payload``.

        May update ``state``, the edge's own (for example a warm start).
        """

    @abstractmethod
    def decode(self, spec: MessageSpec, payload: Payload, out: torch.Tensor) -> None:
        """Overwrite the flat ``out`` with the message ``payload`` stands for."""

    def add_decoded(self, spec: MessageSpec, payload: Payload, into: torch.Tensor) -> None:
        """``into += decode(payload)``; override when a sparse add is cheaper."""
        tmp = torch.empty_like(into)
        self.decode(spec, payload, tmp)
        into.add_(tmp)

    def encode_difference(
        self, spec: MessageSpec, value: Tensor, public: Tensor, payload: Payload, state: EdgeState
    ) -> None:
        """Encode ``value - public`` into ``payload``, then ``public += decode(payload)``.

        What gossip does with every message it sends (``public`` is the copy of the
        sender's value that its receiver holds). The default is `encode` of the
        difference, then `add_decoded`; the built-in elementwise compressors override it
        to do all of it in one pass over the message, a cache-sized chunk at a time.
        An override must leave ``payload`` and ``public`` exactly as the default does.
        """
        scratch = self.__dict__.get("_difference")
        if scratch is None:  # per instance: freed with the gossiper that holds it
            scratch = self.__dict__["_difference"] = Scratch()
        diff = scratch.get(value.numel(), value.dtype, value.device)
        torch.sub(value, public, out=diff)
        self.encode(spec, diff, payload, state)
        self.add_decoded(spec, payload, public)

    def payload_bytes(self, spec: MessageSpec) -> int:
        """Bytes one message of ``spec`` takes on the wire."""
        return sum(t.nbytes for t in self.payload_like(spec))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def checksum(tensor: torch.Tensor) -> int:
    """CRC-32 of a tensor's bytes, whatever its dtype (bfloat16 has no numpy twin)."""
    flat = tensor.detach().reshape(-1).contiguous().to("cpu")
    return zlib.crc32(flat.view(torch.uint8).numpy().tobytes())
