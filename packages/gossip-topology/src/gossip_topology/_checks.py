"""Private: argument checks shared by gossip-topology's modules and its sibling packages.

Not user API: nothing here is exported from ``gossip_topology``. gossip-comm and gossip-nn
import ``check_int`` from this module, so that every integer-argument error in the gossip
packages reads the same way; it keeps its name and signature for them.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__: list[str] = []


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Return ``value`` as an ``int``, checked against ``minimum``.

    The one integer-argument check of the gossip packages: the layers above call it too,
    so every message reads the same way.

    Args:
        name: The argument's name, used in the error message.
        value: The value to check; ``bool`` is rejected although it is an ``int``.
        minimum: The smallest value allowed, if any.

    Raises:
        TypeError: If ``value`` is not an integer.
        ValueError: If ``value`` is below ``minimum``.

    Examples:
        >>> check_int("steps", 3, minimum=0)
        3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    result = int(value)
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {result}")
    return result


def check_unit_fraction(name: str, value: object) -> float:
    """Return ``value`` as a ``float`` in ``(0, 1]``.

    Raises:
        TypeError: If ``value`` is not a real number (``bool`` is rejected).
        ValueError: If ``value`` is outside ``(0, 1]``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    if not 0 < float(value) <= 1:
        raise ValueError(f"{name} must be in (0, 1]; got {value}")
    return float(value)


def check_rank(rank: object, world_size: int) -> int:
    """Validate a rank against ``world_size``."""
    r = check_int("rank", rank)
    if not 0 <= r < world_size:
        raise ValueError(
            f"rank must be in [0, {world_size - 1}] for world_size={world_size}; got {r}"
        )
    return r


def is_power_of_two(n: int) -> bool:
    """Whether ``n`` is a positive power of two (1 counts)."""
    return n >= 1 and n & (n - 1) == 0


def floor_log(base: int, value: int) -> int:
    """Exact ``floor(log_base(value))`` for integers ``base >= 2`` and ``value >= 1``.

    Computed with integer arithmetic only, so that ``floor_log(2, 8) == 3`` exactly,
    which ``math.floor(math.log(8, 2))`` does not guarantee.
    """
    if base < 2 or value < 1:
        raise ValueError(
            f"floor_log needs base >= 2 and value >= 1; got base={base}, value={value}"
        )
    exponent, power = 0, base
    while power <= value:
        exponent += 1
        power *= base
    return exponent


def ceil_log2(value: int) -> int:
    """Exact ``ceil(log2(value))`` for ``value >= 1``."""
    return (value - 1).bit_length()


def as_matrix_list(value: Any, name: str, dtype: Any = None) -> list[NDArray[Any]]:
    """Accept one matrix or a non-empty sequence of matrices (sizes may differ: checked later)."""
    if isinstance(value, np.ndarray):
        mats = [value] if value.ndim != 3 else list(value)
    else:
        try:
            items = list(value)
        except TypeError:
            raise TypeError(f"{name} must be a matrix or a sequence of matrices") from None
        if not items:
            raise ValueError(f"{name} must hold at least one matrix")
        first = np.asarray(items[0])
        mats = [np.asarray(v) for v in items] if first.ndim == 2 else [np.asarray(items)]
    return [np.asarray(m, dtype=dtype) for m in mats]
