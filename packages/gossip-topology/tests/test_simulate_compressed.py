"""Compressed gossip: conservation, equivalence with lazy push-sum when lossless, consensus."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from gossip_topology import (
    CompressedTrace,
    Compressor,
    CustomMixing,
    FromAdjacency,
    Payload,
    Quadratic,
    Star,
    Topology,
    make_topology,
    mixing_matrix,
    schedule_period,
    simulate_compressed_push_pull,
    simulate_compressed_push_sum,
    simulate_push_pull,
    simulate_push_sum,
)

RNG = np.random.default_rng(77)
SPECS = ["bf16", "fp16", "int8", "int8:stochastic", "topk:0.1", "topk:0.01", "lowrank:1"]
SPECS += ["lowrank:2"]
LAYOUT = [(6, 4), (2, 2), (5,)]  # d = 33: the 6 x 4 matrix is compressed at ranks 1 and 2
D = 33
quiet = pytest.mark.filterwarnings("ignore:.*nothing is compressed")


class Identity(Compressor):
    """A user-defined lossless compressor, written against the public interface."""

    name = "identity"

    def _encode(self, v, state, layout, rng):  # type: ignore[no-untyped-def]
        return Payload(arrays=(v.copy(),), d=v.shape[1])

    def _decode(self, payload):  # type: ignore[no-untyped-def]
        return payload.arrays[0].copy()

    def _payload_bytes(self, d, itemsize, layout):  # type: ignore[no-untyped-def]
        return d * itemsize


def _directed() -> Topology:
    """A strongly connected, non-regular directed graph on 5 ranks."""
    adj = np.zeros((5, 5), int)
    for i, j in [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4), (4, 0), (0, 3), (4, 2)]:
        adj[i, j] = 1
    return FromAdjacency(adj)


GRAPHS: dict[str, Callable[[], Topology]] = {
    "star": lambda: Star(5),
    "directed": _directed,
    "npeer": lambda: make_topology("npeer-dynamic-directed-exponential", 8, 2),
}


def _lazy(topo: Topology, gamma: float) -> CustomMixing:
    n = topo.world_size
    return CustomMixing(
        [(1 - gamma) * np.eye(n) + gamma * mixing_matrix(topo, t) for t in range(topo.period)]
    )


@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("spec", SPECS)
def test_sums_of_numerators_and_weights_are_conserved_at_every_step(graph: str, spec: str) -> None:
    topo = GRAPHS[graph]()
    n = topo.world_size
    x0 = RNG.normal(size=(n, D)) * 10
    w0 = RNG.uniform(0.5, 2, size=n)
    trace = simulate_compressed_push_sum(
        topo, x0, 40, compression=spec, layout=LAYOUT, weights0=w0, start_step=1
    )
    scale = np.abs(trace.numerators).sum(axis=1).max(axis=0)
    assert (np.abs(trace.numerators.sum(axis=1) - x0.sum(axis=0)) <= 1e-12 * scale).all()
    np.testing.assert_allclose(trace.weights.sum(axis=1), w0.sum(), rtol=1e-12, atol=0)


@quiet
@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("gamma", [1.0, 0.3])
def test_lossless_compression_is_lazy_push_sum(graph: str, gamma: float) -> None:
    topo = GRAPHS[graph]()
    n = topo.world_size
    x0 = RNG.normal(size=(n, 6))
    w0 = RNG.uniform(0.5, 2, size=n)
    objective = Quadratic(RNG.uniform(0.5, 2, size=(n, 6)), RNG.normal(size=(n, 6)))
    kw = {"weights0": w0, "start_step": 3, "objective": objective, "lr": 0.1}
    got = simulate_compressed_push_sum(
        topo,
        x0,
        25,
        compression=Identity(),
        consensus_step=gamma,
        reference=np.ones(6),
        **kw,  # type: ignore[arg-type]
    )
    mixing = _lazy(topo, gamma) if gamma < 1 else None
    want = simulate_push_sum(topo, x0, 25, mixing, **kw)  # type: ignore[arg-type]
    for field in ("numerators", "weights", "debiased"):
        np.testing.assert_allclose(
            getattr(got, field), getattr(want, field), rtol=1e-12, atol=1e-12, err_msg=field
        )


@quiet
@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_lossless_compressed_push_pull_is_lazy_push_pull(gamma: float) -> None:
    topo = make_topology("dynamic-directed-exponential", 8)
    x0 = RNG.normal(size=(8, 4))
    objective = Quadratic(RNG.uniform(0.5, 2, size=(8, 4)), RNG.normal(size=(8, 4)))
    got = simulate_compressed_push_pull(
        topo, x0, 20, compression=Identity(), consensus_step=gamma, objective=objective, lr=0.2
    )
    mixing = _lazy(topo, gamma) if gamma < 1 else None
    want = simulate_push_pull(topo, x0, 20, mixing, objective=objective, lr=0.2)
    np.testing.assert_allclose(got.numerators, want.numerators, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got.weights, np.ones((21, 8)))


@quiet
def test_public_copies_hold_the_last_value_sent_on_each_edge() -> None:
    topo = make_topology("ring", 5)
    x0 = RNG.normal(size=(5, 3))
    trace = simulate_compressed_push_sum(topo, x0, 4, compression=Identity())
    assert isinstance(trace, CompressedTrace)
    assert trace.edges == ((0, 1), (1, 2), (2, 3), (3, 4), (4, 0))
    np.testing.assert_allclose(trace.public_copies, trace.numerators[-2], rtol=0, atol=1e-15)
    assert trace.compressor_state == ()


def test_lowrank_state_is_kept_per_edge() -> None:
    topo = make_topology("one-peer-exponential", 4)  # out-peers change with the step
    trace = simulate_compressed_push_sum(
        topo, RNG.normal(size=(4, D)), 6, compression="lowrank:1", layout=LAYOUT
    )
    assert len(trace.edges) == 4 * 2 == len(set(trace.edges))
    (q,) = trace.compressor_state  # only the 6 x 4 segment is compressed
    assert q.shape == (8, 4, 1)
    assert trace.public_copies.shape == (8, D)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize(
    ("graph", "steps", "bound"),
    [("ring", 600, 0.3), ("npeer-dynamic-directed-exponential", 600, 0.05)],
)
def test_every_builtin_reaches_consensus_at_its_default_step(
    spec: str, graph: str, steps: int, bound: float
) -> None:
    topo = make_topology(graph, 16)
    x0 = np.random.default_rng(0).normal(size=(16, 32))
    trace = simulate_compressed_push_sum(topo, x0, steps, compression=spec, layout=[(8, 4)])
    err = np.linalg.norm(trace.debiased - x0.mean(axis=0), axis=(1, 2))
    err /= err[0]
    assert err[-1] < bound
    assert err[-1] < err[steps // 2] or err[-1] < 1e-7  # still falling, or at its floor


def test_record_last_squeeze_and_seed() -> None:
    topo = make_topology("ring", 6)
    x0 = RNG.normal(size=(6, 5))
    full = simulate_compressed_push_sum(topo, x0, 9, compression="int8:stochastic", seed=5)
    last = simulate_compressed_push_sum(
        topo, x0, 9, compression="int8:stochastic", seed=5, record="last"
    )
    np.testing.assert_array_equal(last.numerators, full.numerators[-1])
    np.testing.assert_array_equal(last.weights, full.weights[-1])
    other = simulate_compressed_push_sum(topo, x0, 9, compression="int8:stochastic", seed=6)
    assert not np.array_equal(other.numerators, full.numerators)
    flat = simulate_compressed_push_sum(topo, x0[:, 0], 9, compression="bf16")
    assert flat.numerators.shape == (10, 6) and flat.public_copies.shape == (6,)


def test_a_reference_changes_a_lossy_run_but_not_its_sums() -> None:
    topo = make_topology("ring", 4)
    x0 = RNG.normal(size=(4, 8))
    plain = simulate_compressed_push_sum(topo, x0, 5, compression="topk:0.25")
    ref = simulate_compressed_push_sum(
        topo, x0, 5, compression="topk:0.25", reference=x0.mean(axis=0)
    )
    assert not np.allclose(plain.numerators[-1], ref.numerators[-1])
    np.testing.assert_allclose(ref.numerators[-1].sum(axis=0), x0.sum(axis=0), atol=1e-12)


def test_lowrank_without_a_layout_warns() -> None:
    with pytest.warns(UserWarning, match="nothing is compressed"):
        simulate_compressed_push_sum(
            make_topology("ring", 3), np.ones((3, 4)), 1, compression="lowrank:1"
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"compression": None}, ValueError, "compression is required"),
        ({"compression": "gzip"}, ValueError, "'bf16', 'fp16', 'int8'"),
        ({"compression": "int8", "consensus_step": 0.0}, ValueError, r"in \(0, 1\]"),
        ({"compression": "int8", "consensus_step": 1.5}, ValueError, r"in \(0, 1\]"),
        ({"compression": "int8", "consensus_step": float("nan")}, ValueError, r"in \(0, 1\]"),
        ({"compression": "int8", "consensus_step": "1"}, TypeError, "consensus_step must be"),
        ({"compression": "lowrank:1", "layout": [(2, 2)]}, ValueError, "layout must describe"),
        ({"compression": "int8", "reference": np.ones(3)}, ValueError, "reference must have"),
        ({"compression": "int8", "seed": -1}, ValueError, "seed must be >= 0"),
        ({"compression": "int8", "weights0": -np.ones(4)}, ValueError, "weights0 must"),
        ({"compression": "int8", "record": "some"}, ValueError, "record must be"),
    ],
)
def test_bad_arguments_raise_named_errors(
    kwargs: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        simulate_compressed_push_sum(make_topology("ring", 4), np.ones((4, 5)), 2, **kwargs)  # type: ignore[arg-type]


def test_push_pull_needs_a_doubly_stochastic_matrix() -> None:
    with pytest.raises(ValueError, match="doubly"):
        simulate_compressed_push_pull(Star(4), np.ones((4, 2)), 2, compression="int8")


def test_the_schedule_period_bounds_the_phases_built() -> None:
    topo = make_topology("dynamic-directed-exponential", 8)
    assert schedule_period(topo) > 1
    trace = simulate_compressed_push_sum(topo, RNG.normal(size=(8, 2)), 1, compression="bf16")
    assert len(trace.edges) == 8  # one phase only: one out-peer each
