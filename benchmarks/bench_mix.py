"""Benchmark PushSum.mix against the physical floor of the same communication (gloo, CPU).

Floor: a raw ``batch_isend_irecv`` of the same bytes to the same peers, plus the one
unavoidable arithmetic pass that mixes the received buffer into the local one
(``torch.lerp`` into a preallocated output). Target: ``floor_time / mix_time >= 0.95``.

Writes ``benchmarks/results/mix.json`` and ``mix.md``. Run with ``nox -s bench`` or
``python benchmarks/bench_mix.py [--quick] [--world-sizes 2 4 8]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from _results import write_results
from gossip_comm import PushSum
from gossip_comm.testing import run_distributed
from gossip_topology import make_topology

TOPOLOGY = "npeer-dynamic-directed-exponential"


def _floor_step(
    x: torch.Tensor, recv: torch.Tensor, out: torch.Tensor | None, topo: Any, step: int, rank: int
) -> None:
    ops = [dist.P2POp(dist.isend, x, p) for p in topo.out_peers(rank, step)]
    ops += [dist.P2POp(dist.irecv, recv, q) for q in topo.in_peers(rank, step)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    if out is None:
        x.lerp_(recv, 0.5)  # in place, as PushSum.mix does
    else:
        torch.lerp(x, recv, 0.5, out=out)


def _worker(rank: int, n: int, numel: int, reps: int, rounds: int) -> dict[str, list[float]]:
    torch.set_num_threads(1)
    topo = make_topology(TOPOLOGY, n)
    x = torch.randn(numel)
    recv, out = torch.empty_like(x), torch.empty_like(x)
    ps = PushSum(topo, x)
    assert not ps.sends_weight
    w = 1.0
    times: dict[str, list[float]] = {"mix": [], "floor": [], "floor_inplace": []}
    for _ in range(2):  # warm-up: connections, page faults
        x, w = ps.mix(x, w)
        _floor_step(x, recv, out, topo, ps.step, rank)
    for _ in range(rounds):  # interleave blocks so drift hits both sides alike
        for mode in times:
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                if mode == "mix":
                    x, w = ps.mix(x, w)
                else:
                    target = out if mode == "floor" else None
                    _floor_step(x, recv, target, topo, ps.step, rank)
            times[mode].append((time.perf_counter() - t0) / reps)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 M floats, 3 blocks of 3 steps, world sizes 2 and 4 unless given",
    )
    parser.add_argument("--world-sizes", type=int, nargs="+", help="default: 2 4 8")
    args = parser.parse_args(argv)
    world_sizes = args.world_sizes or ([2, 4] if args.quick else [2, 4, 8])
    numel = 1_000_000 if args.quick else 25_600_000
    reps, rounds = (3, 3) if args.quick else (5, 4)
    rows = []
    for n in world_sizes:
        per_rank = run_distributed(_worker, n, (numel, reps, rounds), timeout=1800)
        # a step lasts as long as its slowest rank; take the median block over rounds
        mix = statistics.median(max(r["mix"][i] for r in per_rank) for i in range(rounds))
        floor = statistics.median(max(r["floor"][i] for r in per_rank) for i in range(rounds))
        inplace = statistics.median(
            max(r["floor_inplace"][i] for r in per_rank) for i in range(rounds)
        )
        nbytes = numel * 4  # one out-peer per step
        row = {
            "world_size": n,
            "numel": numel,
            "mix_ms": round(mix * 1e3, 2),
            "floor_ms": round(floor * 1e3, 2),
            "mix_GBps": round(nbytes / mix / 1e9, 3),
            "floor_GBps": round(nbytes / floor / 1e9, 3),
            "ratio": round(floor / mix, 3),
            "floor_inplace_ms": round(inplace * 1e3, 2),
            "ratio_inplace": round(inplace / mix, 3),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_results(
        "mix",
        {"rows": rows},
        header=[
            "world size",
            "floats",
            "mix ms",
            "floor ms",
            "mix GB/s",
            "floor GB/s",
            "floor/mix",
            "in-place floor ms",
            "in-place floor/mix",
        ],
        rows=[
            [
                r["world_size"],
                f"{r['numel']:,}",
                r["mix_ms"],
                r["floor_ms"],
                r["mix_GBps"],
                r["floor_GBps"],
                r["ratio"],
                r["floor_inplace_ms"],
                r["ratio_inplace"],
            ]
            for r in rows
        ],
        title="PushSum.mix against the communication floor (gloo, CPU)",
        quick=args.quick,
        meta={"backend": "gloo", "topology": TOPOLOGY},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
