"""The wire of AD-PSGD's pairwise exchanges: message tags, a passive's uncompressed
exchange, and the codec of compressed ones (see ``async_bilateral``)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from gossip_comm._channel import Channel
from gossip_comm._public import PublicCopies
from gossip_comm._scratch import spans
from gossip_comm._transport import Message, PendingExchange, post

__all__ = ["DATA", "HEADER", "PairCodec", "post_reply"]

HEADER, DATA = 1, 0
"""Tags: a header ``[active, kind]`` (kind 1 a request, 0 a goodbye), and data."""


def post_reply(
    channel: Channel, active: int, incoming: torch.Tensor, reply: torch.Tensor, step: int
) -> PendingExchange:
    """A passive's side of one uncompressed exchange: receive ``active``'s snapshot into
    ``incoming`` while sending ``reply`` (full duplex, chunked between hosts)."""
    return post(
        [Message(active, incoming, False), Message(active, reply, True)],
        channel.group,
        channel.rank,
        step,
        tags=[DATA, DATA],
        chunk_numel=channel.chunk_to(active),
        batched=channel.batched,
    )


class PairCodec:
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
