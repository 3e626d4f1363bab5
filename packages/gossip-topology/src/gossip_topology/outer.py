r"""The outer step of local SGD, DiLoCo and SlowMo, in numpy: the oracle of one policy.

Every ``every`` inner steps the nodes average their models (exactly, or by one gossip
round), and an *outer optimizer* moves the outer model $x_0$ (the model of the previous
outer step) along the averaged *pseudo-gradient* $g = (x_0 - \bar x) / s$:

$$u \leftarrow \mu u + g, \qquad d = \begin{cases} g + \mu u & \text{Nesterov} \\ u &
\text{heavy ball} \end{cases}, \qquad x_0 \leftarrow x_0 - \eta s\, d,$$

and every node goes on from the new $x_0$. The three families are three settings of
[`OuterOptimizer`][gossip_topology.OuterOptimizer]:

- **local SGD** (model averaging): $\eta = 1$, $\mu = 0$, so $x_0 \leftarrow \bar x$;
- **DiLoCo** (Douillard et al. 2023, [arXiv:2311.08105](https://arxiv.org/abs/2311.08105)):
  Nesterov, $\eta = 0.7$, $\mu = 0.9$, $s = 1$;
- **SlowMo** (Wang et al. 2020, [arXiv:1910.00643](https://arxiv.org/abs/1910.00643)):
  heavy ball with the slow momentum $\beta = \mu$ and slow learning rate $\alpha = \eta$,
  scaled by the inner learning rate $\gamma$ ($s = \gamma$), which gives
  $u \leftarrow \beta u + (x_0 - \bar x)/\gamma$, $x_0 \leftarrow x_0 - \alpha\gamma u$.

*Streaming* DiLoCo (Douillard et al. 2025, [arXiv:2501.18512](https://arxiv.org/abs/2501.18512))
splits the model into fragments that are averaged in turn, each every ``every`` steps
but at staggered steps, and lets the exchange overlap the next ``overlap`` inner steps:
the outer step computed from the models at step $t$ lands at step $t + \tau$, where each
node keeps a share ``merge`` of its own progress,
$x \leftarrow m\,x + (1 - m)\,x_0$. [`simulate_local_sgd`][gossip_topology.simulate_local_sgd]
runs all of these on quadratic objectives, step by step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gossip_topology._checks import check_int
from gossip_topology.mixing import Mixing, UniformMixing, check_doubly_stochastic, mixing_matrix
from gossip_topology.objectives import Quadratic
from gossip_topology.topology import Topology

__all__ = [
    "LocalSGDTrace",
    "OuterOptimizer",
    "fragment_offsets",
    "outer_step",
    "simulate_local_sgd",
    "split_fragments",
]

Array = NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class OuterOptimizer:
    r"""SGD with momentum on the pseudo-gradient: the outer step of all three families.

    Attributes:
        lr: The outer learning rate $\eta$, positive.
        momentum: $\mu$, in ``[0, 1)``.
        nesterov: Nesterov's momentum (DiLoCo) rather than the heavy ball (SlowMo).
        scale_by_inner_lr: Divide the pseudo-gradient by the inner learning rate
            $\gamma$ and multiply the step by it (SlowMo's $s = \gamma$).

    Raises:
        ValueError: If ``lr`` is not positive or ``momentum`` is outside ``[0, 1)``.
        TypeError: If ``lr`` or ``momentum`` is not a number, or a flag not a bool.
    """

    lr: float = 0.7
    momentum: float = 0.9
    nesterov: bool = True
    scale_by_inner_lr: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number; got {type(value).__name__}")
        for name in ("nesterov", "scale_by_inner_lr"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool; got {getattr(self, name)!r}")
        if not self.lr > 0.0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum}")

    @classmethod
    def local_sgd(cls) -> OuterOptimizer:
        """Model averaging: the outer model becomes the average."""
        return cls(lr=1.0, momentum=0.0, nesterov=False)

    @classmethod
    def diloco(cls, lr: float = 0.7, momentum: float = 0.9) -> OuterOptimizer:
        """DiLoCo's Nesterov outer step (its paper's learning rate and momentum)."""
        return cls(lr=lr, momentum=momentum, nesterov=True)

    @classmethod
    def slowmo(cls, beta: float = 0.5, lr: float = 1.0) -> OuterOptimizer:
        """SlowMo's slow momentum ``beta`` and slow learning rate ``lr``."""
        return cls(lr=lr, momentum=beta, nesterov=False, scale_by_inner_lr=True)


