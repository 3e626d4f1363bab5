"""LowRank: PowerSGD-style low-rank compression of each matrix of a message."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

import gossip_topology.compress as _twin
from gossip_comm._compressor import Compressor, MessageSpec

__all__ = ["LowRank"]


def _initial_factor(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The warm start before the first message: a fixed pattern, the same on every rank.

    Integer arithmetic, so gossip-topology's numpy twin builds the identical matrix.
    """
    a = torch.arange(rows, dtype=torch.int64)[:, None]
    b = torch.arange(cols, dtype=torch.int64)[None, :]
    pattern = (a * 7919 + b * 104729 + 1) % 65536
    return (pattern.to(torch.float64) / 65536 - 0.5).to(dtype=dtype, device=device)


def _orthonormalise(P: torch.Tensor) -> None:
    """Modified Gram-Schmidt on the columns of ``P``, in place; a zero column stays zero."""
    for c in range(P.shape[1]):
        col = P[:, c]
        for c2 in range(c):
            col.sub_(P[:, c2] * torch.dot(P[:, c2], col))
        norm = float(torch.linalg.vector_norm(col))
        if norm > 0:
            col.div_(norm)
        else:
            col.zero_()


@dataclass(frozen=True)
class _Segment:
    offset: int
    rows: int  # 0: sent raw
    cols: int
    rank: int
    numel: int


class LowRank(Compressor):
    r"""A rank-``rank`` approximation of every matrix-shaped tensor of the message.

    One step of power iteration per message, warm-started from the previous message's
    factor on the same edge, as in PowerSGD (Vogels et al., NeurIPS 2019,
    [arXiv:1905.13727](https://arxiv.org/abs/1905.13727)) and PowerGossip (Vogels et al.,
    NeurIPS 2020, [arXiv:2008.01425](https://arxiv.org/abs/2008.01425)): each tensor of
    shape $(m, \dots)$ is viewed as an $m \times n$ matrix $M$; with the warm start
    $Q$, $P = \mathrm{orth}(M Q)$, $Q \leftarrow M^\top P$ and $P Q^\top$ is what
    arrives. Vectors (biases, norms), and matrices too small to gain, travel as they are.
    The layout (the tensors' shapes) comes from the gossiper's ``layout`` argument, which
    gossip-nn fills with the parameters' shapes.

    Args:
        rank: The approximation's rank, ``>= 1``.

    Attributes:
        rank: The approximation's rank.

    Raises:
        ValueError: If ``rank < 1``.
    """

    name = "lowrank"

    def __init__(self, rank: int) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LowRank rank must be an int >= 1; got {rank!r}")
        self.rank = rank
        self.name = f"lowrank:{rank}"
        self.default_consensus_step = _twin.LowRank(rank).default_consensus_step
        self._cache: dict[MessageSpec, list[_Segment]] = {}

    def _segments(self, spec: MessageSpec) -> list[_Segment]:
        cached = self._cache.get(spec)
        if cached is not None:
            return cached
        out, offset = [], 0
        for shape in spec.layout:
            numel = math.prod(shape)
            rows, cols, r = 0, 0, 0
            if len(shape) >= 2:
                m, n = shape[0], numel // max(shape[0], 1)
                r = min(self.rank, m, n)
                if (m + n) * r < m * n:
                    rows, cols = m, n
            out.append(_Segment(offset, rows, cols, r, numel))
            offset += numel
        if offset != spec.numel:
            raise ValueError(
                f"LowRank: the layout's shapes hold {offset} elements but the message has "
                f"{spec.numel}; pass the shapes of the tensors the buffer concatenates"
            )
        self._cache[spec] = out
        return out

    def payload_like(self, spec: MessageSpec) -> list[torch.Tensor]:
        size = sum((s.rows + s.cols) * s.rank if s.rows else s.numel for s in self._segments(spec))
        return [torch.empty(size, dtype=spec.dtype, device=spec.device)]

    def init_state(self, spec: MessageSpec, *, src: int, dst: int) -> dict[str, torch.Tensor]:
        return {
            f"q{i}": _initial_factor(s.cols, s.rank, spec.dtype, spec.device)
            for i, s in enumerate(self._segments(spec))
            if s.rows
        }

    def encode(
        self,
        spec: MessageSpec,
        value: torch.Tensor,
        payload: Sequence[torch.Tensor],
        state: dict[str, torch.Tensor],
    ) -> None:
        out, pos = payload[0], 0
        for i, s in enumerate(self._segments(spec)):
            part = value[s.offset : s.offset + s.numel]
            if not s.rows:
                out[pos : pos + s.numel].copy_(part)
                pos += s.numel
                continue
            M = part.view(s.rows, s.cols)
            P = out[pos : pos + s.rows * s.rank].view(s.rows, s.rank)
            torch.mm(M, state[f"q{i}"], out=P)
            _orthonormalise(P)
            pos += s.rows * s.rank
            Q = out[pos : pos + s.cols * s.rank].view(s.cols, s.rank)
            torch.mm(M.t(), P, out=Q)
            state[f"q{i}"] = Q.clone()
            pos += s.cols * s.rank

    def decode(self, spec: MessageSpec, payload: Sequence[torch.Tensor], out: torch.Tensor) -> None:
        src, pos = payload[0], 0
        for s in self._segments(spec):
            dest = out[s.offset : s.offset + s.numel]
            if not s.rows:
                dest.copy_(src[pos : pos + s.numel])
                pos += s.numel
                continue
            P = src[pos : pos + s.rows * s.rank].view(s.rows, s.rank)
            pos += s.rows * s.rank
            Q = src[pos : pos + s.cols * s.rank].view(s.cols, s.rank)
            pos += s.cols * s.rank
            # rank-1 terms added elementwise, in a fixed order: unlike a matrix product,
            # the bits do not depend on threads or BLAS, so sender and receiver agree
            M = dest.view(s.rows, s.cols)
            torch.mul(P[:, :1], Q[:, 0], out=M)
            for c in range(1, s.rank):
                M.add_(P[:, c : c + 1] * Q[:, c])

    def __repr__(self) -> str:
        return f"LowRank({self.rank})"
