r"""Spectral and connectivity analysis of gossip schedules.

The consensus error used here is initial-condition free. After steps ``0 .. t-1`` the
push-sum estimate of rank ``i`` is $z_i = (M x_0)_i / (M \mathbf 1)_i$ with
$M = W(t-1) \cdots W(0)$, so the worst-case deviation from the mean over
$\|x_0\|_\infty \le 1$ is

$$ e(M) = \max_i \sum_j \left| \frac{M_{ij}}{\sum_l M_{il}} - \frac{1}{n} \right| . $$

It is zero exactly when every rank holds the exact average, whatever the inputs.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from numpy.typing import NDArray

from gossip_topology._checks import check_int
from gossip_topology._plan import PlanCache
from gossip_topology.mixing import Mixing, UniformMixing, schedule_period
from gossip_topology.topology import Topology

__all__ = [
    "consensus_error",
    "is_exact_averaging",
    "is_strongly_connected",
    "period_product",
    "rounds_to_consensus",
    "second_singular_value",
    "spectral_gap",
]


def second_singular_value(W: NDArray[np.float64]) -> float:
    r"""The second-largest singular value $\sigma_2(W)$ (0 for a 1x1 matrix).

    For a doubly-stochastic ``W`` this is $\|W - \tfrac1n \mathbf 1 \mathbf 1^\top\|_2$,
    the per-step contraction of the distance to consensus.
    """
    A = np.asarray(W, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"W must be a square matrix; got shape {A.shape}")
    if A.shape[0] < 2:
        return 0.0
    return float(np.linalg.svd(A, compute_uv=False)[1])


def spectral_gap(W: NDArray[np.float64]) -> float:
    r"""``1 - second_singular_value(W)``: larger means faster mixing."""
    return 1.0 - second_singular_value(W)


def _product(topology: Topology, mixing: Mixing, steps: int, start: int = 0) -> NDArray[np.float64]:
    plans = PlanCache(topology, mixing)
    M = np.eye(topology.world_size)
    for t in range(start, start + steps):
        M = plans[t].apply(M)
    return M


def period_product(
    topology: Topology, mixing: Mixing | None = None, start: int = 0
) -> NDArray[np.float64]:
    """The product ``W(start + P - 1) ... W(start)`` over one period ``P``.

    ``P`` is the least common multiple of the topology's and the mixing rule's periods.
    Its [`second_singular_value`][gossip_topology.second_singular_value] measures how
    much one full period mixes.
    """
    mixing = UniformMixing() if mixing is None else mixing
    start = check_int("start", start, minimum=0)
    return _product(topology, mixing, schedule_period(topology, mixing), start)


def is_strongly_connected(topology: Topology) -> bool:
    """Whether the union of the step graphs over one period is strongly connected.

    Push-sum converges to the average on any schedule with this property.
    """
    n = topology.world_size
    forward: list[list[int]] = [[] for _ in range(n)]
    backward: list[list[int]] = [[] for _ in range(n)]
    for a, b in topology.union_edges():
        forward[a].append(b)
        backward[b].append(a)
    return all(_reaches_all(adj) for adj in (forward, backward))


def _reaches_all(adj: list[list[int]]) -> bool:
    seen = {0}
    queue = deque([0])
    while queue:
        for v in adj[queue.popleft()]:
            if v not in seen:
                seen.add(v)
                queue.append(v)
    return len(seen) == len(adj)


def consensus_error(M: NDArray[np.float64]) -> float:
    """Worst-case push-sum deviation from the mean after the product ``M`` (see module doc)."""
    A = np.asarray(M, dtype=np.float64)
    n = A.shape[0]
    rows = A / A.sum(axis=1, keepdims=True)
    return float(np.abs(rows - 1.0 / n).sum(axis=1).max())


def rounds_to_consensus(
    topology: Topology,
    eps: float,
    mixing: Mixing | None = None,
    *,
    max_steps: int = 100_000,
) -> int:
    """Fewest steps after which push-sum is within ``eps`` of the mean for every input.

    Args:
        topology: The graph.
        eps: Tolerance on [`consensus_error`][gossip_topology.consensus_error], in ``(0, 2)``.
        mixing: The mixing rule; uniform by default.
        max_steps: Give up after this many steps.

    Returns:
        The number of steps ``t >= 0`` (``0`` only for ``world_size = 1``).

    Raises:
        ValueError: If ``eps`` is not in ``(0, 2)``, or the union graph is not strongly
            connected (consensus is then never reached).
        RuntimeError: If ``max_steps`` pass without reaching ``eps``.
    """
    if not 0 < eps < 2:
        raise ValueError(f"eps must be in (0, 2); got {eps}")
    mixing = UniformMixing() if mixing is None else mixing
    if not is_strongly_connected(topology):
        raise ValueError(
            f"{topology!r} is not strongly connected over a period; consensus is never reached"
        )
    plans = PlanCache(topology, mixing)
    M = np.eye(topology.world_size)
    for t in range(max_steps + 1):
        if consensus_error(M) <= eps:
            return t
        M = plans[t].apply(M)
    raise RuntimeError(f"{topology!r} did not reach eps={eps} within max_steps={max_steps}")


def is_exact_averaging(
    topology: Topology,
    steps: int,
    mixing: Mixing | None = None,
    *,
    atol: float = 1e-12,
) -> bool:
    """Whether ``steps`` steps from step 0 leave every rank with the exact average, for any input.

    Examples:
        >>> from gossip_topology import OnePeerExponential
        >>> is_exact_averaging(OnePeerExponential(8), steps=3)
        True
    """
    steps = check_int("steps", steps, minimum=0)
    mixing = UniformMixing() if mixing is None else mixing
    return consensus_error(_product(topology, mixing, steps)) <= atol
