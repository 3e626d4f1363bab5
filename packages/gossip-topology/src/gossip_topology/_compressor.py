"""Private: the `Compressor` interface and its `Payload`, shared by every compressor module."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.random import Generator
from numpy.typing import ArrayLike, NDArray

from gossip_topology._checks import check_int

__all__ = ["Compressor", "EdgeState", "Layout", "Payload", "as_layout"]

Array = NDArray[np.float64]
#: Segment shapes of one message, as `as_layout` returns them.
Layout = tuple[tuple[int, ...], ...]
#: Per-message compressor state: arrays whose leading axis is the message (row) axis.
EdgeState = list[Array]


@dataclass(frozen=True)
class Payload:
    """A batch of encoded messages: what travels on the wire, one row per message.

    Attributes:
        arrays: The arrays sent, each with the message axis first.
        d: Length of each decoded message.
        layout: The segment shapes of the message, for compressors that need them.
    """

    arrays: tuple[NDArray[Any], ...]
    d: int
    layout: Layout | None = None

    @property
    def rows(self) -> int:
        """Number of messages in the batch."""
        return int(self.arrays[0].shape[0]) if self.arrays else 0

    @property
    def nbytes_per_message(self) -> int:
        """Bytes one message occupies in these arrays (0 for an empty batch)."""
        rows = self.rows
        return sum(a.nbytes for a in self.arrays) // rows if rows else 0


def as_layout(layout: Sequence[Sequence[int]] | None, d: int) -> Layout | None:
    """Check that ``layout`` (segment shapes) covers exactly ``d`` elements; None passes."""
    if layout is None:
        return None
    shapes = tuple(
        tuple(check_int("layout dimension", s, minimum=1) for s in shape) for shape in layout
    )
    total = sum(math.prod(s) for s in shapes)
    if total != d:
        raise ValueError(f"layout must describe d={d} elements; its shapes {shapes} hold {total}")
    return shapes


class Compressor(ABC):
    """A message compressor, applied row-wise to a batch ``(E, d)`` of float64 messages.

    Subclasses implement `_encode`, `_decode` and `_payload_bytes` (arguments already
    checked), set `name`, and may override `init_state` and `default_consensus_step`.

    Attributes:
        name: The spec string (``"int8"``, ``"topk:0.01"``, ...) or a user-chosen name.
    """

    name: str = "compressor"

    @property
    def default_consensus_step(self) -> float:
        """The consensus step ``gamma`` used when none is given; 1 unless overridden."""
        return 1.0

    def init_state(
        self, rows: int, d: int, layout: Sequence[Sequence[int]] | None = None
    ) -> EdgeState:
        """Initial state for ``rows`` messages (edges) of length ``d``; none by default.

        Returns:
            A list of arrays whose leading axis has length ``rows``; `encode` updates them
            in place.
        """
        check_int("rows", rows, minimum=0)
        as_layout(layout, check_int("d", d, minimum=0))
        return []

    def encode(
        self,
        v: ArrayLike,
        state: EdgeState | None = None,
        *,
        layout: Sequence[Sequence[int]] | None = None,
        rng: Generator | None = None,
    ) -> Payload:
        """Encode each row of ``v``.

        Args:
            v: Messages, shape ``(E, d)``.
            state: Per-row state from `init_state` (for ``E`` rows), updated in place; None
                encodes statelessly from the initial state.
            layout: Shapes of the segments of one message (their sizes sum to ``d``).
            rng: Random generator for stochastic compressors; their own one by default.

        Returns:
            The [`Payload`][gossip_topology.Payload].

        Raises:
            ValueError: If ``v`` is not 2-D or the layout does not cover ``d`` elements.
        """
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"v must have shape (E, d), one message per row; got {arr.shape}")
        return self._encode(arr, state, as_layout(layout, arr.shape[1]), rng)

    def decode(self, payload: Payload) -> Array:
        """The decoded messages, shape ``(E, d)``, float64.

        Raises:
            TypeError: If ``payload`` is not a [`Payload`][gossip_topology.Payload].
        """
        if not isinstance(payload, Payload):
            raise TypeError(f"payload must be a Payload; got {type(payload).__name__}")
        return self._decode(payload)

    def payload_bytes(
        self, d: int, itemsize: int = 4, layout: Sequence[Sequence[int]] | None = None
    ) -> int:
        """Bytes one message of length ``d`` takes on the wire.

        Args:
            d: Message length.
            itemsize: Bytes per element of the buffer dtype (4 for float32).
            layout: Segment shapes, for compressors that use them.
        """
        d = check_int("d", d, minimum=0)
        itemsize = check_int("itemsize", itemsize, minimum=1)
        return self._payload_bytes(d, itemsize, as_layout(layout, d))

    @abstractmethod
    def _encode(
        self, v: Array, state: EdgeState | None, layout: Layout | None, rng: Generator | None
    ) -> Payload: ...

    @abstractmethod
    def _decode(self, payload: Payload) -> Array: ...

    @abstractmethod
    def _payload_bytes(self, d: int, itemsize: int, layout: Layout | None) -> int: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
