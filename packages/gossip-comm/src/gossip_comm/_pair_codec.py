"""Compressed pairwise averaging for AD-PSGD: per-partner public copies, both ways."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gossip_comm.compression import Compressor, MessageSpec

__all__ = ["PairCodec"]


class PairCodec:
    """Compressed pairwise averaging: per-partner public copies, both ways.

    Rank ``r`` keeps ``out[p]``, its own value as partner ``p`` knows it, and ``in[p]``,
    ``p``'s value as ``r`` knows it. An exchange sends ``C(x - out[p])`` each way; both
    ends update their copies with the same decoded payloads, and each moves by
    ``gamma / 2 * (in[p] - out[p])``, which is exactly minus what its partner moves by:
    the pair's sum is conserved whatever the compressor. With a lossless compressor and
    ``gamma = 1`` both ends land on the pair's average.
    """

    def __init__(
        self,
        compressor: Compressor,
        gamma: float,
        spec: MessageSpec,
        rank: int,
        reference: torch.Tensor | None,
    ) -> None:
        self.compressor, self.gamma, self.spec, self.rank = compressor, gamma, spec, rank
        self.reference = reference
        self.public_out: dict[int, torch.Tensor] = {}
        self.public_in: dict[int, torch.Tensor] = {}
        self.codec_state: dict[int, dict[str, torch.Tensor]] = {}
        self._diff = torch.empty(spec.numel, dtype=spec.dtype)

    def _copy(self, table: dict[int, torch.Tensor], peer: int) -> torch.Tensor:
        copy = table.get(peer)
        if copy is None:
            if self.reference is None:
                copy = torch.zeros(self.spec.numel, dtype=self.spec.dtype)
            else:
                copy = self.reference.clone()
            table[peer] = copy
        return copy

    def empty(self) -> list[torch.Tensor]:
        """Payload buffers to receive one message into."""
        return self.compressor.payload_like(self.spec)

    def encode(self, peer: int, value: torch.Tensor) -> list[torch.Tensor]:
        """The payload for ``peer``: ``C(value - out[peer])``; ``out[peer]`` is updated."""
        public = self._copy(self.public_out, peer)
        torch.sub(value, public, out=self._diff)
        payload = self.empty()
        state = self.codec_state.get(peer)
        if state is None:
            state = self.compressor.init_state(self.spec, src=self.rank, dst=peer)
            self.codec_state[peer] = state
        self.compressor.encode(self.spec, self._diff, payload, state)
        self.compressor.add_decoded(self.spec, payload, public)
        return payload

    def receive(self, peer: int, payload: list[torch.Tensor]) -> None:
        """``in[peer] += D(payload)``."""
        self.compressor.add_decoded(self.spec, payload, self._copy(self.public_in, peer))

    def move(self, peer: int, into: torch.Tensor) -> None:
        """``into += gamma / 2 * (in[peer] - out[peer])``."""
        step = torch.sub(self.public_in[peer], self.public_out[peer], out=self._diff)
        into.add_(step, alpha=self.gamma / 2)

    def state_dict(self) -> dict[str, Any]:
        """Copies of the public copies and codec states."""
        return {
            "public_out": {p: t.clone() for p, t in self.public_out.items()},
            "public_in": {p: t.clone() for p, t in self.public_in.items()},
            "codec": {p: {k: v.clone() for k, v in s.items()} for p, s in self.codec_state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], owner: str) -> None:
        """Restore `state_dict`'s output.

        Raises:
            ValueError: If ``state`` holds no public copies, or one of another size.
        """
        if not all(k in state for k in ("public_out", "public_in", "codec")):
            raise ValueError(
                f"{owner}: the gossip state has no public copies; it was saved without the "
                "compression this rank uses"
            )
        tables = []
        for key in ("public_out", "public_in"):
            table = {}
            for peer, t in dict(state[key]).items():
                if not isinstance(t, torch.Tensor) or t.numel() != self.spec.numel:
                    raise ValueError(
                        f"{owner}: saved public copy {key}[{peer}] must be a tensor of "
                        f"{self.spec.numel} elements"
                    )
                table[int(peer)] = t.reshape(-1).to("cpu", self.spec.dtype, copy=True)
            tables.append(table)
        self.public_out, self.public_in = tables
        self.codec_state = {
            int(p): {k: v.clone() for k, v in s.items()} for p, s in dict(state["codec"]).items()
        }
