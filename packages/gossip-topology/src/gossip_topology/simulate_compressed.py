r"""Compressed gossip on ``n`` virtual nodes, with per-edge public copies: the test oracle.

Every directed edge ``i -> j`` carries a public copy $\hat x_{i \to j}$ that both ends
hold bit for bit (CHOCO-style; Koloskova et al. 2019). One step with $P = W(t)$ and a
consensus step $\gamma \in (0, 1]$:

1. each rank sends $q = C(x_i - \hat x_{i \to j})$ to each out-peer and both ends add
   the decoded $q$ to $\hat x_{i \to j}$;
2. $x_i \leftarrow x_i - \gamma \sum_j P_{ji} \hat x_{i \to j}
   + \gamma \sum_k P_{ik} \hat x_{k \to i}$;
3. $w_i \leftarrow (1 - \gamma (1 - P_{ii})) w_i + \gamma \sum_k P_{ik} w_k$ (push-sum
   weights travel uncompressed).

$\sum_i x_i$ and $\sum_i w_i$ are conserved for any compressor; with a lossless one the
step is push-sum with the lazy matrix $(1 - \gamma) I + \gamma P$.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gossip_topology._checks import check_int, check_unit_fraction
from gossip_topology._compressor import Compressor, EdgeState, Layout, as_layout
from gossip_topology.compress import parse_compressor
from gossip_topology.mixing import Mixing, check_doubly_stochastic, schedule_period
from gossip_topology.objectives import Quadratic
from gossip_topology.simulate import (
    GossipTrace,
    _evolve,
    _finish,
    _initial_weights,
    _prepare,
    _Run,
)
from gossip_topology.topology import Topology

__all__ = ["CompressedTrace", "simulate_compressed_push_pull", "simulate_compressed_push_sum"]

Array = NDArray[np.float64]
Index = NDArray[np.intp]


@dataclass(frozen=True)
class CompressedTrace(GossipTrace):
    """A [`GossipTrace`][gossip_topology.GossipTrace] plus the final per-edge state.

    Attributes:
        edges: Every directed edge ``(src, dst)`` the simulation used, in id order.
        public_copies: The public copy of each edge after the last step, shape ``(E, d)``
            (``(E,)`` for 1-D ``x0``).
        compressor_state: The compressor's per-edge state (e.g. lowrank's warm starts),
            each array with the edge axis first.
    """

    edges: tuple[tuple[int, int], ...]
    public_copies: Array
    compressor_state: tuple[Array, ...]


class _Segments:
    """Sums of the rows of an ``(E, d)`` array grouped by a key in ``[0, n)``."""

    def __init__(self, keys: Index, n: int) -> None:
        self.order = np.argsort(keys, kind="stable")
        sorted_keys = keys[self.order]
        self.starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        self.targets = sorted_keys[self.starts] if len(keys) else sorted_keys
        self.n = n

    def sum(self, rows: Array) -> Array:
        out = np.zeros((self.n, *rows.shape[1:]))
        if len(self.order):
            out[self.targets] = np.add.reduceat(rows[self.order], self.starts, axis=0)
        return out


@dataclass(frozen=True)
class _Phase:
    """One phase of the schedule as edge arrays: ``weight[e] = P[dst[e], src[e]]``."""

    src: Index
    dst: Index
    edge: Index
    weight: Array
    self_weight: Array
    by_src: _Segments
    by_dst: _Segments


def _phases(
    topology: Topology, mixing: Mixing, needed: Sequence[int]
) -> tuple[dict[int, _Phase], tuple[tuple[int, int], ...]]:
    """Enumerate the edges of the ``needed`` phases, numbering each ``(src, dst)`` once."""
    n = topology.world_size
    ids: dict[tuple[int, int], int] = {}
    phases: dict[int, _Phase] = {}
    for phase in needed:
        src, dst, weight, self_weight = [], [], [], np.empty(n)
        for i in range(n):
            self_weight[i], out_w = mixing.weights(topology, i, phase)
            peers = topology.out_peers(i, phase)
            if len(set(peers)) != len(peers):
                raise ValueError(
                    f"compressed gossip needs distinct out-peers; rank {i} lists {peers} at "
                    f"step {phase}"
                )
            for j, wt in zip(peers, out_w, strict=True):
                src.append(i)
                dst.append(j)
                weight.append(wt)
                ids.setdefault((i, j), len(ids))
        s, t = np.array(src, np.intp), np.array(dst, np.intp)
        phases[phase] = _Phase(
            src=s,
            dst=t,
            edge=np.array([ids[e] for e in zip(src, dst, strict=True)], np.intp),
            weight=np.array(weight, np.float64),
            self_weight=self_weight,
            by_src=_Segments(s, n),
            by_dst=_Segments(t, n),
        )
    return phases, tuple(ids)


@dataclass
class _EdgeCopies:
    """Public copies and compressor state of every edge, with what is needed to update them."""

    compressor: Compressor
    gamma: float
    layout: Layout | None
    rng: np.random.Generator
    copies: Array
    state: EdgeState

    def step(self, x: Array, ph: _Phase) -> Array:
        """Exchange compressed differences on ``ph``'s edges and return the mixed ``x``."""
        copies = self.copies[ph.edge]
        state = [s[ph.edge] for s in self.state]
        payload = self.compressor.encode(
            x[ph.src] - copies, state, layout=self.layout, rng=self.rng
        )
        copies += self.compressor.decode(payload)
        self.copies[ph.edge] = copies
        for full, part in zip(self.state, state, strict=True):
            full[ph.edge] = part
        sent = ph.weight[:, None] * copies
        return x - self.gamma * ph.by_src.sum(sent) + self.gamma * ph.by_dst.sum(sent)


