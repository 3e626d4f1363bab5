"""Message compressors for compressed gossip: the numpy twins of the wire compressors.

A *message* is one float64 row of length ``d``; every method works on a batch of messages,
a 2-D array ``(E, d)`` with one message per row (in the simulator: one row per edge).
``decode(encode(v))`` is the value the receiver adds to its public copy of the sender.
Payload sizes depend only on ``d`` and the layout, never on the data.

Built-ins and their spec strings (see [`parse_compressor`][gossip_topology.parse_compressor]):
``"bf16"``, ``"fp16"`` ([`Cast`][gossip_topology.Cast]), ``"int8"``, ``"int8:stochastic"``
([`Int8`][gossip_topology.Int8]), ``"topk:F"`` ([`TopK`][gossip_topology.TopK]) and
``"lowrank:R"`` ([`LowRank`][gossip_topology.LowRank], PowerSGD-style rank-``R`` power
steps with a per-edge warm start; Vogels et al. 2019 and 2020).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.random import Generator

from gossip_topology._checks import check_int, check_unit_fraction
from gossip_topology._compressor import Array, Compressor, EdgeState, Layout, Payload
from gossip_topology._lowrank import LowRank

__all__ = [
    "COMPRESSOR_NAMES",
    "Cast",
    "Compressor",
    "Int8",
    "LowRank",
    "Payload",
    "TopK",
    "parse_compressor",
]

COMPRESSOR_NAMES: tuple[str, ...] = ("bf16", "fp16", "int8", "topk", "lowrank")
"""The kinds of spec string `parse_compressor` accepts (``"topk"`` and ``"lowrank"`` take an
argument after a colon, ``"int8"`` optionally ``":stochastic"``)."""
_ACCEPTED = (
    "'bf16', 'fp16', 'int8', 'int8:stochastic', 'topk:F' (0 < F <= 1), "
    "'lowrank:R' (integer R >= 1), a Compressor or None"
)


class Cast(Compressor):
    """Round to bfloat16 or float16 (2 bytes per element) and widen back.

    bfloat16 rounds the float32 value to nearest even on its bit pattern (NaN and Inf are
    not special-cased).

    Args:
        dtype: ``"bf16"`` or ``"fp16"``.

    Attributes:
        dtype: ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: On any other ``dtype``.

    Examples:
        >>> Cast("bf16").decode(Cast("bf16").encode([[1 + 2**-8, 1 + 3 * 2**-8]]))
        array([[1.      , 1.015625]])
    """

    def __init__(self, dtype: str) -> None:
        if dtype not in ("bf16", "fp16"):
            raise ValueError(f"dtype must be 'bf16' or 'fp16'; got {dtype!r}")
        self.name = self.dtype = dtype

    def _encode(
        self, v: Array, state: EdgeState | None, layout: Layout | None, rng: Generator | None
    ) -> Payload:
        if self.dtype == "fp16":
            return Payload(arrays=(v.astype(np.float16),), d=v.shape[1])
        bits = v.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return Payload(arrays=((rounded >> 16).astype(np.uint16),), d=v.shape[1])

    def _decode(self, payload: Payload) -> Array:
        (codes,) = payload.arrays
        if self.dtype == "fp16":
            return codes.astype(np.float64)
        return (codes.astype(np.uint32) << 16).view(np.float32).astype(np.float64)

    def _payload_bytes(self, d: int, itemsize: int, layout: Layout | None) -> int:
        return 2 * d

    def __repr__(self) -> str:
        return f"Cast({self.dtype!r})"


class Int8(Compressor):
    """Blockwise int8 quantisation with one float32 scale per block.

    For each block ``b`` of ``block`` elements (the last may be shorter),
    ``s_b = float32(max|v_b| / 127)`` and the codes are ``round_half_even(v_b / s_b)``
    clipped to ``[-127, 127]`` (``floor(v_b / s_b + u)``, ``u ~ U[0, 1)``, when
    ``stochastic``: unbiased); a zero scale gives zero codes. Decode is ``codes * s_b``.

    Args:
        block: Elements per scale, ``>= 1``.
        stochastic: Round stochastically instead of to nearest.
        seed: Seed of the generator used when `encode` gets no ``rng``.

    Attributes:
        block: Elements per scale.
        stochastic: Whether rounding is stochastic.

    Raises:
        ValueError: If ``block < 1``.
        TypeError: If ``stochastic`` is not a bool or ``block`` not an int.
    """

    def __init__(
        self, block: int = 1024, stochastic: bool = False, seed: int | None = None
    ) -> None:
        self.block = check_int("block", block, minimum=1)
        if not isinstance(stochastic, bool):
            raise TypeError(f"stochastic must be a bool; got {type(stochastic).__name__}")
        self.stochastic = stochastic
        self.name = "int8:stochastic" if stochastic else "int8"
        self._rng = np.random.default_rng(seed)

    def _encode(
        self, v: Array, state: EdgeState | None, layout: Layout | None, rng: Generator | None
    ) -> Payload:
        E, d = v.shape
        nb = -(-d // self.block)
        padded = np.zeros((E, nb * self.block))
        padded[:, :d] = v
        blocks = padded.reshape(E, nb, self.block)
        scales = (np.abs(blocks).max(axis=2) / 127).astype(np.float32)
        s = scales.astype(np.float64)[..., None]
        y = np.divide(blocks, s, out=np.zeros_like(blocks), where=s > 0)
        if self.stochastic:
            y = np.floor(y + (self._rng if rng is None else rng).random(y.shape))
        else:
            y = np.rint(y)
        codes = np.clip(y, -127, 127).astype(np.int8).reshape(E, nb * self.block)[:, :d]
        return Payload(arrays=(np.ascontiguousarray(codes), scales), d=d)

    def _decode(self, payload: Payload) -> Array:
        codes, scales = payload.arrays
        E, d = codes.shape
        padded = np.zeros((E, scales.shape[1] * self.block))
        padded[:, :d] = codes
        blocks = padded.reshape(E, -1, self.block) * scales.astype(np.float64)[..., None]
        return blocks.reshape(E, -1)[:, :d].copy()

    def _payload_bytes(self, d: int, itemsize: int, layout: Layout | None) -> int:
        return d + 4 * -(-d // self.block)

    def __repr__(self) -> str:
        return f"Int8(block={self.block}, stochastic={self.stochastic})"


class TopK(Compressor):
    """Keep the ``k = max(1, min(d, ceil(fraction * d)))`` entries of largest magnitude.

    Values travel in the buffer dtype, indices as int32 (int64 when ``d >= 2**31``).

    Args:
        fraction: Share of the entries kept, ``0 < fraction <= 1``.

    Attributes:
        fraction: Share of the entries sent.

    Raises:
        ValueError: If ``fraction`` is not in ``(0, 1]``.
        TypeError: If ``fraction`` is not a real number.
    """

    def __init__(self, fraction: float) -> None:
        self.fraction: float = check_unit_fraction("fraction", fraction)
        self.name = f"topk:{self.fraction!r}"

    @property
    def default_consensus_step(self) -> float:
        """``min(1, 2 * fraction)``.

        Chosen by a consensus sweep (ring and npeer-dynamic-directed-exponential, n = 16 to
        256, d = 256, fractions 0.01 to 0.3): larger steps diverge on the ring, smaller
        ones are slower; no single constant suits every fraction.
        """
        return min(1.0, 2 * self.fraction)

    def k(self, d: int) -> int:
        """Entries kept of a message of length ``d`` (0 when ``d == 0``)."""
        d = check_int("d", d, minimum=0)
        return max(1, min(d, math.ceil(self.fraction * d))) if d else 0

    def _encode(
        self, v: Array, state: EdgeState | None, layout: Layout | None, rng: Generator | None
    ) -> Payload:
        d = v.shape[1]
        k = self.k(d)
        index_dtype = np.int64 if d >= 2**31 else np.int32
        idx = np.argpartition(np.abs(v), d - k, axis=1)[:, d - k :] if k else v[:, :0].astype(int)
        idx.sort(axis=1)
        values = np.take_along_axis(v, idx, axis=1)
        return Payload(arrays=(values, idx.astype(index_dtype)), d=d)

    def _decode(self, payload: Payload) -> Array:
        values, idx = payload.arrays
        out = np.zeros((values.shape[0], payload.d))
        np.put_along_axis(out, idx.astype(np.intp), values, axis=1)
        return out

    def _payload_bytes(self, d: int, itemsize: int, layout: Layout | None) -> int:
        return self.k(d) * (itemsize + (8 if d >= 2**31 else 4))

    def __repr__(self) -> str:
        return f"TopK({self.fraction!r})"


def parse_compressor(spec: str | Compressor | None) -> Compressor | None:
    """Build a compressor from its spec string; a `Compressor` or None passes through.

    Args:
        spec: ``"bf16"``, ``"fp16"``, ``"int8"``, ``"int8:stochastic"``, ``"topk:F"``
            (``0 < F <= 1``), ``"lowrank:R"`` (integer ``R >= 1``), a
            [`Compressor`][gossip_topology.Compressor], or None for no compression.

    Returns:
        The compressor, or None.

    Raises:
        ValueError: On any other string, naming the accepted forms.
        TypeError: If ``spec`` is neither a string, a `Compressor` nor None.

    Examples:
        >>> parse_compressor("topk:0.01")
        TopK(0.01)
        >>> parse_compressor("lowrank:2")
        LowRank(2)
    """
    if spec is None or isinstance(spec, Compressor):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"compression must be a string, a Compressor or None; got {type(spec).__name__}"
        )
    kind, sep, arg = spec.strip().partition(":")
    if not sep and kind in ("bf16", "fp16"):
        return Cast(kind)
    if kind == "int8" and arg in ("", "stochastic") and (sep == "") == (arg == ""):
        return Int8(stochastic=bool(arg))
    try:
        if kind == "topk" and sep:
            return TopK(_parse_number(arg, float))
        if kind == "lowrank" and sep:
            return LowRank(_parse_number(arg, int))
    except (TypeError, ValueError) as err:
        raise ValueError(f"compression must be one of {_ACCEPTED}; got {spec!r} ({err})") from None
    raise ValueError(f"compression must be one of {_ACCEPTED}; got {spec!r}")


def _parse_number(text: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid {kind.__name__}") from None