def outer_step(
    optimizer: OuterOptimizer,
    outer: ArrayLike,
    momentum: ArrayLike,
    average: ArrayLike,
    inner_lr: float = 1.0,
) -> tuple[Array, Array]:
    r"""One outer step: the new outer model and momentum buffer.

    Args:
        optimizer: The outer optimizer.
        outer: $x_0$, the outer model of the previous outer step.
        momentum: $u$, the momentum buffer (zeros before the first outer step).
        average: $\bar x$, the averaged model.
        inner_lr: $\gamma$, used only with ``scale_by_inner_lr``.

    Returns:
        ``(outer, momentum)`` after the step, as new arrays.

    Raises:
        ValueError: If the shapes differ, or ``inner_lr`` is not positive while used.

    Examples:
        >>> new, u = outer_step(OuterOptimizer.local_sgd(), [1.0, 2.0], [0.0, 0.0], [0.5, 1.0])
        >>> new
        array([0.5, 1. ])
    """
    x0 = np.asarray(outer, dtype=np.float64)
    u = np.asarray(momentum, dtype=np.float64)
    xbar = np.asarray(average, dtype=np.float64)
    if not x0.shape == u.shape == xbar.shape:
        raise ValueError(
            f"outer, momentum and average must have one shape; got {x0.shape}, "
            f"{u.shape} and {xbar.shape}"
        )
    scale = 1.0
    if optimizer.scale_by_inner_lr:
        if not inner_lr > 0.0:
            raise ValueError(f"inner_lr must be positive to scale by it; got {inner_lr}")
        scale = float(inner_lr)
    g = (x0 - xbar) / scale
    u = optimizer.momentum * u + g
    d = g + optimizer.momentum * u if optimizer.nesterov else u
    return x0 - optimizer.lr * scale * d, u


def split_fragments(size: int, count: int) -> list[NDArray[np.intp]]:
    """``count`` contiguous, nearly equal fragments of ``range(size)``.

    Raises:
        ValueError: If ``count`` is below 1 or above ``size``.
    """
    check_int("size", size, minimum=1)
    check_int("count", count, minimum=1)
    if count > size:
        raise ValueError(f"count must be at most size ({size}); got {count}")
    return [np.asarray(part, dtype=np.intp) for part in np.array_split(np.arange(size), count)]


