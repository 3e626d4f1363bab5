r"""Vectorised numpy simulation of gossip over ``n`` virtual nodes: the test oracle.

Push-sum, one step (Kempe et al. 2003; Assran et al. 2019, Algorithm 1):

$$ x(t+1) = W(t)\,x(t), \qquad w(t+1) = W(t)\,w(t), \qquad z(t) = x(t) / w(t). $$

With an objective and a learning rate $\gamma$, each node first takes a gradient
step at its de-biased point, $x_i \leftarrow x_i - \gamma \nabla f_i(z_i)$, which is
SGP with plain SGD. Push-pull (D-PSGD, Lian et al. 2017) uses a doubly-stochastic
$W$ and no weights: $x(t+1) = W(t)\,x(t) - \gamma \nabla f(x(t))$.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gossip_topology._checks import check_int
from gossip_topology._plan import PlanCache
from gossip_topology.mixing import Mixing, UniformMixing, check_doubly_stochastic
from gossip_topology.objectives import Quadratic
from gossip_topology.topology import Topology

__all__ = ["GossipTrace", "simulate_push_pull", "simulate_push_sum"]

Array = NDArray[np.float64]

#: Columns processed together when no objective couples them; sized to stay in cache.
_BLOCK_BYTES = 1 << 19
#: Upper bound on simulator threads (column blocks run in parallel).
_MAX_THREADS = 8


@dataclass(frozen=True)
class GossipTrace:
    """What a simulation returns.

    With ``record="all"`` every array has a leading axis of length ``steps + 1``, index 0
    being the initial state; with ``record="last"`` only the final state is kept. For
    push-pull the weights are all one and ``debiased`` equals ``numerators``.

    Attributes:
        numerators: ``x``, shape ``([steps + 1,] n, d)``.
        weights: ``w``, shape ``([steps + 1,] n)``.
        debiased: ``z = x / w``, shape ``([steps + 1,] n, d)``.
    """

    numerators: Array
    weights: Array
    debiased: Array


@dataclass(frozen=True)
class _Run:
    """The checked arguments that every simulator shares."""

    x: Array
    squeeze: bool
    steps: int
    start: int
    mixing: Mixing
    record: str


def _prepare(
    topology: Topology,
    x0: ArrayLike,
    steps: int,
    mixing: Mixing | None,
    objective: Quadratic | None,
    lr: float,
    record: str,
    *,
    start_step: int,
) -> _Run:
    """Check the shared arguments; ``x0`` becomes a float64 ``(n, d)`` copy."""
    x = np.array(x0, dtype=np.float64)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] != topology.world_size:
        raise ValueError(
            f"x0 must have shape (world_size, d) = ({topology.world_size}, d); got {x.shape}"
        )
    steps = check_int("steps", steps, minimum=0)
    if not (np.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be finite and >= 0; got {lr}")
    if record not in ("all", "last"):
        raise ValueError(f"record must be 'all' or 'last'; got {record!r}")
    if objective is not None and objective.shape != x.shape:
        raise ValueError(f"objective has shape {objective.shape} but x0 has shape {x.shape}")
    return _Run(
        x=x,
        squeeze=squeeze,
        steps=steps,
        start=check_int("start_step", start_step, minimum=0),
        mixing=UniformMixing() if mixing is None else mixing,
        record=record,
    )


def _initial_weights(weights0: ArrayLike | None, n: int) -> Array:
    """The push-sum weights at step 0: ``weights0`` checked, or all ones."""
    w = np.ones(n) if weights0 is None else np.array(weights0, dtype=np.float64)
    if w.shape != (n,) or not (w > 0).all():
        raise ValueError(f"weights0 must have shape ({n},) and be positive; got {w.shape}")
    return w


def _finish(run: _Run, x: Array, weights: Array | None) -> GossipTrace:
    """The trace of ``x``, as ``_evolve`` returns it, and of the weight history.

    ``weights`` has shape ``(steps + 1, n)``; None means all ones (push-pull).
    """
    if weights is None:
        w = np.ones(x.shape[:-1])
    else:
        w = weights if run.record == "all" else weights[-1]
    z = x / w[..., None]
    if run.squeeze:
        x, z = x[..., 0], z[..., 0]
    return GossipTrace(numerators=x, weights=w, debiased=z)


def _history(x: Array, steps: int, record: str) -> Array | None:
    """An array for every step's ``x`` (row 0 filled in), or None when only the last is kept."""
    if record != "all":
        return None
    hist = np.empty((steps + 1, *x.shape))
    hist[0] = x
    return hist


def _evolve(x: Array, steps: int, record: str, step: Callable[[int, Array], Array]) -> Array:
    """Apply ``x <- step(t, x)`` for ``t = 0, ..., steps - 1``.

    Returns:
        Every state, shape ``(steps + 1, *x.shape)``, when ``record == "all"``; else the last.
    """
    hist = _history(x, steps, record)
    for t in range(steps):
        x = step(t, x)
        if hist is not None:
            hist[t + 1] = x
    return x if hist is None else hist


