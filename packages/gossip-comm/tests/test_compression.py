"""Compressors against their numpy twins, and compressed gossip against the simulator.

The oracle is gossip-topology: `gossip_topology.compress` for one message, and
``simulate_compressed_push_sum`` / ``simulate_compressed_push_pull`` for whole runs. Every
multi-process run uses float64 buffers so that it equals the simulator step for step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

import gossip_topology.compress as twin
from gossip_comm import (
    Cast,
    Compressor,
    EdgeState,
    GossipConfig,
    Int8,
    LowRank,
    MessageSpec,
    Payload,
    PushPull,
    PushSum,
    TopK,
    make_compressor,
)
from gossip_comm.testing import run_distributed
from gossip_topology import (
    CustomMixing,
    Star,
    make_topology,
    mixing_matrix,
    simulate_compressed_push_pull,
    simulate_compressed_push_sum,
    simulate_push_sum,
)

SPECS = ["bf16", "fp16", "int8", "topk:0.2", "lowrank:2"]
LAYOUT = [(6, 5), (4,), (3, 2, 2), (2,)]  # 30 + 4 + 12 + 2 = 48 elements
D = 48
STEPS = 12


def _spec(layout: Sequence[Sequence[int]] = LAYOUT) -> MessageSpec:
    return MessageSpec(
        numel=sum(math.prod(s) for s in layout),
        dtype=torch.float64,
        device=torch.device("cpu"),
        layout=tuple(torch.Size(s) for s in layout),
    )


def _round_trip(comp: Compressor, value: torch.Tensor, state: dict[str, torch.Tensor]) -> Any:
    spec = _spec()
    payload = comp.payload_like(spec)
    comp.encode(spec, value, payload, state)
    out = torch.empty_like(value)
    comp.decode(spec, payload, out)
    added = torch.zeros_like(value)
    comp.add_decoded(spec, payload, added)
    torch.testing.assert_close(added, out, rtol=0, atol=0)  # the sparse add is the same
    return out, payload


@pytest.mark.parametrize("spec", SPECS)
def test_compressor_equals_numpy_twin(spec: str) -> None:
    rng = np.random.default_rng(3)
    comp, np_comp = make_compressor(spec), twin.parse_compressor(spec)
    assert np_comp is not None
    state = comp.init_state(_spec(), src=0, dst=1)
    np_state = np_comp.init_state(1, D, LAYOUT)
    for _ in range(4):  # successive messages on one edge: lowrank's warm start evolves
        v = rng.standard_normal(D) * rng.choice([1e-3, 1.0, 50.0], size=D)
        out, payload = _round_trip(comp, torch.from_numpy(v.copy()), state)
        expected = np_comp.decode(np_comp.encode(v[None, :], np_state, layout=LAYOUT))[0]
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
        assert comp.payload_bytes(_spec()) == sum(t.nbytes for t in payload)
        assert comp.payload_bytes(_spec()) == np_comp.payload_bytes(D, 8, LAYOUT)


@pytest.mark.parametrize("spec", ["bf16", "int8", "topk:0.01"])
def test_large_messages_take_the_fast_paths_and_still_equal_the_twin(spec: str) -> None:
    # Over 2^20 elements with a ragged tail: casts and int8 work in cache-sized chunks
    # (the tail block in the last one), and topk pre-selects candidates by a sampled
    # threshold. Scaled stretches make the sample's estimate uneven across the message.
    n = (1 << 20) + 3 * 1024 + 777
    rng = np.random.default_rng(5)
    v = (
        rng.standard_normal(n)
        * np.repeat(rng.choice([1e-3, 1.0, 50.0], size=n // 4096 + 1), 4096)[:n]
    )
    layout = [(n,)]
    spec_ = _spec(layout)
    comp, np_comp = make_compressor(spec), twin.parse_compressor(spec)
    assert np_comp is not None
    payload = comp.payload_like(spec_)
    comp.encode(spec_, torch.from_numpy(v.copy()), payload, comp.init_state(spec_, src=0, dst=1))
    base = rng.standard_normal(n)
    into = torch.from_numpy(base.copy())
    comp.add_decoded(spec_, payload, into)
    np_state = np_comp.init_state(1, n, layout)
    expected = np_comp.decode(np_comp.encode(v[None, :], np_state, layout=layout))[0]
    np.testing.assert_allclose(into.numpy() - base, expected, rtol=1e-9, atol=1e-12)
    if spec.startswith("topk"):
        assert (expected != 0).sum() == math.ceil(0.01 * n)


@pytest.mark.parametrize("size", [D, (1 << 20) + 3 * 1024 + 777])
@pytest.mark.parametrize("spec", ["bf16", "fp16", "int8", "int8:stochastic", "topk:0.01"])
def test_fused_encode_difference_equals_the_protocols_default(spec: str, size: int) -> None:
    # The built-ins subtract, encode and add the decoding in one chunked pass (topk picks
    # its candidates chunk by chunk without a full-size difference): payloads and the
    # public copy must be the same bits as encode(value - public) then add_decoded, for
    # successive messages on one edge; and the copy must move by the twin's decoding.
    rng = np.random.default_rng(11)
    layout = [(size,)]
    spec_ = _spec(layout)
    comp, np_comp = make_compressor(spec), twin.parse_compressor(spec)
    assert np_comp is not None and type(comp).encode_difference is not (
        Compressor.encode_difference
    )
    fused, default = torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
    state_f = comp.init_state(spec_, src=0, dst=1)
    state_d = comp.init_state(spec_, src=0, dst=1)
    np_state = np_comp.init_state(1, size, layout)
    # a -0.0 in the public copy, with a difference that rounds to a zero code: the copy
    # must turn +0.0 as the receiver's does (it adds a decoded +0.0), not stay -0.0
    fused[:8], default[:8] = -0.0, -0.0

    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.view(torch.int64) if t.dtype == torch.float64 else t

    for step in range(3):
        scale = np.repeat(rng.choice([1e-3, 1.0, 50.0], size=size // 4096 + 1), 4096)[:size]
        value = torch.from_numpy(rng.standard_normal(size) * scale + step)
        value[:8] = -1e-300 if step == 0 else value[:8]
        before = fused.numpy().copy()
        pay_f, pay_d = comp.payload_like(spec_), comp.payload_like(spec_)
        comp.encode_difference(spec_, value, fused, pay_f, state_f)
        Compressor.encode_difference(comp, spec_, value, default, pay_d, state_d)
        for a, b in zip(pay_f, pay_d, strict=True):
            assert torch.equal(bits(a), bits(b))
        assert torch.equal(bits(fused), bits(default))  # signs of zeros included
        # int8:stochastic's twin draws other noise; torch casts float64 to float16
        # through float32 (rounding twice), numpy in one rounding: they differ by an ulp
        # near ties, which a million elements hit
        if spec not in ("int8:stochastic", "fp16"):
            diff = value.numpy() - before
            expected = np_comp.decode(np_comp.encode(diff[None, :], np_state, layout=layout))[0]
            np.testing.assert_allclose(fused.numpy() - before, expected, rtol=1e-9, atol=1e-9)


def test_compressors_are_lossy_in_the_documented_way() -> None:
    v = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -3.0, 0.5] * 12, dtype=torch.float64)
    out, _ = _round_trip(Cast("bf16"), v, {})
    assert out[:4].tolist() == [1.0, 1 + 2**-6, -3.0, 0.5]  # round to nearest even
    out, (codes, scales) = _round_trip(Int8(block=16), v, {})
    assert codes.dtype == torch.int8 and scales.numel() == 3
    assert float((out - v).abs().max()) <= float(scales.max()) / 2 + 1e-12
    top = TopK(0.1)
    out, (values, indices) = _round_trip(top, v, {})
    assert top.k(D) == 5 and values.numel() == 5 and indices.dtype == torch.int32
    assert sorted(out[out != 0].tolist()) == [-3.0] * 5  # the five largest magnitudes
    # a rank-1 matrix is sent exactly once the warm start has found its column space
    u, w = torch.arange(1.0, 7.0, dtype=torch.float64), torch.linspace(-1, 1, 5)
    low = LowRank(1)
    M = torch.cat([torch.outer(u, w.double()).reshape(-1), torch.ones(18, dtype=torch.float64)])
    out, _ = _round_trip(low, M, low.init_state(_spec(), src=0, dst=1))
    torch.testing.assert_close(out[:30], M[:30], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[30:34], M[30:34], rtol=0, atol=0)  # a vector goes raw


def test_stochastic_int8_is_unbiased() -> None:
    comp = Int8(block=8, stochastic=True, seed=5)
    v = torch.linspace(-1.0, 0.7, 48, dtype=torch.float64)
    state = comp.init_state(_spec(), src=0, dst=1)
    outs = torch.stack([_round_trip(comp, v, state)[0] for _ in range(400)])
    scale = float(v.abs().max()) / 127
    # each entry: mean of 400 draws of a variable within one scale step, sd <= scale/2
    assert float((outs.mean(0) - v).abs().max()) < 5 * scale / 2 / math.sqrt(400)
    assert not torch.equal(outs[0], outs[1])  # the state's generator advances


def test_make_compressor_and_config_errors() -> None:
    assert repr(make_compressor("int8:stochastic")) == "Int8(block=1024, stochastic=True)"
    assert repr(make_compressor(" lowrank:3")) == "LowRank(3)"
    for bad in ["topk", "topk:0", "topk:1.5", "lowrank:0", "lowrank:x", "int4", "int8:foo"]:
        with pytest.raises(ValueError, match="compression"):
            make_compressor(bad)
    with pytest.raises(TypeError, match="Compressor or a spec string"):
        make_compressor(8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wire_dtype and compression"):
        GossipConfig(compression="int8", wire_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="consensus_step must be a number in"):
        GossipConfig(compression="int8", consensus_step=0.0)
    with pytest.raises(ValueError, match="only applies with compression"):
        GossipConfig(consensus_step=0.5)
    assert GossipConfig(compression="topk:0.5").gamma == TopK(0.5).default_consensus_step
    assert GossipConfig(compression="int8", consensus_step=0.25).gamma == 0.25
    with pytest.raises(ValueError, match="layout's shapes hold 7"):
        LowRank(1).payload_like(_bad_spec())


def _bad_spec() -> MessageSpec:
    return MessageSpec(
        numel=8, dtype=torch.float64, device=torch.device("cpu"), layout=(torch.Size([7]),)
    )


# ---------------------------------------------------------------- whole runs, distributed


class Identity(Compressor):
    """A user-defined compressor through the public protocol: sends the value as it is."""

    name = "identity"

    def payload_like(self, spec: MessageSpec) -> list[torch.Tensor]:
        return [torch.empty(spec.numel, dtype=spec.dtype, device=spec.device)]

    def encode(
        self, spec: MessageSpec, value: torch.Tensor, payload: Payload, state: EdgeState
    ) -> None:
        payload[0].copy_(value)

    def decode(self, spec: MessageSpec, payload: Payload, out: torch.Tensor) -> None:
        out.copy_(payload[0])


def _topology(name: str, n: int) -> Any:
    return Star(n) if name == "star" else make_topology(name, n, 1)


def _x0(n: int) -> np.ndarray:
    return np.random.default_rng(11).standard_normal((n, D))


def _run_worker(
    rank: int, n: int, cases: list[tuple[str, str, float | None, bool]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    layout = [torch.Size(s) for s in LAYOUT]
    x0 = torch.from_numpy(_x0(n)[rank].copy())
    for topo_name, spec, gamma, use_ref in cases:
        topo = _topology(topo_name, n)
        comp: Any = Identity() if spec == "identity" else spec
        config = GossipConfig(timeout=60, compression=comp, consensus_step=gamma)
        ref = torch.full((D,), 0.25, dtype=torch.float64) if use_ref else None
        ps = PushSum(topo, x0, config=config, layout=layout, reference=ref)
        x, w = x0.clone(), 1.0
        xs, ws = [x.numpy().copy()], [w]
        for t in range(STEPS):
            if t % 2:
                x, w = ps.start(x, w).wait()  # the asynchronous path is the same step
            else:
                x, w = ps.mix(x, w)
            xs.append(x.numpy().copy())
            ws.append(w)
        ps.close()
        out[f"{topo_name}/{spec}/{gamma}/{use_ref}"] = (np.array(xs), np.array(ws), ps.bytes_sent)
    return out


CASES: list[tuple[str, str, float | None, bool]] = [
    ("npeer-dynamic-directed-exponential", s, None, False) for s in SPECS
] + [
    ("star", "int8", None, False),  # weights travel: a non-regular graph
    ("star", "topk:0.2", 0.5, False),
    ("npeer-dynamic-directed-exponential", "lowrank:2", 0.3, True),  # a common reference
    ("star", "identity", None, False),
    ("ring", "identity", 0.5, False),
]


@pytest.fixture(scope="module")
def push_sum_runs() -> list[dict[str, Any]]:
    return run_distributed(_run_worker, 4, args=(CASES,), timeout=240)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "/".join(map(str, c)))
def test_push_sum_equals_simulator(
    push_sum_runs: list[dict[str, Any]], case: tuple[str, str, float | None, bool]
) -> None:
    topo_name, spec, gamma, use_ref = case
    n = 4
    key = "/".join(map(str, case))
    xs = np.stack([push_sum_runs[r][key][0] for r in range(n)], axis=1)  # (T+1, n, D)
    ws = np.stack([push_sum_runs[r][key][1] for r in range(n)], axis=1)
    topo = _topology(topo_name, n)
    x0 = _x0(n)
    # conservation, whatever the compressor: the sums never move
    np.testing.assert_allclose(
        xs.sum(axis=1), np.broadcast_to(x0.sum(0), xs[:, 0].shape), atol=1e-12
    )
    np.testing.assert_allclose(ws.sum(axis=1), n, rtol=0, atol=1e-12)
    if spec == "identity":  # lossless: plain push-sum with the lazy matrix (1 - g) I + g W
        g = 1.0 if gamma is None else gamma
        lazy = CustomMixing(
            [(1 - g) * np.eye(n) + g * mixing_matrix(topo, t) for t in range(topo.period)]
        )
        ref = simulate_push_sum(topo, x0, STEPS, lazy)
    else:
        ref = simulate_compressed_push_sum(
            topo,
            x0,
            STEPS,
            compression=twin.parse_compressor(spec),
            consensus_step=gamma,
            reference=np.full(D, 0.25) if use_ref else None,
            layout=LAYOUT,
        )
    np.testing.assert_allclose(xs, ref.numerators, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(ws, ref.weights, rtol=1e-12, atol=1e-12)
    comp = Identity() if spec == "identity" else make_compressor(spec)
    per_message = comp.payload_bytes(_spec())
    weight_bytes = 0 if topo.is_regular else 8
    sent = sum(len(topo.out_peers(0, t)) for t in range(STEPS)) * (per_message + weight_bytes)
    assert push_sum_runs[0][key][2] == sent


def _overlap_worker(rank: int, n: int) -> dict[str, Any]:
    """Push-pull, overlap mode and checkpoints of compressed gossip, on one group."""
    out: dict[str, Any] = {}
    layout = [torch.Size(s) for s in LAYOUT]
    x0 = torch.from_numpy(_x0(n)[rank].copy())
    ring = make_topology("ring", n, 1)
    expo = make_topology("npeer-dynamic-directed-exponential", n, 1)
    # push-pull (D-PSGD's gossip) with int8 differences
    pp = PushPull(ring, x0, config=GossipConfig(timeout=60, compression="int8"))
    x = x0.clone()
    xs = [x.numpy().copy()]
    for _ in range(STEPS):
        x, _ = pp.mix(x)
        xs.append(x.numpy().copy())
    out["pp"] = np.array(xs)
    # overlap mode, received at once, equals the blocking step; then held two steps back
    config = GossipConfig(timeout=60, compression="topk:0.2", consensus_step=0.5)
    sync = PushSum(expo, x0, config=config, layout=layout)
    over = PushSum(expo, x0, config=config, layout=layout)
    a, wa = x0.clone(), 1.0
    b, wb = x0.clone(), 1.0
    for _ in range(STEPS):
        a, wa = sync.mix(a, wa)
        snap = b.clone()
        rnd = over.send(snap, wb)
        # the sent copies' shares leave at keep(): neither a next send nor receiving the
        # round may come first, and the refusals change nothing
        with pytest.raises(RuntimeError, match="before sending the next"):
            over.send(snap, wb)
        with pytest.raises(RuntimeError, match="before receiving it"):
            over.receive(rnd, b)
        rnd.keep(snap, out=b)
        with pytest.raises(RuntimeError, match="already called"):
            rnd.keep(snap, out=b)  # taking the sent copies out twice would break the sum
        wb = wb * rnd.self_weight + over.receive(rnd, b)
    out["overlap_now"] = (a.numpy().copy(), wa, b.numpy().copy(), wb)
    late = PushSum(expo, x0, config=config, layout=layout)
    c, wc = x0.clone(), 1.0
    rounds: list[Any] = []
    held = []
    for t in range(STEPS):
        snap = c.clone()
        rnd = late.send(snap, wc)
        if t % 2:
            rnd.keep(snap, out=c)
        else:  # in place, as a caller that reuses its snapshot buffer does
            rnd.keep(snap, out=snap)
            c.copy_(snap)
        wc *= rnd.self_weight
        rounds.append(rnd)
        if len(rounds) > 2:
            first = rounds.pop(0)
            if t == STEPS - 1:  # a checkpoint taken with rounds in flight
                saved_round = late.round_state(first)
            wc += late.receive(first, c)
        held.append((c.numpy().copy(), wc))
    state = late.state_dict()
    pending = [late.round_state(r) for r in rounds]
    for r in rounds:
        wc += late.receive(r, c)
    out["overlap_late"] = (held, c.numpy().copy(), wc)
    # restore the checkpoint in a new gossiper: it folds the same rounds into the same value
    restored = PushSum(expo, x0, config=config, layout=layout)
    restored.load_state_dict(state)
    d, wd = torch.from_numpy(held[-1][0].copy()), held[-1][1]
    for s in pending:
        wd += restored.receive(restored.restore_round(s), d)
    out["restored"] = (d.numpy().copy(), wd)
    # and the restored gossiper keeps going exactly like the original
    e1, e2 = c.clone(), d.clone()
    for _ in range(3):
        e1, _ = late.mix(e1, 1.0)
        e2, _ = restored.mix(e2, 1.0)
    out["continued"] = (e1.numpy().copy(), e2.numpy().copy())
    out["saved_round_step"] = saved_round["step"]
    with pytest.raises(ValueError, match="saved without compression"):
        restored.load_state_dict({"step": 3})
    return out


@pytest.fixture(scope="module")
def overlap_runs() -> list[dict[str, Any]]:
    return run_distributed(_overlap_worker, 4, timeout=240)


def test_push_pull_equals_simulator(overlap_runs: list[dict[str, Any]]) -> None:
    xs = np.stack([r["pp"] for r in overlap_runs], axis=1)
    ref = simulate_compressed_push_pull(
        make_topology("ring", 4, 1), _x0(4), STEPS, compression=twin.parse_compressor("int8")
    )
    np.testing.assert_allclose(xs, ref.numerators, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(xs.sum(axis=1), np.broadcast_to(_x0(4).sum(0), xs[:, 0].shape))


def test_overlap_mode_received_at_once_equals_blocking_step(
    overlap_runs: list[dict[str, Any]],
) -> None:
    for r in overlap_runs:
        a, wa, b, wb = r["overlap_now"]
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        assert wb == pytest.approx(wa, abs=1e-15)


def test_overlap_mode_conserves_mass_with_rounds_in_flight(
    overlap_runs: list[dict[str, Any]],
) -> None:
    total = _x0(4).sum(0)
    finals = np.stack([r["overlap_late"][1] for r in overlap_runs])
    np.testing.assert_allclose(finals.sum(0), total, atol=1e-12)
    assert sum(r["overlap_late"][2] for r in overlap_runs) == pytest.approx(4.0, abs=1e-12)
    # while rounds are in flight, the held sums fall short of the total: mass is travelling
    held = np.stack([r["overlap_late"][0][-1][0] for r in overlap_runs])
    assert np.abs(held.sum(0) - total).max() > 1e-3


def test_checkpoint_with_rounds_in_flight_resumes_exactly(
    overlap_runs: list[dict[str, Any]],
) -> None:
    for r in overlap_runs:
        c, wc = r["overlap_late"][1], r["overlap_late"][2]
        d, wd = r["restored"]
        np.testing.assert_array_equal(d, c)
        assert wd == wc
        e1, e2 = r["continued"]
        np.testing.assert_array_equal(e2, e1)
        assert r["saved_round_step"] == STEPS - 3


# ------------------------------------------------------------------- AD-PSGD's pairs


def _pairs_worker(rank: int, n: int, spec: str, exchanges: int, jitter: bool) -> Any:
    from gossip_comm import AsyncBilateral

    x = torch.from_numpy(_x0(n)[rank].copy())
    start = x.clone().numpy()
    config = GossipConfig(timeout=60, compression=spec, consensus_step=1.0)
    ab = AsyncBilateral(
        make_topology("dynamic-bipartite-exponential", n),
        x,
        config=config,
        layout=[torch.Size(s) for s in LAYOUT],
    )
    if ab.is_passive:
        shared = x.clone()
        ab.serve(shared)
        ab.finish()
        return start, shared.numpy(), ab.bytes_sent, _copies(ab)
    rng = np.random.default_rng(100 + rank)
    for _ in range(exchanges):
        if jitter:
            time.sleep(float(rng.uniform(0, 0.02)))  # actives arrive in no fixed order
        x = ab.request(x).wait()
    ab.finish()
    return start, x.numpy(), ab.bytes_sent, _copies(ab)


def _copies(ab: Any) -> dict[str, Any]:
    """The public copies of an AsyncBilateral, and what its state_dict keeps."""
    public = ab._codec.public
    return {"out": public.out, "in": public.into, "state": ab.state_dict()}


@pytest.mark.parametrize("spec", ["topk:0.2", "lowrank:1"])
def test_a_compressed_pair_equals_the_numpy_pair_oracle(spec: str) -> None:
    exchanges = 4
    res = run_distributed(_pairs_worker, 2, args=(spec, exchanges, False), timeout=120)
    comp = twin.parse_compressor(spec)
    assert comp is not None
    x = _x0(2).copy()  # rank 0 passive, rank 1 active
    out_state = [comp.init_state(1, D, LAYOUT) for _ in range(2)]
    public = np.zeros((2, D))  # public[r]: r's value as its partner knows it
    for _ in range(exchanges):
        for r in (1, 0):  # the active encodes first; the order does not matter
            payload = comp.encode((x[r] - public[r])[None, :], out_state[r], layout=LAYOUT)
            public[r] += comp.decode(payload)[0]
        step = 0.5 * (public[0] - public[1])  # gamma = 1
        x[1] += step
        x[0] -= step
    np.testing.assert_allclose(res[0][1], x[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res[1][1], x[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res[0][1] + res[1][1], _x0(2).sum(0), atol=1e-12)
    per_message = make_compressor(spec).payload_bytes(_spec())
    assert res[1][2] == exchanges * (per_message + 16)  # and a 16-byte header each
    assert res[0][2] == exchanges * per_message
    # both ends of the pair hold the same public copies, bit for bit
    np.testing.assert_array_equal(res[0][3]["out"][1], res[1][3]["in"][0])
    np.testing.assert_array_equal(res[0][3]["in"][1], res[1][3]["out"][0])
    # a checkpoint keeps only the request counter: after a restart every pair starts
    # afresh on both ends, whatever exchange was in flight when it was taken
    assert res[0][3]["state"] == {"step": 0} and res[1][3]["state"] == {"step": exchanges}


def test_compressed_pairs_conserve_the_sum_in_any_order() -> None:
    n = 6
    res = run_distributed(_pairs_worker, n, args=("int8", 6, True), timeout=120)
    np.testing.assert_allclose(sum(r[1] for r in res), sum(r[0] for r in res), atol=1e-12)


def _edge_cases(rank: int, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ring = make_topology("ring", n, 1)
    # a bfloat16 buffer with a common reference (its checksum has no numpy dtype)
    half = torch.from_numpy(_x0(n)[rank].copy()).to(torch.bfloat16)
    ref = torch.full((D,), 0.5, dtype=torch.bfloat16)
    ps = PushSum(ring, half, config=GossipConfig(timeout=60, compression="int8"), reference=ref)
    w = 1.0
    for _ in range(3):
        half, w = ps.mix(half, w)
    out["bf16"] = half.double().numpy().copy()
    # an overlapped round still in flight: both ends of its edge already hold a copy
    config = GossipConfig(timeout=60, compression="lowrank:2")
    layout = [torch.Size(s) for s in LAYOUT]
    x = torch.from_numpy(_x0(n)[rank].copy())
    over = PushSum(ring, x, config=config, layout=layout)
    snap = x.clone()
    rnd = over.send(snap, 1.0)
    state = over.state_dict()
    out["copies"] = (sorted(state["public_out"]), sorted(state["public_in"]))
    rnd.keep(snap, out=x)
    over.receive(rnd, x)
    # a checkpoint from another compressor is refused by name
    other = PushSum(
        ring, x, config=GossipConfig(timeout=60, compression="lowrank:1"), layout=layout
    )
    with pytest.raises(ValueError, match="does not fit LowRank"):
        other.load_state_dict(over.state_dict())
    return out


def test_bf16_buffers_in_flight_copies_and_foreign_checkpoints() -> None:
    n = 4
    res = run_distributed(_edge_cases, n, timeout=120)
    total = sum(r["bf16"] for r in res)
    np.testing.assert_allclose(total, _x0(n).sum(0), rtol=0.05, atol=0.05)  # bf16 rounding
    for rank, r in enumerate(res):
        assert r["copies"] == ([(rank + 1) % n], [(rank - 1) % n])
