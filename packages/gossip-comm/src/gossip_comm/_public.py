r"""Public copies: what a rank's neighbours know of it, and it of them, under compression.

Rank $r$ keeps, per edge it has used, $\hat x_{r\to p}$ (its own value as peer $p$ knows
it) and $\hat x_{p\to r}$ (peer $p$'s value as $r$ knows it). A message to $p$ is
$q = C(x_r - \hat x_{r\to p})$, and both ends add $D(q)$ to their copy of
$\hat x_{r\to p}$: the two copies stay equal, bit for bit. The gossipers (push-sum,
push-pull, AD-PSGD's pairs) differ only in how they mix with the copies.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gossip_comm._compressor import checksum
from gossip_comm.compression import Compressor, MessageSpec
from gossip_comm.config import GossipConfig

__all__ = ["CompressionSetup", "PublicCopies", "compression_setup"]


@dataclass(frozen=True, kw_only=True)
class CompressionSetup:
    """A gossiper's checked compression arguments, and what all ranks must agree on."""

    compressor: Compressor
    gamma: float
    layout: tuple[torch.Size, ...]
    reference: torch.Tensor | None  # flat, on the CPU
    agreement: list[tuple[str, int]]  # (name, value) pairs for the construction all_gather


def compression_setup(
    config: GossipConfig,
    like: torch.Tensor,
    layout: Sequence[torch.Size] | None,
    reference: torch.Tensor | None,
    *,
    owner: str,
) -> CompressionSetup | None:
    """Check ``layout`` and ``reference`` against ``config.compression`` (``None``: none).

    Raises:
        ValueError: If ``layout`` or ``reference`` is given without compression, or the
            reference does not have ``like``'s number of elements.
    """
    compressor = config.compressor
    if compressor is None:
        if layout is not None or reference is not None:
            raise ValueError(f"{owner}: layout and reference only apply with config.compression")
        return None
    shapes = tuple(torch.Size(s) for s in layout) if layout is not None else (like.shape,)
    ref = None
    if reference is not None:
        if not isinstance(reference, torch.Tensor) or reference.numel() != like.numel():
            raise ValueError(
                f"{owner}: reference must be a tensor of {like.numel()} elements; got "
                f"{getattr(reference, 'shape', type(reference).__name__)}"
            )
        ref = reference.detach().reshape(-1).to("cpu", like.dtype, copy=True)
    agreement = [
        ("compressor", zlib.crc32(repr(compressor).encode())),
        ("consensus step (x 1e9)", round(config.gamma * 1e9)),
        ("layout", zlib.crc32(repr(shapes).encode())),
        ("reference", 0 if ref is None else checksum(ref)),
    ]
    return CompressionSetup(
        compressor=compressor, gamma=config.gamma, layout=shapes, reference=ref, agreement=agreement
    )


class PublicCopies:
    """The public copies and per-edge compressor states of one rank, on ``spec.device``.

    Args:
        compressor: The compressor every rank uses.
        spec: What one message looks like (its layout included).
        rank: This rank, the source of its out-edges.
        reference: The common start of every copy; zeros when ``None``.
        owner: The gossiper's name, for errors.
    """

    def __init__(
        self,
        compressor: Compressor,
        spec: MessageSpec,
        rank: int,
        reference: torch.Tensor | None,
        owner: str,
    ) -> None:
        self.compressor, self.spec, self.rank, self.owner = compressor, spec, rank, owner
        self.reference = None if reference is None else reference.to(spec.device)
        self.out: dict[int, torch.Tensor] = {}
        self.into: dict[int, torch.Tensor] = {}
        self.codec: dict[int, dict[str, torch.Tensor]] = {}
        compressor.payload_like(spec)  # a layout that does not fit raises here

    def _copy(self, table: dict[int, torch.Tensor], peer: int) -> torch.Tensor:
        copy = table.get(peer)
        if copy is None:
            if self.reference is None:
                spec = self.spec
                copy = torch.zeros(spec.numel, dtype=spec.dtype, device=spec.device)
            else:
                copy = self.reference.clone()
            table[peer] = copy
        return copy

    def sent(self, peer: int) -> torch.Tensor:
        """This rank's value as ``peer`` knows it."""
        return self._copy(self.out, peer)

    def received(self, peer: int) -> torch.Tensor:
        """``peer``'s value as this rank knows it."""
        return self._copy(self.into, peer)

    def empty(self) -> list[torch.Tensor]:
        """Fresh payload buffers for one message."""
        return self.compressor.payload_like(self.spec)

    def encode(self, peer: int, value: torch.Tensor, payload: list[torch.Tensor]) -> None:
        """Write ``C(value - sent(peer))`` into ``payload`` and add its decoding to the copy."""
        state = self.codec.get(peer)
        if state is None:
            state = self.compressor.init_state(self.spec, src=self.rank, dst=peer)
            self.codec[peer] = state
        self.compressor.encode_difference(self.spec, value, self.sent(peer), payload, state)

    def receive(self, peer: int, payload: list[torch.Tensor]) -> None:
        """Add the decoding of ``peer``'s ``payload`` to ``received(peer)``."""
        self.compressor.add_decoded(self.spec, payload, self.received(peer))

    def reset(self) -> None:
        """Forget every copy and codec state: each edge starts afresh at its next message."""
        self.out, self.into, self.codec = {}, {}, {}

    def state_dict(self) -> dict[str, Any]:
        """Every copy and codec state, as CPU tensors."""

        def cpu(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", copy=True)

        return {
            "public_out": {p: cpu(t) for p, t in self.out.items()},
            "public_in": {p: cpu(t) for p, t in self.into.items()},
            "codec": {p: {k: cpu(v) for k, v in s.items()} for p, s in self.codec.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output.

        Raises:
            ValueError: If ``state`` holds no public copies (saved without compression) or
                a copy of another size.
        """
        missing = [k for k in ("public_out", "public_in", "codec") if k not in state]
        if missing:
            raise ValueError(
                f"{self.owner}: the gossip state has no {', '.join(missing)}; it was saved "
                "without compression, which this gossiper uses"
            )
        tables: list[dict[int, torch.Tensor]] = []
        for key in ("public_out", "public_in"):
            table = {}
            for peer, t in dict(state[key]).items():
                if not isinstance(t, torch.Tensor) or t.numel() != self.spec.numel:
                    raise ValueError(
                        f"{self.owner}: saved public copy {key}[{peer}] must be a tensor of "
                        f"{self.spec.numel} elements; got "
                        f"{getattr(t, 'shape', type(t).__name__)}"
                    )
                table[int(peer)] = t.reshape(-1).to(self.spec.device, self.spec.dtype, copy=True)
            tables.append(table)
        for peer, saved in dict(state["codec"]).items():
            fresh = self.compressor.init_state(self.spec, src=self.rank, dst=int(peer))
            shapes = {k: tuple(v.shape) for k, v in dict(saved).items()}
            if shapes != {k: tuple(v.shape) for k, v in fresh.items()}:
                raise ValueError(
                    f"{self.owner}: the saved compressor state for edge {self.rank} -> {peer} "
                    f"({shapes}) does not fit {self.compressor!r}; it was saved with another "
                    "compressor or layout"
                )
        self.out, self.into = tables
        device = self.spec.device
        self.codec = {  # a generator's state stays a CPU byte tensor
            int(p): {k: v.clone() if k == "rng" else v.to(device, copy=True) for k, v in s.items()}
            for p, s in dict(state["codec"]).items()
        }