def _check_compression(
    compression: str | Compressor, consensus_step: float | None
) -> tuple[Compressor, float]:
    """The compressor a spec names, and the consensus step (its default when ``None``)."""
    compressor = parse_compressor(compression)
    if compressor is None:
        raise ValueError(
            "compression is required (a spec string or a Compressor); for uncompressed gossip "
            "use simulate_push_sum or simulate_push_pull"
        )
    gamma = compressor.default_consensus_step if consensus_step is None else consensus_step
    return compressor, check_unit_fraction("consensus_step", gamma)


def _edges(
    topology: Topology,
    run: _Run,
    compressor: Compressor,
    gamma: float,
    *,
    reference: ArrayLike | None,
    layout: Sequence[Sequence[int]] | None,
    seed: int,
) -> tuple[_EdgeCopies, Callable[[int], _Phase], tuple[tuple[int, int], ...]]:
    """Build every edge's public copy and compressor state.

    Returns:
        The edges' public copies and state, the phase of each simulated step ``t``, and
        every edge ``(src, dst)`` in id order.
    """
    d = run.x.shape[1]
    shapes = as_layout(layout, d)
    if compressor.payload_bytes(d, itemsize=8, layout=shapes) >= 8 * d > 0:
        warnings.warn(
            f"{compressor!r} sends no fewer bytes than the raw float64 message "
            f"(d={d}, layout={shapes}): nothing is compressed",
            stacklevel=3,
        )
    ref = np.zeros(d) if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.shape not in ((d,), ()):
        raise ValueError(f"reference must have shape ({d},) or be a scalar; got {ref.shape}")
    period = schedule_period(topology, run.mixing)
    needed = sorted({(run.start + t) % period for t in range(min(run.steps, period))})
    phases, edges = _phases(topology, run.mixing, needed)
    edge_state = _EdgeCopies(
        compressor=compressor,
        gamma=gamma,
        layout=shapes,
        rng=np.random.default_rng(check_int("seed", seed, minimum=0)),
        copies=np.array(np.broadcast_to(ref, (len(edges), d))),
        state=compressor.init_state(len(edges), d, shapes),
    )
    return edge_state, lambda t: phases[(run.start + t) % period], edges


def _finish_compressed(
    run: _Run,
    x: Array,
    weights: Array | None,
    edges: tuple[tuple[int, int], ...],
    es: _EdgeCopies,
) -> CompressedTrace:
    base = _finish(run, x, weights)
    copies = es.copies[:, 0] if run.squeeze else es.copies
    return CompressedTrace(
        numerators=base.numerators,
        weights=base.weights,
        debiased=base.debiased,
        edges=edges,
        public_copies=copies.copy(),
        compressor_state=tuple(s.copy() for s in es.state),
    )


