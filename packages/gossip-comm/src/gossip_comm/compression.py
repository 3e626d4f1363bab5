r"""Compressors: what a gossip message becomes on the wire, and back.

A compressor turns one message (a flat tensor) into a few *payload* tensors of sizes that
depend only on the message's size and layout, never on its values, so a receiver can post
its receives before anything arrives. Gossip never compresses the model itself: it
compresses the difference between a rank's value and the public copy its receivers already
hold (see [`PushSum`][gossip_comm.PushSum] and the "Sending less" concept page), so the
compression error stays at the sender and the network's sum is conserved exactly.

Built-ins, by spec string (`make_compressor`):

| spec | class | sent per element of a float32 message |
|---|---|---|
| ``"bf16"``, ``"fp16"`` | [`Cast`][gossip_comm.Cast] | 2 bytes |
| ``"int8"``, ``"int8:stochastic"`` | [`Int8`][gossip_comm.Int8] | 1 byte + a scale per block |
| ``"topk:F"`` | [`TopK`][gossip_comm.TopK] | 8 bytes for a share ``F`` of them |
| ``"lowrank:R"`` | [`LowRank`][gossip_comm.LowRank] | rank-``R`` factors of each matrix |

Each has a numpy twin in gossip-topology (`gossip_topology.compress`) with the same maths,
used by the simulator that the tests compare against.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

import gossip_topology.compress as _twin

__all__ = [
    "COMPRESSION_SPECS",
    "Cast",
    "Compressor",
    "Int8",
    "LowRank",
    "MessageSpec",
    "TopK",
    "make_compressor",
]

COMPRESSION_SPECS: tuple[str, ...] = (
    "bf16",
    "fp16",
    "int8",
    "int8:stochastic",
    "topk:F",
    "lowrank:R",
)
"""The spec strings [`make_compressor`][gossip_comm.make_compressor] accepts (``F`` a
fraction in (0, 1], ``R`` a positive int)."""


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

    def init_state(self, spec: MessageSpec, *, src: int, dst: int) -> dict[str, torch.Tensor]:
        """The state of edge ``src -> dst`` before its first message (default: none)."""
        return {}

    @abstractmethod
    def encode(
        self,
        spec: MessageSpec,
        value: torch.Tensor,
        payload: Sequence[torch.Tensor],
        state: dict[str, torch.Tensor],
    ) -> None:
        """Write the compressed form of the flat ``value`` into ``payload``.

        May update ``state``, the edge's own (for example a warm start).
        """

    @abstractmethod
    def decode(self, spec: MessageSpec, payload: Sequence[torch.Tensor], out: torch.Tensor) -> None:
        """Overwrite the flat ``out`` with the message ``payload`` stands for."""

    def add_decoded(
        self, spec: MessageSpec, payload: Sequence[torch.Tensor], into: torch.Tensor
    ) -> None:
        """``into += decode(payload)``; override when a sparse add is cheaper."""
        tmp = torch.empty_like(into)
        self.decode(spec, payload, tmp)
        into.add_(tmp)

    def payload_bytes(self, spec: MessageSpec) -> int:
        """Bytes one message of ``spec`` takes on the wire."""
        return sum(t.nbytes for t in self.payload_like(spec))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Cast(Compressor):
    """Round each element to a 16-bit float (``"bf16"`` or ``"fp16"``) and widen it back.

    Args:
        dtype: ``torch.bfloat16`` or ``torch.float16`` (or their names ``"bf16"``,
            ``"fp16"``).

    Attributes:
        dtype: ``torch.bfloat16`` or ``torch.float16``.

    Raises:
        ValueError: For any other dtype.
    """

    def __init__(self, dtype: torch.dtype | str) -> None:
        names = {"bf16": torch.bfloat16, "fp16": torch.float16}
        resolved = names.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if resolved not in (torch.bfloat16, torch.float16):
            raise ValueError(
                f"Cast dtype must be torch.bfloat16, torch.float16, 'bf16' or 'fp16'; got {dtype!r}"
            )
        assert isinstance(resolved, torch.dtype)
        self.dtype = resolved
        self.name = "bf16" if resolved == torch.bfloat16 else "fp16"
        # one source for both sides: the numpy twin's value, chosen by the consensus sweep
        self.default_consensus_step = _twin.Cast(self.name).default_consensus_step

    def payload_like(self, spec: MessageSpec) -> list[torch.Tensor]:
        return [torch.empty(spec.numel, dtype=self.dtype, device=spec.device)]

    def encode(
        self,
        spec: MessageSpec,
        value: torch.Tensor,
        payload: Sequence[torch.Tensor],
        state: dict[str, torch.Tensor],
    ) -> None:
        payload[0].copy_(value)

    def decode(self, spec: MessageSpec, payload: Sequence[torch.Tensor], out: torch.Tensor) -> None:
        out.copy_(payload[0])

    def add_decoded(
        self, spec: MessageSpec, payload: Sequence[torch.Tensor], into: torch.Tensor
    ) -> None:
        into.add_(payload[0].to(into.dtype))

    def __repr__(self) -> str:
        return f"Cast({self.name!r})"


class Int8(Compressor):
    """8-bit codes with one float32 scale per block of ``block`` elements.

    Block ``b`` is sent as ``s_b = max|v_b| / 127`` (rounded to float32) and the codes
    ``round(v_b / s_b)``, or with ``stochastic=True`` ``floor(v_b / s_b + u)``, ``u``
    uniform in [0, 1): unbiased, at twice the error.

    Args:
        block: Elements per scale, ``>= 1``.
        stochastic: Stochastic instead of nearest rounding.
        seed: Seed of the rounding noise (each edge draws its own stream from it).

    Attributes:
        block: Elements per scale.
        stochastic: Whether rounding is stochastic.
        seed: Seed of the rounding noise.

    Raises:
        ValueError: If ``block < 1``.
        TypeError: If ``stochastic`` is not a bool.
    """

    name = "int8"

    def __init__(self, block: int = 1024, *, stochastic: bool = False, seed: int = 0) -> None:
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"Int8 block must be an int >= 1; got {block!r}")
        if not isinstance(stochastic, bool):
            raise TypeError(f"Int8 stochastic must be a bool; got {stochastic!r}")
        self.block, self.stochastic, self.seed = block, stochastic, int(seed)
        self.default_consensus_step = _twin.Int8(block).default_consensus_step
        if stochastic:
            self.name = "int8:stochastic"

    def _blocks(self, numel: int) -> int:
        return -(-numel // self.block)

    def payload_like(self, spec: MessageSpec) -> list[torch.Tensor]:
        return [
            torch.empty(spec.numel, dtype=torch.int8, device=spec.device),
            torch.empty(self._blocks(spec.numel), dtype=torch.float32, device=spec.device),
        ]

    def init_state(self, spec: MessageSpec, *, src: int, dst: int) -> dict[str, torch.Tensor]:
        if not self.stochastic:
            return {}
        gen = torch.Generator(device=spec.device)
        gen.manual_seed(hash((self.seed, src, dst)) & 0x7FFF_FFFF_FFFF)
        return {"rng": gen.get_state()}

    def _padded(self, value: torch.Tensor) -> torch.Tensor:
        nb = self._blocks(value.numel())
        pad = nb * self.block - value.numel()
        if pad:
            value = torch.cat([value, value.new_zeros(pad)])
        return value.view(nb, self.block)

    def encode(
        self,
        spec: MessageSpec,
        value: torch.Tensor,
        payload: Sequence[torch.Tensor],
        state: dict[str, torch.Tensor],
    ) -> None:
        codes, scales = payload
        blocks = self._padded(value)
        scales.copy_(blocks.abs().amax(dim=1) / 127.0)
        s = scales.to(value.dtype)[:, None]
        scaled = torch.where(s > 0, blocks / torch.where(s > 0, s, 1.0), 0.0)
        if self.stochastic:
            gen = torch.Generator(device=value.device)
            gen.set_state(state["rng"])
            noise = torch.rand(scaled.shape, generator=gen, dtype=scaled.dtype, device=value.device)
            state["rng"] = gen.get_state()
            scaled = torch.floor(scaled + noise)
        else:
            scaled = torch.round(scaled)
        codes.copy_(scaled.clamp_(-127, 127).reshape(-1)[: value.numel()])

    def decode(self, spec: MessageSpec, payload: Sequence[torch.Tensor], out: torch.Tensor) -> None:
        codes, scales = payload
        full = self._padded(codes.to(out.dtype))
        out.copy_((full * scales.to(out.dtype)[:, None]).reshape(-1)[: out.numel()])

    def __repr__(self) -> str:
        return f"Int8(block={self.block}, stochastic={self.stochastic})"


class TopK(Compressor):
    """The ``fraction`` of the entries largest in magnitude, as values and int32 indices.

    ``k = max(1, ceil(fraction * numel))`` entries travel; the rest of the difference
    stays with the sender and goes out in later steps.

    Args:
        fraction: Share of the entries to send, in (0, 1].

    Attributes:
        fraction: Share of the entries sent.

    Raises:
        ValueError: If ``fraction`` is not in (0, 1].
    """

    name = "topk"

    def __init__(self, fraction: float) -> None:
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0.0 < fraction <= 1.0
        ):
            raise ValueError(f"TopK fraction must be a number in (0, 1]; got {fraction!r}")
        self.fraction = float(fraction)
        self.name = f"topk:{self.fraction:g}"
        # min(1, 2 * fraction): no one value suits every fraction (the twin's sweep)
        self.default_consensus_step = _twin.TopK(self.fraction).default_consensus_step

    def k(self, numel: int) -> int:
        """Entries sent from a message of ``numel`` elements."""
        return max(1, min(numel, math.ceil(self.fraction * numel)))

    def payload_like(self, spec: MessageSpec) -> list[torch.Tensor]:
        k = self.k(spec.numel)
        index = torch.int32 if spec.numel < 2**31 else torch.int64
        return [
            torch.empty(k, dtype=spec.dtype, device=spec.device),
            torch.empty(k, dtype=index, device=spec.device),
        ]

    def encode(
        self,
        spec: MessageSpec,
        value: torch.Tensor,
        payload: Sequence[torch.Tensor],
        state: dict[str, torch.Tensor],
    ) -> None:
        values, indices = payload
        top = torch.topk(value.abs(), values.numel(), sorted=False).indices
        indices.copy_(top)
        values.copy_(value[top])

    def decode(self, spec: MessageSpec, payload: Sequence[torch.Tensor], out: torch.Tensor) -> None:
        out.zero_()
        self.add_decoded(spec, payload, out)

    def add_decoded(
        self, spec: MessageSpec, payload: Sequence[torch.Tensor], into: torch.Tensor
    ) -> None:
        values, indices = payload
        into.index_add_(0, indices.long(), values.to(into.dtype))

    def __repr__(self) -> str:
        return f"TopK({self.fraction:g})"


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
            torch.mm(P, Q.t(), out=dest.view(s.rows, s.cols))

    def __repr__(self) -> str:
        return f"LowRank({self.rank})"


def make_compressor(spec: Compressor | str) -> Compressor:
    """A compressor from a spec string (``"int8"``, ``"topk:0.01"``, ``"lowrank:2"``...).

    Args:
        spec: One of `COMPRESSION_SPECS` with its number filled in, or a `Compressor`,
            returned as it is.

    Raises:
        ValueError: For an unknown spec, naming the accepted ones.
        TypeError: If ``spec`` is neither a string nor a `Compressor`.

    Examples:
        >>> make_compressor("topk:0.01")
        TopK(0.01)
    """
    if isinstance(spec, Compressor):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"compression must be a Compressor or a spec string; got {spec!r}")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    try:
        if kind in ("bf16", "fp16") and not arg:
            return Cast(kind)
        if kind == "int8" and arg in ("", "stochastic"):
            return Int8(stochastic=arg == "stochastic")
        if kind == "topk" and arg:
            return TopK(float(arg))
        if kind == "lowrank" and arg:
            return LowRank(int(arg))
    except ValueError as exc:
        raise ValueError(f"compression {spec!r}: {exc}") from None
    raise ValueError(
        f"compression must be one of {', '.join(COMPRESSION_SPECS)} (F in (0, 1], R >= 1) "
        f"or a Compressor; got {spec!r}"
    )
