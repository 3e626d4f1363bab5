r"""Mixing rules: how much of its value each rank sends to each out-peer.

A mixing rule turns a topology's step graph into a mixing matrix $W(t)$, where
``W[i, j]`` is the fraction of rank ``j``'s value that lands on rank ``i``. Each rank
only needs its own column: its self-weight and one weight per out-peer, which is what
[`Mixing.weights`][gossip_topology.Mixing.weights] returns.

- Push-sum needs $W$ **column-stochastic** ($\mathbf 1^\top W = \mathbf 1^\top$).
- Push-pull (D-PSGD) needs it **doubly stochastic** (rows sum to one as well).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gossip_topology._checks import as_matrix_list, check_int
from gossip_topology.topology import Topology

__all__ = [
    "CustomMixing",
    "MetropolisHastings",
    "Mixing",
    "UniformMixing",
    "check_doubly_stochastic",
    "is_column_stochastic",
    "is_doubly_stochastic",
    "mixing_matrix",
    "schedule_period",
]


class Mixing(ABC):
    """A rule assigning each rank's self-weight and out-peer weights at each step."""

    @property
    def period(self) -> int:
        """Steps after which the rule repeats by itself (the topology's period aside)."""
        return 1

    @abstractmethod
    def weights(self, topology: Topology, rank: int, step: int) -> tuple[float, list[float]]:
        """Column ``rank`` of $W(step)$.

        Returns:
            ``(self_weight, peer_weights)`` where ``peer_weights[i]`` goes to
            ``topology.out_peers(rank, step)[i]``. They sum to one.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class UniformMixing(Mixing):
    """Weight ``1 / (k + 1)`` to self and to each of the ``k`` out-peers, as in the 2019 code.

    On a regular graph this gives a doubly-stochastic $W$.
    """

    def weights(self, topology: Topology, rank: int, step: int) -> tuple[float, list[float]]:
        """See [`Mixing.weights`][gossip_topology.Mixing.weights]."""
        k = len(topology.out_peers(rank, step))
        share = 1.0 / (k + 1)
        return share, [share] * k


class MetropolisHastings(Mixing):
    r"""Metropolis-Hastings weights $W_{ij} = 1 / (1 + \max(d_i, d_j))$ on undirected graphs.

    The result is symmetric and doubly stochastic for any undirected graph, regular or not.

    Raises:
        ValueError: From [`weights`][gossip_topology.MetropolisHastings.weights] if the
            step graph is not undirected.
    """

    def weights(self, topology: Topology, rank: int, step: int) -> tuple[float, list[float]]:
        """See [`Mixing.weights`][gossip_topology.Mixing.weights]."""
        peers = topology.out_peers(rank, step)
        if sorted(peers) != topology.in_peers(rank, step):
            raise ValueError(
                f"MetropolisHastings needs an undirected graph, but at step {step} rank "
                f"{rank} sends to {sorted(peers)} and receives from "
                f"{topology.in_peers(rank, step)}"
            )
        d = len(peers)
        out = [1.0 / (1 + max(d, len(topology.out_peers(p, step)))) for p in peers]
        return 1.0 - sum(out), out


class CustomMixing(Mixing):
    """User-supplied weight matrices, one, or a list used periodically (``step % len``).

    ``W[i, j]`` is the weight rank ``j`` sends to rank ``i``. Each matrix must be
    non-negative and column-stochastic, and may put weight only on the diagonal and on
    the topology's edges at that step.

    Args:
        matrices: A square matrix or a non-empty sequence of equally sized ones.
        atol: Tolerance for the column sums.

    Raises:
        ValueError: If a matrix is not square, has negative or non-finite entries, or a
            column does not sum to one.
    """

    def __init__(self, matrices: ArrayLike | Sequence[ArrayLike], *, atol: float = 1e-9) -> None:
        mats = as_matrix_list(matrices, "matrices", dtype=np.float64)
        for t, m in enumerate(mats):
            where = f"matrices[{t}]" if len(mats) > 1 else "matrices"
            if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != mats[0].shape[0]:
                raise ValueError(
                    f"{where} must be square and the same size as matrices[0]; got {m.shape}"
                )
            if not np.isfinite(m).all() or (m < 0).any():
                raise ValueError(f"{where} must have finite, non-negative entries")
            if not is_column_stochastic(m, atol=atol):
                worst = int(np.argmax(np.abs(m.sum(axis=0) - 1)))
                raise ValueError(
                    f"{where} must be column-stochastic (each column sums to 1); column "
                    f"{worst} sums to {m[:, worst].sum():.6g}"
                )
        self._mats = tuple(mats)

    @property
    def period(self) -> int:
        """Number of matrices given."""
        return len(self._mats)

    @property
    def matrices(self) -> list[NDArray[np.float64]]:
        """Copies of the weight matrices."""
        return [m.copy() for m in self._mats]

    def weights(self, topology: Topology, rank: int, step: int) -> tuple[float, list[float]]:
        """See [`Mixing.weights`][gossip_topology.Mixing.weights].

        Raises:
            ValueError: If the matrix size differs from ``world_size`` or it puts weight
                off the graph's edges.
        """
        t = check_int("step", step, minimum=0)
        m = self._mats[t % len(self._mats)]
        if m.shape[0] != topology.world_size:
            raise ValueError(
                f"CustomMixing matrices are {m.shape[0]}x{m.shape[0]} but the topology has "
                f"world_size={topology.world_size}"
            )
        peers = topology.out_peers(rank, step)
        allowed = {rank, *peers}
        stray = [i for i in np.flatnonzero(m[:, rank]) if int(i) not in allowed]
        if stray:
            raise ValueError(
                f"CustomMixing puts weight from rank {rank} on ranks {stray} at step {step}, "
                "which are not its out-peers"
            )
        return float(m[rank, rank]), [float(m[p, rank]) for p in peers]


def mixing_matrix(
    topology: Topology, step: int, mixing: Mixing | None = None
) -> NDArray[np.float64]:
    """The dense ``n x n`` mixing matrix $W(step)$, ``W[i, j]`` = weight ``j`` sends to ``i``.

    Args:
        topology: The graph.
        step: The step, ``>= 0``.
        mixing: The mixing rule; [`UniformMixing`][gossip_topology.UniformMixing] by default.

    Examples:
        >>> from gossip_topology import make_topology
        >>> mixing_matrix(make_topology("ring", 3), step=0)
        array([[0.5, 0. , 0.5],
               [0.5, 0.5, 0. ],
               [0. , 0.5, 0.5]])
    """
    mixing = UniformMixing() if mixing is None else mixing
    n = topology.world_size
    W = np.zeros((n, n))
    for j in range(n):
        self_w, peer_w = mixing.weights(topology, j, step)
        W[j, j] = self_w
        for p, w in zip(topology.out_peers(j, step), peer_w, strict=True):
            W[p, j] += w
    return W


def is_column_stochastic(W: ArrayLike, atol: float = 1e-12) -> bool:
    """Whether ``W`` is non-negative and every column sums to one (within ``atol``)."""
    A = np.asarray(W, dtype=np.float64)
    return bool(
        A.ndim == 2 and (-atol <= A).all() and np.allclose(A.sum(axis=0), 1.0, rtol=0, atol=atol)
    )


def is_doubly_stochastic(W: ArrayLike, atol: float = 1e-12) -> bool:
    """Whether ``W`` is column-stochastic and every row sums to one as well."""
    A = np.asarray(W, dtype=np.float64)
    return is_column_stochastic(A, atol) and bool(
        np.allclose(A.sum(axis=1), 1.0, rtol=0, atol=atol)
    )


def schedule_period(topology: Topology, mixing: Mixing | None = None) -> int:
    """Steps after which ``W(t)`` repeats: the least common multiple of both periods.

    Every layer that caches per-step data (the simulator, a rank's schedule, the
    doubly-stochastic check) uses this one definition.

    Examples:
        >>> from gossip_topology import make_topology
        >>> schedule_period(make_topology("npeer-dynamic-directed-exponential", 8))
        3
    """
    mixing = UniformMixing() if mixing is None else mixing
    return math.lcm(topology.period, mixing.period)


def check_doubly_stochastic(
    topology: Topology,
    mixing: Mixing | None = None,
    *,
    atol: float = 1e-12,
    owner: str = "push-pull",
) -> None:
    """Raise unless ``W(t)`` is doubly stochastic at every step of one whole period.

    ``W(t)`` repeats with [`schedule_period`][gossip_topology.schedule_period], so checking
    one period checks every step. Column sums hold by construction of a mixing rule; the
    row sums are what push-pull (D-PSGD) adds.

    Args:
        topology: The graph.
        mixing: The mixing rule; uniform by default.
        atol: Tolerance on row and column sums.
        owner: Who needs the property, for the error message.

    Raises:
        ValueError: Naming the first step and the ranks whose rows do not sum to one.
    """
    mixing = UniformMixing() if mixing is None else mixing
    for t in range(schedule_period(topology, mixing)):
        W = mixing_matrix(topology, t, mixing)
        if is_doubly_stochastic(W, atol=atol):
            continue
        rows = W.sum(axis=1)
        bad = [int(i) for i in np.flatnonzero(np.abs(rows - 1.0) > atol)]
        raise ValueError(
            f"{owner} needs a doubly-stochastic mixing matrix, but at step {t} the rows of "
            f"ranks {bad[:8]} of {topology!r} under {mixing!r} sum to "
            f"{[round(float(rows[i]), 6) for i in bad[:8]]}; use push-sum, a regular graph, "
            "or MetropolisHastings on an undirected graph"
        )
