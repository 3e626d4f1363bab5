"""Chunked transport: bit-identical to one message per direction, for every gossiper.

``chunk_bytes=4096`` splits a 5000-element float32 buffer into 1024-element chunks (the
last one ragged), so every exchange below travels in 5 interleaved pieces each way and is
mixed piece by piece as it arrives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm import (
    DEFAULT_CHUNK_BYTES,
    AsyncBilateral,
    BilateralPushPull,
    GossipConfig,
    NonFiniteError,
    PushPull,
    PushSum,
)
from gossip_comm._channel import chunk_numel_for
from gossip_comm._transport import split
from gossip_comm.testing import run_distributed
from gossip_topology import Star, make_topology, simulate_push_sum

N, NUMEL, STEPS, CHUNK_BYTES = 4, 5000, 4, 4096


def _x0() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(N, NUMEL)).astype(np.float32)


def _one_async_exchange(rank: int, n: int, x: torch.Tensor, config: GossipConfig) -> Any:
    """Each active's one AD-PSGD request, answered by its passive: the value it ends with."""
    ab = AsyncBilateral(make_topology("dynamic-bipartite-exponential", n), x, config=config)
    if ab.is_passive:
        shared = x.clone()
        ab.serve(shared)
        ab.finish()
        return shared.numpy().copy()
    value = ab.request(x).wait().numpy().copy()
    ab.finish()
    return value


def _all_gossipers(rank: int, n: int, chunk_bytes: int) -> dict[str, Any]:
    x0 = _x0()
    out: dict[str, Any] = {}
    base = GossipConfig(timeout=60, chunk_bytes=chunk_bytes)
    bf16 = GossipConfig(timeout=60, chunk_bytes=chunk_bytes, wire_dtype=torch.bfloat16)
    cases = [
        ("push-sum star", Star(n), base),  # weights travel; the hub has 3 in-peers
        ("push-sum exp", make_topology("npeer-dynamic-directed-exponential", n), base),
        ("push-sum bf16", make_topology("npeer-dynamic-directed-exponential", n), bf16),
    ]
    for name, topo, config in cases:
        x = torch.from_numpy(x0[rank].copy())
        ps = PushSum(topo, x, config=config)
        out.setdefault("chunk_numel", ps._engine.channel.chunk_numel)  # float32 wire
        w = 1.0
        for _ in range(STEPS):
            x, w = ps.mix(x, w)
        out[name] = (x.numpy().copy(), w)
        ps.close()
    # overlap mode (OSGP): messages added into a running numerator, one step late
    x = torch.from_numpy(x0[rank].copy())
    ps = PushSum(Star(n), x, config=base)
    w, rounds = 1.0, []
    for _ in range(STEPS):
        rounds.append(ps.send(x.clone(), w))
        x.mul_(rounds[-1].self_weight)
        w *= rounds[-1].self_weight
        if len(rounds) > 1:
            w += ps.receive(rounds.pop(0), x)
    w += ps.receive(rounds.pop(0), x)
    out["overlap"] = (x.numpy().copy(), w)
    # the same, folding each round straight into its own snapshot (receive with base=),
    # which then carries the next round: must equal the in-place fold bit for bit
    x = torch.from_numpy(x0[rank].copy())
    ps2 = PushSum(Star(n), x, config=base)
    w, snap = 1.0, x.clone()
    rnd = ps2.send(snap, w)
    torch.mul(snap, rnd.self_weight, out=x)
    w *= rnd.self_weight
    for _ in range(STEPS - 1):
        w += ps2.receive(rnd, snap, base=x)  # snap <- x + messages
        rnd = ps2.send(snap, w)
        torch.mul(snap, rnd.self_weight, out=x)
        w *= rnd.self_weight
    w += ps2.receive(rnd, x)
    out["overlap fused"] = (x.numpy().copy(), w)
    # reference for it: fold the previous round in place, then send a copy (OSGP's order)
    x = torch.from_numpy(x0[rank].copy())
    ps3 = PushSum(Star(n), x, config=base)
    w, prev = 1.0, None
    for _ in range(STEPS):
        if prev is not None:
            w += ps3.receive(prev, x)
        prev = ps3.send(x.clone(), w)
        x.mul_(prev.self_weight)
        w *= prev.self_weight
    assert prev is not None
    w += ps3.receive(prev, x)
    out["overlap fold-first"] = (x.numpy().copy(), w)
    for g in (ps, ps2, ps3):
        g.close()
    # push-pull on a ring (every rank sends to and receives from different peers)
    x = torch.from_numpy(x0[rank].copy())
    pp = PushPull(make_topology("npeer-dynamic-directed-exponential", n), x, config=base)
    for _ in range(STEPS):
        x, _ = pp.mix(x)
    out["push-pull"] = x.numpy().copy()
    # pairwise, blocking: each active and its passive send to each other
    x = torch.from_numpy(x0[rank].copy())
    bp = BilateralPushPull(make_topology("dynamic-bipartite-exponential", n), x, config=base)
    for _ in range(STEPS):
        x = bp.mix(x)
    out["bilateral"] = x.numpy().copy()
    # AD-PSGD: one request per active, served in full duplex; compressed, payloads of
    # two dtypes (int8 codes, float scales) chunk alike both ways
    int8 = GossipConfig(timeout=60, chunk_bytes=chunk_bytes, compression="int8")
    for case, config in (("async", base), ("async int8", int8)):
        out[case] = _one_async_exchange(rank, n, torch.from_numpy(x0[rank].copy()), config)
    return out


