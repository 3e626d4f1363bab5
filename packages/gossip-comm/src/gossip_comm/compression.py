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
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import ProcessGroup

import gossip_topology.compress as _twin
from gossip_comm._backend import comm_device_for, group_size, resolve_group
from gossip_comm._compressor import Compressor, EdgeState, MessageSpec, Payload, checksum
from gossip_comm._lowrank import LowRank
from gossip_comm._scratch import CHUNK, Scratch

__all__ = [
    "COMPRESSION_SPECS",
    "Cast",
    "Compressor",
    "EdgeState",
    "Int8",
    "LowRank",
    "MessageSpec",
    "Payload",
    "TopK",
    "common_references",
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

#: TopK pre-selects candidates by a sampled threshold from this many elements on ...
_TOPK_PRESELECT_MIN = 1 << 20
#: ... with a sample of about this many.
_TOPK_SAMPLE = 1 << 16


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
        self._scratch = Scratch()

    def payload_like(self, spec: MessageSpec) -> list[torch.Tensor]:
        return [torch.empty(spec.numel, dtype=self.dtype, device=spec.device)]

    def encode(self, spec: MessageSpec, value: Tensor, payload: Payload, state: EdgeState) -> None:
        payload[0].copy_(value)

    def decode(self, spec: MessageSpec, payload: Payload, out: torch.Tensor) -> None:
        out.copy_(payload[0])

    def add_decoded(self, spec: MessageSpec, payload: Payload, into: torch.Tensor) -> None:
        (half,) = payload
        if into.device.type != "cpu":
            into.add_(half)  # widened exactly inside the add
            return
        # On CPU a mixed-dtype add takes a slow path (about 6x a float add): widen a
        # cache-sized chunk (exact), then add it; the same bits either way.
        for start, stop, w in self._scratch.chunks(into.numel(), into.dtype, into.device):
            w.copy_(half[start:stop])
            into[start:stop].add_(w)

    def encode_difference(
        self, spec: MessageSpec, value: Tensor, public: Tensor, payload: Payload, state: EdgeState
    ) -> None:
        # subtract, round, widen and add a chunk at a time: one pass over the message
        (half,) = payload
        for start, stop, w in self._scratch.chunks(value.numel(), value.dtype, value.device):
            h, pub = half[start:stop], public[start:stop]
            torch.sub(value[start:stop], pub, out=w)
            h.copy_(w)
            if pub.device.type != "cpu":
                pub.add_(h)  # as add_decoded there: widened inside the add
                continue
            w.copy_(h)
            pub.add_(w)

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
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Int8 seed must be an int >= 0; got {seed!r}")
        self.block, self.stochastic, self.seed = block, stochastic, seed
        self._scratch = Scratch()
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

    def init_state(self, spec: MessageSpec, *, src: int, dst: int) -> EdgeState:
        if not self.stochastic:
            return {}
        gen = torch.Generator(device=spec.device)
        gen.manual_seed(hash((self.seed, src, dst)) & 0x7FFF_FFFF_FFFF)
        return {"rng": gen.get_state()}

    def _parts(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole blocks as a ``(blocks, block)`` view, and the ragged tail (views)."""
        whole = flat.numel() // self.block * self.block
        return flat[:whole].view(-1, self.block), flat[whole:]

    def _block_step(self) -> int:
        """Elements per chunk: whole blocks (the last chunk may end in the ragged tail)."""
        return max(self.block, CHUNK // self.block * self.block)

    def encode(self, spec: MessageSpec, value: Tensor, payload: Payload, state: EdgeState) -> None:
        codes, scales = payload
        if self.stochastic:  # one draw over the whole message: the noise stream is fixed
            work = self._scratch.get(value.numel(), value.dtype, value.device)
            gen = torch.Generator(device=value.device)
            gen.set_state(state["rng"])
            self._encode_span(value, codes, scales, work, gen)
            state["rng"] = gen.get_state()
            return
        step = self._block_step()
        for start, stop, w in self._scratch.chunks(value.numel(), value.dtype, value.device, step):
            blocks = slice(start // self.block, -(-stop // self.block))
            self._encode_span(value[start:stop], codes[start:stop], scales[blocks], w, None)

    def encode_difference(
        self, spec: MessageSpec, value: Tensor, public: Tensor, payload: Payload, state: EdgeState
    ) -> None:
        if self.stochastic:
            super().encode_difference(spec, value, public, payload, state)
            return
        # subtract, encode, decode and add a chunk of whole blocks at a time: one pass
        codes, scales = payload
        step, numel, device = self._block_step(), value.numel(), value.device
        diff = self._scratch.for_spans(numel, value.dtype, device, step, slot=1)
        for start, stop, w in self._scratch.chunks(numel, value.dtype, device, step):
            d, pub = diff[: stop - start], public[start:stop]
            blocks = slice(start // self.block, -(-stop // self.block))
            torch.sub(value[start:stop], pub, out=d)
            self._encode_span(d, codes[start:stop], scales[blocks], w, None)
            # decode from the codes, as the receiver does: w may hold a -0.0 that the
            # int8 code is not, and -0.0 + -0.0 differs from -0.0 + 0.0 in its sign
            self._add_span(codes[start:stop], scales[blocks], pub, w)

    def _encode_span(
        self,
        value: torch.Tensor,
        codes: torch.Tensor,
        scales: torch.Tensor,
        work: torch.Tensor,
        gen: torch.Generator | None,
    ) -> None:
        """Encode ``value`` (whole blocks, then maybe the tail) into its codes and scales."""
        head, tail = self._parts(value)
        whole = head.shape[0]
        work_head, work_tail = self._parts(work)
        # |v| into the (cache-sized) work buffer, then a row max: ten times faster on CPU
        # than torch.aminmax along rows, and the same value
        scales[:whole].copy_(torch.abs(head, out=work_head).amax(dim=1) / 127.0)
        if tail.numel():
            scales[whole:].copy_(torch.abs(tail, out=work_tail).amax() / 127.0)
        s = scales.to(value.dtype)
        s = torch.where(s > 0, s, 1.0)  # a zero block holds zeros: any divisor gives 0
        torch.div(head, s[:whole, None], out=work_head)
        if tail.numel():
            torch.div(tail, s[whole:], out=work_tail)
        if gen is not None:
            work.add_(torch.rand(work.shape, generator=gen, dtype=work.dtype, device=work.device))
            work.floor_()
        else:
            work.round_()
        codes.copy_(work.clamp_(-127, 127))

    def decode(self, spec: MessageSpec, payload: Payload, out: torch.Tensor) -> None:
        out.zero_()
        self.add_decoded(spec, payload, out)

    def add_decoded(self, spec: MessageSpec, payload: Payload, into: torch.Tensor) -> None:
        codes, scales = payload
        step = self._block_step()
        for start, stop, w in self._scratch.chunks(into.numel(), into.dtype, into.device, step):
            blocks = slice(start // self.block, -(-stop // self.block))
            self._add_span(codes[start:stop], scales[blocks], into[start:stop], w)

    def _add_span(
        self, codes: torch.Tensor, scales: torch.Tensor, into: torch.Tensor, work: torch.Tensor
    ) -> None:
        """``into += decode(codes, scales)`` for whole blocks (then maybe the tail)."""
        work.copy_(codes)  # int8 -> float: exact, and fast unlike a mixed op
        s = scales.to(into.dtype)
        head, tail = self._parts(work)
        head.mul_(s[: head.shape[0], None])
        if tail.numel():
            tail.mul_(s[head.shape[0] :])
        into.add_(work)

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
        self._scratch = Scratch()

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

    def encode(self, spec: MessageSpec, value: Tensor, payload: Payload, state: EdgeState) -> None:
        values, indices = payload
        top = self._top(value, values.numel())
        indices.copy_(top)
        values.copy_(value[top])

    def _top(self, value: torch.Tensor, k: int) -> torch.Tensor:
        """Indices of the ``k`` entries largest in magnitude (in no particular order).

        ``torch.topk`` over a whole large message is slow on CPU (0.55 s for 25 M
        elements), so large messages first keep the candidates above a threshold
        estimated from a strided sample, chosen so that about 1.5 k pass, and run
        ``topk`` on those alone (about 8x faster); if fewer than ``k`` pass, the whole
        message is searched. The same entries are chosen either way, ties aside.
        """
        n = value.numel()
        if self._preselects(n, k):
            top = self._preselect(value, None, k)
            if top is not None:
                return top
        magnitude = self._scratch.get(n, value.dtype, value.device)
        return torch.topk(torch.abs(value, out=magnitude), k, sorted=False).indices

    @staticmethod
    def _preselects(n: int, k: int) -> bool:
        return n >= _TOPK_PRESELECT_MIN and k * 10 <= n

    def _preselect(
        self, value: torch.Tensor, public: torch.Tensor | None, k: int
    ) -> torch.Tensor | None:
        """The ``k`` largest of ``|value - public|`` (``public`` None: 0) among those above
        a sampled threshold, a cache-sized chunk at a time; None if fewer than ``k`` pass."""
        n = value.numel()
        stride = max(1, n // _TOPK_SAMPLE)
        sample = value[::stride] if public is None else value[::stride] - public[::stride]
        cut = torch.quantile(sample.abs().float(), 1.0 - 1.5 * k / n).to(value.dtype)
        above = self._scratch.for_spans(n, torch.bool, value.device)
        found, magnitudes = [], []
        for start, stop, w in self._scratch.chunks(n, value.dtype, value.device):
            m = above[: stop - start]
            if public is None:
                torch.abs(value[start:stop], out=w)
            else:
                torch.sub(value[start:stop], public[start:stop], out=w).abs_()
            torch.ge(w, cut, out=m)
            hits = _true_positions(m)
            magnitudes.append(w.index_select(0, hits))  # gathered while in cache
            found.append(hits.add_(start))
        candidates = torch.cat(found)
        if candidates.numel() < k:
            return None
        best = torch.topk(torch.cat(magnitudes), k, sorted=False).indices
        return candidates.index_select(0, best)

    def encode_difference(
        self, spec: MessageSpec, value: Tensor, public: Tensor, payload: Payload, state: EdgeState
    ) -> None:
        values, indices = payload
        n, k = value.numel(), values.numel()
        top = self._preselect(value, public, k) if self._preselects(n, k) else None
        if top is None:  # a small message, or too few candidates: search the whole of it
            magnitude = self._scratch.get(n, value.dtype, value.device)
            torch.sub(value, public, out=magnitude).abs_()
            top = torch.topk(magnitude, k, sorted=False).indices
        indices.copy_(top)
        torch.sub(value.index_select(0, top), public.index_select(0, top), out=values)
        self.add_decoded(spec, payload, public)

    def decode(self, spec: MessageSpec, payload: Payload, out: torch.Tensor) -> None:
        out.zero_()
        self.add_decoded(spec, payload, out)

    def add_decoded(self, spec: MessageSpec, payload: Payload, into: torch.Tensor) -> None:
        values, indices = payload
        into.index_add_(0, indices.long(), values.to(into.dtype))

    def __repr__(self) -> str:
        return f"TopK({self.fraction!r})"


def _true_positions(mask: torch.Tensor) -> torch.Tensor:
    """``torch.nonzero(mask).squeeze(1)`` for a 1-D bool mask; on CPU through numpy,
    whose search of a bool array is about 2.5x faster than torch's."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask).squeeze(1)


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
    # one parser for both packages: gossip-topology's, whose twin is mapped to torch's
    twin = _twin.parse_compressor(spec)
    if isinstance(twin, _twin.Cast):
        return Cast(twin.dtype)
    if isinstance(twin, _twin.Int8):
        return Int8(twin.block, stochastic=twin.stochastic)
    if isinstance(twin, _twin.TopK):
        return TopK(twin.fraction)
    assert isinstance(twin, _twin.LowRank)
    return LowRank(twin.rank)


def common_references(
    tensors: Sequence[torch.Tensor], process_group: ProcessGroup | None = None
) -> list[torch.Tensor | None]:
    """A copy of each tensor that every rank of the group holds bit for bit, else ``None``.

    For a gossiper's ``reference=``: in training every rank usually starts from the same
    model, and public copies that start there spare the first messages the whole model.
    One ``all_gather`` of checksums; the gossiper checks the reference again when built.

    Args:
        tensors: This rank's tensors, the same number and shapes on every rank.
        process_group: The group; WORLD when ``None``.

    Raises:
        TypeError: If ``tensors`` is not a sequence of tensors.
    """
    if not isinstance(tensors, Sequence) or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(f"tensors must be a sequence of torch.Tensor; got {tensors!r:.80}")
    group = resolve_group(process_group)
    sums = [checksum(t) for t in tensors]
    local = torch.tensor(sums, dtype=torch.int64, device=comm_device_for(group, None))
    gathered = [torch.empty_like(local) for _ in range(group_size(group))]
    dist.all_gather(gathered, local, group=group)
    same = torch.stack(gathered).eq(local).all(dim=0).tolist()
    return [t.detach().clone() if ok else None for t, ok in zip(tensors, same, strict=True)]