def _run_mixing(plans: PlanCache, x: Array, start: int, steps: int, record: str) -> Array:
    """Mix ``x`` for ``steps`` steps with no gradients, block by block of columns.

    Columns are independent under ``x <- W x``, so each cache-sized block runs through
    every step before the next; blocks are spread over threads (numpy releases the GIL).

    Returns:
        As ``_evolve``: every state when ``record == "all"``, else the last.
    """
    n, d = x.shape
    hist = _history(x, steps, record)
    block = max(1, _BLOCK_BYTES // (8 * n))
    out = np.empty_like(x)
    for t in range(min(steps, plans.period)):
        plans[start + t]  # build every plan once, before threads share the cache

    def run_block(c0: int) -> None:
        cur = np.ascontiguousarray(x[:, c0 : c0 + block])
        nxt, tmp = np.empty_like(cur), np.empty_like(cur)
        for t in range(steps):
            plans[start + t].apply(cur, out=nxt, tmp=tmp)
            cur, nxt = nxt, cur
            if hist is not None:
                hist[t + 1, :, c0 : c0 + block] = cur
        out[:, c0 : c0 + block] = cur

    starts = range(0, d, block)
    workers = min(len(starts), os.cpu_count() or 1, _MAX_THREADS)
    if workers <= 1 or steps == 0:
        for c0 in starts:
            run_block(c0)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run_block, starts))
    return out if hist is None else hist


def simulate_push_sum(
    topology: Topology,
    x0: ArrayLike,
    steps: int,
    mixing: Mixing | None = None,
    *,
    weights0: ArrayLike | None = None,
    start_step: int = 0,
    objective: Quadratic | None = None,
    lr: float = 0.0,
    record: Literal["all", "last"] = "all",
) -> GossipTrace:
    """Simulate push-sum (or SGP, with an ``objective``) on ``n`` virtual nodes.

    Args:
        topology: The graph; ``n = topology.world_size``.
        x0: Initial numerators, shape ``(n, d)`` or ``(n,)``.
        steps: Number of steps, ``>= 0``.
        mixing: Mixing rule; uniform by default.
        weights0: Initial push-sum weights, shape ``(n,)``; all ones by default.
        start_step: Schedule step of the first simulated step.
        objective: If given, each step first applies
            ``x_i -= lr * objective.gradient(z)_i`` at the de-biased ``z``.
        lr: Learning rate for the gradient step.
        record: ``"all"`` keeps every step, ``"last"`` only the final state.

    Returns:
        A [`GossipTrace`][gossip_topology.GossipTrace].

    Raises:
        ValueError: On shapes that do not match ``world_size``, negative ``steps`` or a
            non-positive initial weight.

    Examples:
        >>> import numpy as np
        >>> from gossip_topology import OnePeerExponential
        >>> trace = simulate_push_sum(OnePeerExponential(4), np.arange(4.0), steps=2)
        >>> trace.debiased[-1]
        array([1.5, 1.5, 1.5, 1.5])
    """
    run = _prepare(topology, x0, steps, mixing, objective, lr, record, start_step=start_step)
    steps, start = run.steps, run.start
    plans = PlanCache(topology, run.mixing)
    w_hist = np.empty((steps + 1, topology.world_size))
    w_hist[0] = _initial_weights(weights0, topology.world_size)
    for t in range(steps):
        w_hist[t + 1] = plans[start + t].apply(w_hist[t][:, None])[:, 0]

    if objective is None:
        x = _run_mixing(plans, run.x, start, steps, run.record)
    else:
        gradient = objective.gradient

        def sgp_step(t: int, x: Array) -> Array:
            return plans[start + t].apply(x - lr * gradient(x / w_hist[t][:, None]))

        x = _evolve(run.x, steps, run.record, sgp_step)
    return _finish(run, x, w_hist)


def simulate_push_pull(
    topology: Topology,
    x0: ArrayLike,
    steps: int,
    mixing: Mixing | None = None,
    *,
    start_step: int = 0,
    objective: Quadratic | None = None,
    lr: float = 0.0,
    record: Literal["all", "last"] = "all",
) -> GossipTrace:
    r"""Simulate push-pull gossip (or D-PSGD, with an ``objective``) on ``n`` virtual nodes.

    Each step is $x(t+1) = W(t)\,x(t) - \gamma \nabla f(x(t))$; ``W(t)`` must be
    doubly stochastic, so no weights are tracked.

    Args:
        topology: The graph.
        x0: Initial values, shape ``(n, d)`` or ``(n,)``.
        steps: Number of steps, ``>= 0``.
        mixing: Mixing rule; uniform by default.
        start_step: Schedule step of the first simulated step.
        objective: Optional objective for gradient steps.
        lr: Learning rate.
        record: ``"all"`` or ``"last"``.

    Returns:
        A [`GossipTrace`][gossip_topology.GossipTrace] whose weights are all one.

    Raises:
        ValueError: If some ``W(t)`` is not doubly stochastic, or on bad shapes.
    """
    run = _prepare(topology, x0, steps, mixing, objective, lr, record, start_step=start_step)
    check_doubly_stochastic(topology, run.mixing)
    plans = PlanCache(topology, run.mixing)
    if objective is None:
        x = _run_mixing(plans, run.x, run.start, run.steps, run.record)
    else:
        gradient = objective.gradient

        def dpsgd_step(t: int, x: Array) -> Array:
            grad = gradient(x)
            return plans[run.start + t].apply(x) - lr * grad

        x = _evolve(run.x, run.steps, run.record, dpsgd_step)
    return _finish(run, x, None)