@pytest.fixture(scope="module")
def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (
        run_distributed(_all_gossipers, N, (0,)),
        run_distributed(_all_gossipers, N, (CHUNK_BYTES,)),
    )


CASES = [
    "push-sum star",
    "push-sum exp",
    "push-sum bf16",
    "overlap",
    "push-pull",
    "bilateral",
    "async",
    "async int8",
]


def test_folding_into_the_snapshot_equals_folding_in_place(
    both: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    for results in both:
        for r in results:
            assert r["overlap fused"][1] == r["overlap fold-first"][1]
            assert np.array_equal(r["overlap fused"][0], r["overlap fold-first"][0])


@pytest.mark.parametrize("case", CASES)
def test_chunked_exchange_is_bit_identical_to_one_message(
    both: tuple[list[dict[str, Any]], list[dict[str, Any]]], case: str
) -> None:
    whole, chunked = both
    assert [r["chunk_numel"] for r in whole] == [0] * N
    assert [r["chunk_numel"] for r in chunked] == [1024] * N  # really split: 5 chunks
    for rank in range(N):
        a, b = whole[rank][case], chunked[rank][case]
        if isinstance(a, tuple):
            assert a[1] == b[1], f"rank {rank}: weights differ"
            a, b = a[0], b[0]
        assert np.array_equal(a, b), f"{case}, rank {rank}: {np.sum(a != b)} elements differ"


def test_chunked_push_sum_matches_the_simulator(
    both: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    _, chunked = both
    trace = simulate_push_sum(Star(N), _x0().astype(np.float64), STEPS, record="last")
    got = np.stack([r["push-sum star"][0] for r in chunked])
    weights = np.array([r["push-sum star"][1] for r in chunked])
    np.testing.assert_allclose(got, trace.numerators, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights, trace.weights, rtol=1e-12)
    # the pairwise average conserves the sum, chunk by chunk
    start = _x0().astype(np.float64).sum(0)
    for case in ("bilateral", "async", "push-pull"):
        total = np.stack([r[case] for r in chunked]).astype(np.float64).sum(0)
        np.testing.assert_allclose(total, start, rtol=1e-4, atol=1e-4)


def _disagree(rank: int, n: int) -> str:
    chunk = 4096 if rank == 0 else 8192
    x = torch.zeros(NUMEL)
    try:
        PushSum(Star(n), x, config=GossipConfig(chunk_bytes=chunk))
    except ValueError as exc:
        return str(exc)
    return "no error"


def test_ranks_must_agree_on_the_chunk_size() -> None:
    for msg in run_distributed(_disagree, 2):
        assert "chunk size" in msg and "{0: 1024, 1: 2048}" in msg


def _poison_late_chunk(rank: int, n: int) -> str:
    x = torch.ones(NUMEL)
    if rank == 1:
        x[4500] = float("nan")  # in the fifth and last chunk
    config = GossipConfig(timeout=20, chunk_bytes=CHUNK_BYTES, check_finite=True)
    ps = PushSum(make_topology("npeer-dynamic-directed-exponential", n), x, config=config)
    try:
        ps.mix(x)
    except NonFiniteError as exc:
        return f"{exc.rank}<-{exc.peer}"
    finally:
        ps.close()
    return "ok"


def test_a_non_finite_value_in_a_late_chunk_names_its_sender() -> None:
    got = run_distributed(_poison_late_chunk, 2)
    assert got == ["0<-1", "ok"]


def test_split_covers_every_element_once() -> None:
    assert split(10, 0) == [slice(0, 10)]
    assert split(10, 10) == [slice(0, 10)]
    assert split(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    covered = np.zeros(5000, dtype=int)
    for piece in split(5000, 1024):
        covered[piece] += 1
    assert (covered == 1).all()


def test_chunk_numel_follows_the_backend_and_the_wire_dtype() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert chunk_numel_for(None, cuda, torch.float32, 10**7) == 0  # NCCL: one message
    assert chunk_numel_for(0, cpu, torch.float32, 10**7) == 0
    assert chunk_numel_for(4096, cpu, torch.float32, 10**7) == 1024
    assert chunk_numel_for(4096, cpu, torch.bfloat16, 10**7) == 2048  # same bytes
    assert chunk_numel_for(100, cpu, torch.float32, 10**7) == 1024  # rounded up
    assert chunk_numel_for(1 << 20, cpu, torch.float32, 1000) == 0  # fits in one
    default = chunk_numel_for(None, cpu, torch.float32, 10**9)
    assert default > 0 and default % 1024 == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4MB"])
def test_chunk_bytes_must_be_a_non_negative_int(bad: object) -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        GossipConfig(chunk_bytes=bad)  # type: ignore[arg-type]


def _two_hosts(rank: int, n: int) -> dict[str, Any]:
    """Default chunking with ranks 0, 1 on one "host" and 2, 3 on another."""
    import gossip_comm._channel as channel_module

    channel_module.host_key = lambda: 100 + rank // 2  # type: ignore[assignment]
    numel = (DEFAULT_CHUNK_BYTES // 4) * 2 + 777  # three default chunks when split
    x = torch.from_numpy(np.random.default_rng(rank).normal(size=numel).astype(np.float32))
    topo = make_topology("npeer-dynamic-directed-exponential", n, 1)  # +1, then +2
    ps = PushSum(topo, x.clone(), config=GossipConfig(timeout=60))
    ab = BilateralPushPull(make_topology("dynamic-bipartite-exponential", n), x.clone())
    out: dict[str, Any] = {
        "remote": ps._engine.channel.remote,
        "chunk_to": [ps._engine.channel.chunk_to(p) for p in range(n)],
        "pieces": [],
    }
    y, w = x.clone(), 1.0
    for _ in range(2):
        flight = ps._engine.post(y, w)
        pending = flight.pending
        counts = {i: 0 for i in range(len(pending.messages))}
        for _, i in pending.pieces:
            counts[i] += 1
        out["pieces"].append(
            sorted((m.peer, m.send, counts[i]) for i, m in enumerate(pending.messages))
        )
        y, w = ps._engine.finish(flight)
    out["mixed"] = y.numpy().copy()
    out["x0"] = x.numpy().copy()
    ab.close()
    return out


def test_default_chunks_split_only_messages_between_hosts() -> None:
    res = run_distributed(_two_hosts, N)
    big = DEFAULT_CHUNK_BYTES // 4
    for rank, r in enumerate(res):
        assert r["remote"] == tuple(rank // 2 != p // 2 for p in range(N))
        assert r["chunk_to"] == [big if rank // 2 != p // 2 else 0 for p in range(N)]
        # each message travels in 3 chunks across hosts and whole within one
        for step, hop in enumerate((1, 2)):
            out_peer, in_peer = (rank + hop) % N, (rank - hop) % N
            expected = [
                (p, send, 3 if rank // 2 != p // 2 else 1)
                for p, send in ((out_peer, True), (in_peer, False))
            ]
            assert r["pieces"][step] == sorted(expected)
    x0 = np.stack([r["x0"] for r in res]).astype(np.float64)
    sim = simulate_push_sum(make_topology("npeer-dynamic-directed-exponential", N, 1), x0, 2)
    got = np.stack([r["mixed"] for r in res])
    np.testing.assert_allclose(got, sim.numerators[-1], rtol=1e-6, atol=1e-6)
