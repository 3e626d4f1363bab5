"""`GossipConfig`: the communication options every gossiper shares, in one frozen dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributed import ProcessGroup

from gossip_comm.compression import Compressor, make_compressor
from gossip_topology import Mixing

__all__ = ["DEFAULT_CHUNK_BYTES", "WIRE_DTYPES", "GossipConfig"]

WIRE_DTYPES: tuple[torch.dtype | None, ...] = (None, torch.bfloat16, torch.float16)
"""The accepted values of ``GossipConfig.wire_dtype``: the dtype messages travel in.

``None`` sends the buffer's own dtype; ``torch.bfloat16`` and ``torch.float16`` halve the
bytes on the wire of a float32 buffer. Whatever the wire dtype, the receiver accumulates in
the buffer's dtype and push-sum weights travel in float64.
"""

DEFAULT_CHUNK_BYTES = 4 << 20
"""Chunk size on gloo between hosts when ``GossipConfig.chunk_bytes`` is ``None``: 4 MiB.

Chosen on the emulated cluster (`nox -s cluster`, the chunk-size sweep on the benchmarks
page): within a few percent of the best size at 1 Gbit/s and the best of those tried at
10 Gbit/s, where smaller chunks cost CPU per message.
"""


@dataclass(frozen=True, kw_only=True)
class GossipConfig:
    r"""Options shared by every gossiper; build it with keywords and pass it as ``config=``.

    Attributes:
        mixing: Mixing rule; ``UniformMixing()`` when ``None``.
        process_group: Group to gossip in; WORLD when ``None``.
        comm_device: Device of the communication buffers. Default: CUDA for NCCL, CPU for
            gloo. A CUDA tensor gossiped over gloo is staged through host memory.
        wire_dtype: ``None`` (send the buffer's dtype), ``torch.bfloat16`` or
            ``torch.float16``. Accumulation stays in the buffer's dtype and push-sum
            weights always travel in float64.
        timeout: Seconds to wait for one step's messages before raising
            [`GossipTimeoutError`][gossip_comm.GossipTimeoutError].
        check_finite: Check every received message for NaN/Inf and raise
            [`NonFiniteError`][gossip_comm.NonFiniteError] naming the sender.
        chunk_bytes: Messages longer than this travel in chunks of about this many bytes,
            posted interleaved in both directions and mixed as each one arrives, so a
            pair of ranks that send to each other get the line rate both ways. ``None``
            picks what the link needs: on gloo, ``DEFAULT_CHUNK_BYTES`` between ranks on
            different hosts and one message between ranks of one host (where chunks only
            cost); one message on NCCL. ``0`` never splits; a positive value splits
            every pair's messages. Every rank must use the same value.
        compression: Send compressed differences instead of the value: a
            [`Compressor`][gossip_comm.Compressor] or a spec string such as ``"int8"``,
            ``"topk:0.01"`` or ``"lowrank:2"`` (see
            [`make_compressor`][gossip_comm.make_compressor]). Each rank then keeps a
            public copy per edge and the network's sum is conserved exactly whatever
            the compressor. ``None`` sends the value itself.
        consensus_step: With ``compression``, the consensus step size $\gamma$ in (0, 1]:
            each step mixes with ``(1 - gamma) I + gamma W``. ``None`` takes the
            compressor's ``default_consensus_step``.
        fault_tolerant: Gossip so that a lost peer can be survived (gloo only, without
            compression): every operation is posted on its own, the push-sum weight
            always travels, and a step that fails keeps its buffers so that
            ``settle`` can fold in exactly what was delivered. See
            [`Membership`][gossip_comm.Membership].

    Raises:
        TypeError: If ``mixing`` is not a ``gossip_topology.Mixing`` or ``check_finite``
            is not a bool.
        ValueError: If ``timeout`` is not a positive number, ``wire_dtype`` is not one
            of ``WIRE_DTYPES``, ``chunk_bytes`` is negative, ``compression`` is not a known
            spec, ``consensus_step`` is outside (0, 1] or set without ``compression``, or
            ``wire_dtype`` and ``compression`` are both set.

    Example:
        ```python
        config = GossipConfig(wire_dtype=torch.bfloat16, timeout=60.0)
        ps = PushSum(topology, x, config=config)
        ```
    """

    mixing: Mixing | None = None
    process_group: ProcessGroup | None = None
    comm_device: torch.device | str | None = None
    wire_dtype: torch.dtype | None = None
    timeout: float = 300.0
    check_finite: bool = False
    chunk_bytes: int | None = None
    compression: Compressor | str | None = None
    consensus_step: float | None = None
    fault_tolerant: bool = False

    @property
    def compressor(self) -> Compressor | None:
        """``compression`` as a [`Compressor`][gossip_comm.Compressor] (``None``: none)."""
        return None if self.compression is None else make_compressor(self.compression)

    @property
    def gamma(self) -> float:
        """The consensus step in use: ``consensus_step``, the compressor's default, or 1."""
        if self.consensus_step is not None:
            return float(self.consensus_step)
        compressor = self.compressor
        return 1.0 if compressor is None else float(compressor.default_consensus_step)

    def __post_init__(self) -> None:
        if self.mixing is not None and not isinstance(self.mixing, Mixing):
            raise TypeError(
                f"mixing must be a gossip_topology.Mixing or None; got {type(self.mixing)}"
            )
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not (self.timeout > 0 and math.isfinite(self.timeout))
        ):
            raise ValueError(f"timeout must be a positive number of seconds; got {self.timeout!r}")
        if self.wire_dtype not in WIRE_DTYPES:
            raise ValueError(
                f"wire_dtype must be None, torch.bfloat16 or torch.float16; got {self.wire_dtype}"
            )
        if not isinstance(self.check_finite, bool):
            raise TypeError(f"check_finite must be a bool; got {self.check_finite!r}")
        if not isinstance(self.fault_tolerant, bool):
            raise TypeError(f"fault_tolerant must be a bool; got {self.fault_tolerant!r}")
        if self.fault_tolerant and self.compression is not None:
            raise ValueError(
                "fault_tolerant gossip does not support compression yet: a lost peer "
                "leaves public copies that only it could settle; set compression=None"
            )
        if self.comm_device is not None and not isinstance(self.comm_device, torch.device | str):
            raise TypeError(
                f"comm_device must be a torch.device, a string or None; got {self.comm_device!r}"
            )
        if isinstance(self.comm_device, str):
            try:
                torch.device(self.comm_device)
            except RuntimeError:
                raise ValueError(
                    f"comm_device: {self.comm_device!r} is not a device name (e.g. 'cpu', 'cuda:0')"
                ) from None
        if self.process_group is not None and not isinstance(self.process_group, ProcessGroup):
            raise TypeError(
                "process_group must be a torch.distributed.ProcessGroup or None; got "
                f"{type(self.process_group).__name__}"
            )
        if self.chunk_bytes is not None and (
            isinstance(self.chunk_bytes, bool)
            or not isinstance(self.chunk_bytes, int)
            or self.chunk_bytes < 0
        ):
            raise ValueError(
                "chunk_bytes must be None (the backend's default), 0 (never split) or a "
                f"positive int; got {self.chunk_bytes!r}"
            )
        if self.compression is not None:
            make_compressor(self.compression)  # raises on an unknown spec
            if self.wire_dtype is not None:
                raise ValueError(
                    "wire_dtype and compression are both set; pick one (compression='bf16' "
                    "or 'fp16' sends 16-bit differences and keeps the sum exact)"
                )
        if self.consensus_step is not None:
            step = self.consensus_step
            if (
                isinstance(step, bool)
                or not isinstance(step, int | float)
                or not 0.0 < float(step) <= 1.0
            ):
                raise ValueError(f"consensus_step must be a number in (0, 1]; got {step!r}")
            if self.compression is None:
                raise ValueError(
                    "consensus_step only applies with compression; set compression or leave "
                    "consensus_step None"
                )