def simulate_compressed_push_sum(
    topology: Topology,
    x0: ArrayLike,
    steps: int,
    mixing: Mixing | None = None,
    *,
    compression: str | Compressor,
    consensus_step: float | None = None,
    reference: ArrayLike | None = None,
    layout: Sequence[Sequence[int]] | None = None,
    weights0: ArrayLike | None = None,
    start_step: int = 0,
    objective: Quadratic | None = None,
    lr: float = 0.0,
    record: Literal["all", "last"] = "all",
    seed: int = 0,
) -> CompressedTrace:
    """Simulate compressed push-sum (or compressed SGP, with an ``objective``).

    The step is described in this module's docstring and in the compression spec that the
    torch implementation follows; edges keep their public copies for the whole run.

    Args:
        topology: The graph; ``n = topology.world_size``.
        x0: Initial numerators, shape ``(n, d)`` or ``(n,)``.
        steps: Number of steps, ``>= 0``.
        mixing: Mixing rule (column-stochastic); uniform by default.
        compression: A spec string for
            [`parse_compressor`][gossip_topology.parse_compressor] or a
            [`Compressor`][gossip_topology.Compressor].
        consensus_step: ``gamma`` in ``(0, 1]``; the compressor's
            ``default_consensus_step`` by default.
        reference: Common initial value of every public copy, shape ``(d,)``; zero by
            default.
        layout: Shapes of the segments of one row (sizes summing to ``d``), for ``lowrank``.
        weights0: Initial push-sum weights, shape ``(n,)``; all ones by default.
        start_step: Schedule step of the first simulated step.
        objective: If given (compressed SGP), each step applies
            ``x_i -= lr * objective.gradient(z)_i`` at the de-biased ``z`` before the
            compressed exchange, so the messages carry the updated numerators.
        lr: Learning rate for the gradient step.
        record: ``"all"`` keeps every step, ``"last"`` only the final state.
        seed: Seed of the generator handed to stochastic compressors.

    Returns:
        A [`CompressedTrace`][gossip_topology.CompressedTrace].

    Raises:
        ValueError: On bad shapes, a ``consensus_step`` outside ``(0, 1]``, an unknown
            compression, a layout that does not cover ``d``, or a non-positive weight.

    Warns:
        UserWarning: If the compressor sends no fewer bytes than the raw message.

    Examples:
        >>> import numpy as np
        >>> from gossip_topology import make_topology
        >>> trace = simulate_compressed_push_sum(
        ...     make_topology("ring", 4), np.arange(4.0), 60, compression="bf16", record="last"
        ... )
        >>> bool(np.allclose(trace.debiased, 1.5, atol=1e-2))
        True
    """
    run = _prepare(topology, x0, steps, mixing, objective, lr, record, start_step=start_step)
    w0 = _initial_weights(weights0, topology.world_size)
    compressor, gamma = _check_compression(compression, consensus_step)
    es, phase, edges = _edges(
        topology, run, compressor, gamma, reference=reference, layout=layout, seed=seed
    )

    def weight_step(t: int, w: Array) -> Array:
        ph = phase(t)
        w_in = ph.by_dst.sum(ph.weight * w[ph.src])
        return (1 - es.gamma * (1 - ph.self_weight)) * w + es.gamma * w_in

    w_hist = _evolve(w0, run.steps, "all", weight_step)

    def sgp_step(t: int, x: Array) -> Array:
        if objective is not None:
            x = x - lr * objective.gradient(x / w_hist[t][:, None])
        return es.step(x, phase(t))

    x = _evolve(run.x, run.steps, run.record, sgp_step)
    return _finish_compressed(run, x, w_hist, edges, es)


def simulate_compressed_push_pull(
    topology: Topology,
    x0: ArrayLike,
    steps: int,
    mixing: Mixing | None = None,
    *,
    compression: str | Compressor,
    consensus_step: float | None = None,
    reference: ArrayLike | None = None,
    layout: Sequence[Sequence[int]] | None = None,
    start_step: int = 0,
    objective: Quadratic | None = None,
    lr: float = 0.0,
    record: Literal["all", "last"] = "all",
    seed: int = 0,
) -> CompressedTrace:
    """Simulate compressed push-pull gossip (or compressed D-PSGD, with an ``objective``).

    The same exchange as
    [`simulate_compressed_push_sum`][gossip_topology.simulate_compressed_push_sum] with a
    doubly-stochastic ``W(t)`` and no weights; with an objective each step is
    ``x <- mixed(x) - lr * grad(x)``, the gradient taken before mixing.

    Args:
        topology: The graph.
        x0: Initial values, shape ``(n, d)`` or ``(n,)``.
        steps: Number of steps, ``>= 0``.
        mixing: Mixing rule; uniform by default.
        compression: A spec string or a [`Compressor`][gossip_topology.Compressor].
        consensus_step: ``gamma`` in ``(0, 1]``; the compressor's default by default.
        reference: Common initial value of every public copy, shape ``(d,)``.
        layout: Segment shapes of one row, for ``lowrank``.
        start_step: Schedule step of the first simulated step.
        objective: Optional objective for gradient steps.
        lr: Learning rate.
        record: ``"all"`` or ``"last"``.
        seed: Seed of the generator handed to stochastic compressors.

    Returns:
        A [`CompressedTrace`][gossip_topology.CompressedTrace] whose weights are all one.

    Raises:
        ValueError: If some ``W(t)`` is not doubly stochastic, or as
            [`simulate_compressed_push_sum`][gossip_topology.simulate_compressed_push_sum].
    """
    run = _prepare(topology, x0, steps, mixing, objective, lr, record, start_step=start_step)
    check_doubly_stochastic(topology, run.mixing)
    compressor, gamma = _check_compression(compression, consensus_step)
    es, phase, edges = _edges(
        topology, run, compressor, gamma, reference=reference, layout=layout, seed=seed
    )

    def dpsgd_step(t: int, x: Array) -> Array:
        if objective is None:
            return es.step(x, phase(t))
        grad = objective.gradient(x)
        return es.step(x, phase(t)) - lr * grad

    x = _evolve(run.x, run.steps, run.record, dpsgd_step)
    return _finish_compressed(run, x, None, edges, es)
