"""CUDA checks: staged gloo gossip of CUDA tensors, and the NCCL path. Skipped without a GPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm import BilateralPushPull, GossipConfig, PushSum, gossip_average
from gossip_comm.testing import run_distributed
from gossip_topology import Star, make_topology, simulate_push_sum

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _staged_worker(rank: int, n: int, x0: np.ndarray, name: str, wire: Any) -> Any:
    topo = Star(n) if name == "star" else make_topology(name, n)
    x = torch.from_numpy(x0[rank].copy()).cuda()
    ps = PushSum(
        topo, x, config=GossipConfig(comm_device="cpu", wire_dtype=wire)
    )  # CUDA tensor over gloo
    w, hist = 1.0, [x.cpu().numpy()]
    for i in range(5):
        if i % 2:
            x, w = ps.start(x, w).wait()
        else:
            x, w = ps.mix(x, w)
        assert x.is_cuda
        hist.append(x.cpu().numpy())
    return np.array(hist)


@needs_cuda
@pytest.mark.parametrize("name", ["star", "npeer-dynamic-directed-exponential"])
def test_cuda_tensors_staged_over_gloo_match_the_simulator(name: str) -> None:
    n = 3
    x0 = np.random.default_rng(1).normal(size=(n, 64))
    res = run_distributed(_staged_worker, n, (x0, name, None))
    topo = Star(n) if name == "star" else make_topology(name, n)
    sim = simulate_push_sum(topo, x0, 5)
    np.testing.assert_allclose(np.stack(res, axis=1), sim.numerators, rtol=1e-12, atol=1e-12)


def _bilateral_cuda_worker(rank: int, n: int) -> list[float]:
    x = torch.full((8,), float(rank), device="cuda")
    bp = BilateralPushPull(
        make_topology("dynamic-bipartite-exponential", n), x, config=GossipConfig(comm_device="cpu")
    )
    bp.mix(x)
    return x.cpu().tolist()


@needs_cuda
def test_bilateral_with_cuda_tensors() -> None:
    res = run_distributed(_bilateral_cuda_worker, 2)
    assert res[0] == res[1] == [0.5] * 8


def _nccl_worker(rank: int, n: int) -> list[float]:
    x = torch.arange(4, dtype=torch.float64, device="cuda") + rank
    ps = PushSum(make_topology("one-peer-exponential", n), x)
    with pytest.raises(ValueError, match="gossips on cuda"):  # NCCL chose CUDA buffers
        ps.mix(torch.zeros(4, dtype=torch.float64), 1.0)
    w = 1.0
    steps = max(1, (n - 1).bit_length())
    for _ in range(steps):
        x, w = ps.mix(x, w)
    avg = gossip_average(torch.arange(4.0, device="cuda") + rank, make_topology("ring", n), 0)
    assert avg.is_cuda
    return (x / w).cpu().tolist()


@needs_cuda
@pytest.mark.parametrize("n", [1, 2])
def test_nccl_push_sum(n: int) -> None:
    if torch.cuda.device_count() < n:
        pytest.skip(
            f"NCCL needs {n} GPUs for {n} ranks; this machine has {torch.cuda.device_count()}"
        )
    res = run_distributed(_nccl_worker, n, backend="nccl")
    mean = [i + (n - 1) / 2 for i in range(4)]
    for r in range(n):
        assert res[r] == pytest.approx(mean, abs=1e-12)


def _chunked_cuda_worker(rank: int, n: int, x0: np.ndarray, chunk_bytes: int) -> Any:
    """CUDA buffers staged through gloo in 1024-element chunks, mixed as they arrive."""
    out: dict[str, Any] = {}
    cases = [
        ("star", Star(n), None),
        ("exp", make_topology("npeer-dynamic-directed-exponential", n), None),
        ("exp-bf16", make_topology("npeer-dynamic-directed-exponential", n), torch.bfloat16),
    ]
    for name, topo, wire in cases:
        x = torch.from_numpy(x0[rank].copy()).cuda()
        config = GossipConfig(comm_device="cpu", chunk_bytes=chunk_bytes, wire_dtype=wire)
        ps = PushSum(topo, x, config=config)
        assert 0 < ps._engine.channel.chunk_numel < x.numel()  # really chunked
        w, hist = 1.0, [x.cpu().numpy()]
        for i in range(4):
            x, w = (ps.start(x, w).wait()) if i % 2 else ps.mix(x, w)
            assert x.is_cuda
            hist.append(x.cpu().numpy())
        ps.close()
        out[name] = np.array(hist)
    return out


@needs_cuda
def test_chunked_cuda_tensors_match_the_simulator() -> None:
    n = 4
    x0 = np.random.default_rng(3).normal(size=(n, 5000)).astype(np.float32)
    res = run_distributed(_chunked_cuda_worker, n, (x0, 4096), timeout=180)
    for name, topo, rtol in [
        ("star", Star(n), 1e-5),
        ("exp", make_topology("npeer-dynamic-directed-exponential", n), 1e-5),
        ("exp-bf16", make_topology("npeer-dynamic-directed-exponential", n), 3e-2),
    ]:
        sim = simulate_push_sum(topo, x0.astype(np.float64), 4)
        got = np.stack([r[name] for r in res], axis=1)
        np.testing.assert_allclose(got, sim.numerators, rtol=rtol, atol=rtol, err_msg=name)


@needs_cuda
@pytest.mark.parametrize("spec", ["bf16", "int8", "topk:0.01", "lowrank:2"])
def test_compressors_on_large_cuda_messages_equal_the_cpu(spec: str) -> None:
    # Over 2^18 elements: a CPU compressor works in cache-sized chunks, a CUDA one in a
    # single span, which needs a work buffer of the whole message; bf16 on CUDA adds its
    # payload without widening it first.
    from gossip_comm import MessageSpec, make_compressor

    n = (1 << 20) + 1000  # topk pre-selects candidates from 2^20 elements on
    layout = (torch.Size([1024, 1024]), torch.Size([1000]))
    rng = np.random.default_rng(2)
    value = torch.from_numpy(rng.standard_normal(n))
    public = torch.from_numpy(rng.standard_normal(n) * 0.1)
    comp = make_compressor(spec)
    results = []
    for device in ("cpu", "cuda"):
        ms = MessageSpec(numel=n, dtype=torch.float64, device=torch.device(device), layout=layout)
        pub = public.to(device)
        payload = comp.payload_like(ms)
        comp.encode_difference(
            ms, value.to(device), pub, payload, comp.init_state(ms, src=0, dst=1)
        )
        into = torch.zeros(n, dtype=torch.float64, device=device)
        comp.add_decoded(ms, payload, into)
        results.append((pub.cpu(), into.cpu()))
    (pub_cpu, into_cpu), (pub_gpu, into_gpu) = results
    torch.testing.assert_close(pub_gpu, pub_cpu, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(into_gpu, into_cpu, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pub_cpu - public, into_cpu, rtol=1e-9, atol=1e-9)
