"""Benchmark the push-sum simulator: n = 4096 nodes, d = 10^4, 100 steps (target < 10 s).

Writes ``benchmarks/results/simulator.json`` and ``simulator.md``. Run with
``nox -s bench`` or ``python benchmarks/bench_simulator.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np

from _results import write_results
from gossip_topology import make_topology, simulate_push_sum

TARGET_S = 10.0
CASES = [
    ("npeer-dynamic-directed-exponential", 1),
    ("npeer-dynamic-directed-exponential", 2),
    ("dynamic-directed-exponential", 1),
    ("dynamic-bipartite-exponential", 1),
    ("one-peer-exponential", 1),
    ("torus-2d", 1),
    ("star", 1),
]


def run(name: str, n: int, d: int, steps: int, k: int) -> dict[str, object]:
    topo = make_topology(name, n, k)
    x0 = np.random.default_rng(0).normal(size=(n, d))
    t0 = time.perf_counter()
    trace = simulate_push_sum(topo, x0, steps, record="last")
    elapsed = time.perf_counter() - t0
    mass_err = float(np.abs(trace.numerators.sum(0) - x0.sum(0)).max() / np.abs(x0.sum(0)).max())
    return {
        "topology": name,
        "n": n,
        "d": d,
        "steps": steps,
        "peers_per_itr": k,
        "seconds": round(elapsed, 3),
        "relative_mass_error": mass_err,
        "meets_target": elapsed < TARGET_S,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="n=512, d=1000: a smoke run")
    args = parser.parse_args(argv)
    n, d = (512, 1000) if args.quick else (4096, 10_000)
    rows = []
    for name, k in CASES:
        row = run(name, n, d, 100, k)
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_results(
        "simulator",
        {"rows": rows},
        header=["topology", "k", "n", "d", "steps", "seconds", f"< {TARGET_S:g} s"],
        rows=[
            [
                r["topology"],
                r["peers_per_itr"],
                r["n"],
                r["d"],
                r["steps"],
                r["seconds"],
                "yes" if r["meets_target"] else "NO",
            ]
            for r in rows
        ],
        title="Push-sum simulator",
        quick=args.quick,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
