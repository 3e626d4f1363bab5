"""Benchmark the push-sum simulator: n = 4096 nodes, d = 10^4, 100 steps (target < 10 s).

Writes ``benchmarks/results/simulator.json`` and ``simulator.md``. Run with
``nox -s bench`` or ``python benchmarks/bench_simulator.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from gossip_topology import make_topology, simulate_push_sum

RESULTS = Path(__file__).parent / "results"
TARGET_S = 10.0


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="n=512, d=1000: a smoke run")
    args = parser.parse_args()
    n, d = (512, 1000) if args.quick else (4096, 10_000)
    cases = [
        ("npeer-dynamic-directed-exponential", 1),
        ("npeer-dynamic-directed-exponential", 2),
        ("dynamic-directed-exponential", 1),
        ("dynamic-bipartite-exponential", 1),
        ("one-peer-exponential", 1),
        ("torus-2d", 1),
        ("star", 1),
    ]
    rows = []
    for name, k in cases:
        row = run(name, n, d, 100, k)
        print(json.dumps(row))
        rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "numpy": np.__version__}
    (RESULTS / "simulator.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["| topology | k | n | d | steps | seconds | < 10 s |", "|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r['topology']} | {r['peers_per_itr']} | {r['n']} | {r['d']} | {r['steps']} "
        f"| {r['seconds']} | {'yes' if r['meets_target'] else 'NO'} |"
        for r in rows
    ]
    (RESULTS / "simulator.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