def fragment_offsets(every: int, count: int) -> list[int]:
    """The inner step (1-based, within each period of ``every``) at which each of
    ``count`` fragments is averaged: fragment ``p`` at ``(p + 1) * every // count``, so
    that the last is averaged when a whole model would be.

    Raises:
        ValueError: If ``count`` is below 1 or above ``every`` (two fragments would be
            averaged at one step).
    """
    check_int("every", every, minimum=1)
    check_int("count", count, minimum=1)
    if count > every:
        raise ValueError(f"fragments must be at most every ({every}); got {count}")
    return [(p + 1) * every // count for p in range(count)]


@dataclass(frozen=True)
class LocalSGDTrace:
    """What [`simulate_local_sgd`][gossip_topology.simulate_local_sgd] returns.

    Attributes:
        models: ``(steps + 1, n, d)``: every node's model before the first step and after
            each step (an outer step that lands at a step is included in it).
        outer: ``(n, d)``: each node's outer model at the end (equal rows with exact
            averaging).
        momentum: ``(n, d)``: each node's outer momentum buffer at the end.
        weights: ``(n, fragments)``: push-sum weights per fragment (ones unless push-sum
            gossip averages).
        events: ``(step, fragment)`` of each outer step, at the step it landed (1-based:
            ``step`` inner steps were done), in order.
        sent: Values each node sent, per step (``(steps,)``): a fragment's size for each
            outer exchange it started (exact averaging counted as one send of the
            fragment, as a ring all-reduce sends about twice that; see the benchmarks).
    """

    models: Array
    outer: Array
    momentum: Array
    weights: Array
    events: list[tuple[int, int]] = field(default_factory=list)
    sent: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def simulate_local_sgd(
    objective: Quadratic,
    x0: ArrayLike,
    steps: int,
    *,
    inner_lr: float,
    every: int,
    optimizer: OuterOptimizer | None = None,
    topology: Topology | None = None,
    gossip: Literal["push_sum", "push_pull"] = "push_sum",
    mixing: Mixing | None = None,
    fragments: int | Sequence[ArrayLike] = 1,
    overlap: int = 0,
    merge: float = 0.0,
) -> LocalSGDTrace:
    r"""Local SGD, DiLoCo or SlowMo (streaming or not) on ``n`` nodes, step by step.

    Each inner step is plain SGD on each node's own objective,
    $x_i \leftarrow x_i - \gamma \nabla f_i(x_i)$. After inner step $t$ (1-based), each
    fragment $p$ whose offset ([`fragment_offsets`][gossip_topology.fragment_offsets])
    is $t \bmod$ ``every`` is averaged: exactly (the mean over nodes), or by one gossip
    round on ``topology`` (one round per fragment exchange, the rounds numbered in the
    order the exchanges start): push-sum mixes $w_i x_i$ and $w_i$ and de-biases,
    push-pull mixes $x_i$ with a doubly-stochastic matrix. ``overlap`` inner steps
    later each node takes the outer step on the fragment with its average, and sets the
    fragment to ``merge`` of its own model plus ``1 - merge`` of the new outer model.

    Args:
        objective: Each node's quadratic objective; ``(n, d)`` from its shape.
        x0: The initial model, ``(d,)`` (every node starts from it).
        steps: Inner steps, ``>= 0``.
        inner_lr: $\gamma$, positive.
        every: Inner steps between two averages of a fragment, ``>= 1``.
        optimizer: The outer optimizer; local SGD's by default.
        topology: Average by gossip on it; ``None``: exactly.
        gossip: ``"push_sum"`` or ``"push_pull"`` (with ``topology``).
        mixing: The gossip's mixing rule (uniform by default).
        fragments: How many contiguous fragments (an int), or the fragments themselves
            (index arrays that partition ``range(d)``).
        overlap: Inner steps an exchange overlaps, in ``[0, every)``.
        merge: The share of its own model a node keeps when an outer step lands, in
            ``[0, 1)``.

    Returns:
        A [`LocalSGDTrace`][gossip_topology.LocalSGDTrace].

    Raises:
        ValueError: For shapes that do not match, fragments that do not partition the
            model or outnumber ``every``, or a value out of its range.
    """
    opt = OuterOptimizer.local_sgd() if optimizer is None else optimizer
    n, d = objective.shape
    start = np.asarray(x0, dtype=np.float64)
    if start.shape != (d,):
        raise ValueError(f"x0 must have shape ({d},) to match the objective; got {start.shape}")
    check_int("steps", steps, minimum=0)
    check_int("every", every, minimum=1)
    check_int("overlap", overlap, minimum=0)
    if overlap >= every:
        raise ValueError(f"overlap must be below every ({every}); got {overlap}")
    if not inner_lr > 0.0:
        raise ValueError(f"inner_lr must be positive; got {inner_lr}")
    if not 0.0 <= merge < 1.0:
        raise ValueError(f"merge must be in [0, 1); got {merge}")
    if gossip not in ("push_sum", "push_pull"):
        raise ValueError(f"gossip must be 'push_sum' or 'push_pull'; got {gossip!r}")
    if topology is not None and topology.world_size != n:
        raise ValueError(
            f"topology has {topology.world_size} nodes but the objective {n}; they must match"
        )
    parts = _fragments(fragments, d)
    offsets = fragment_offsets(every, len(parts))
    rule = UniformMixing() if mixing is None else mixing
    if topology is not None and gossip == "push_pull":
        check_doubly_stochastic(topology, rule, owner="push-pull outer averaging")

    x = np.tile(start, (n, 1))
    outer, momentum = x.copy(), np.zeros_like(x)
    weights = np.ones((n, len(parts)))
    models = np.empty((steps + 1, n, d))
    models[0] = x
    events: list[tuple[int, int]] = []
    sent = np.zeros(steps, dtype=np.int64)
    pending: list[tuple[int, int, Array]] = []  # (landing step, fragment, each node's average)
    rounds = 0
    for t in range(1, steps + 1):
        x = x - inner_lr * objective.gradient(x)
        for p, idx in enumerate(parts):
            if t % every != offsets[p] % every:
                continue
            if topology is None:
                average = np.tile(x[:, idx].mean(axis=0), (n, 1))
            else:
                matrix = mixing_matrix(topology, rounds, rule)
                if gossip == "push_pull":
                    average = matrix @ x[:, idx]
                else:
                    mass = matrix @ (weights[:, p : p + 1] * x[:, idx])
                    weights[:, p] = matrix @ weights[:, p]
                    average = mass / weights[:, p : p + 1]
                rounds += 1
            sent[t - 1] += idx.size
            pending.append((t + overlap, p, average))
        due = [entry for entry in pending if entry[0] == t]
        pending = [entry for entry in pending if entry[0] != t]
        for _, p, average in due:
            idx = parts[p]
            for i in range(n):
                outer[i, idx], momentum[i, idx] = outer_step(
                    opt, outer[i, idx], momentum[i, idx], average[i], inner_lr
                )
            x[:, idx] = merge * x[:, idx] + (1.0 - merge) * outer[:, idx]
            events.append((t, p))
        models[t] = x
    return LocalSGDTrace(models, outer, momentum, weights, events, sent)


def _fragments(fragments: int | Sequence[ArrayLike], size: int) -> list[NDArray[np.intp]]:
    """The fragments as index arrays that partition ``range(size)``."""
    if isinstance(fragments, bool):
        raise TypeError("fragments must be an int or a sequence of index arrays; got a bool")
    if isinstance(fragments, int):
        return split_fragments(size, fragments)
    parts = [np.asarray(part, dtype=np.intp).reshape(-1) for part in fragments]
    joined = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.intp)
    if not parts or any(p.size == 0 for p in parts) or not np.array_equal(joined, np.arange(size)):
        raise ValueError(
            f"fragments must be non-empty index arrays that partition range({size}) (each "
            "coordinate in exactly one)"
        )
    return parts
