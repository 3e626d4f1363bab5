"""A straggler: one of 4 ranks computes twice as slowly. Who waits for it?

Each step sleeps 20 ms to stand for compute (40 ms on rank 3). Reports the mean step
time of the three fast ranks for AR-SGD, SGP and AD-PSGD, with and without the straggler.
Writes ``benchmarks/results/straggler.json`` and ``straggler.md``. Run with
``nox -s bench`` or ``python benchmarks/bench_straggler.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

import torch

from _results import write_results
from gossip_comm.testing import run_distributed
from gossip_nn import make_data_parallel

STEPS = 40
QUICK_STEPS = 10
ALGORITHMS = ("ar", "sgp", "adpsgd")


def _run(rank: int, n: int, algorithm: str, slow: bool, steps: int) -> float:
    torch.manual_seed(0)
    net = torch.nn.Linear(64, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    dp = make_data_parallel(algorithm, net, opt)
    x, y = torch.randn(16, 64), torch.randn(16, 1)
    compute = 0.04 if (slow and rank == 3) else 0.02
    t0 = time.perf_counter()
    for _ in range(steps):
        torch.nn.functional.mse_loss(dp(x), y).backward()
        time.sleep(compute)
        opt.step()
        opt.zero_grad()
    elapsed = (time.perf_counter() - t0) / steps
    dp.close()
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_STEPS} steps per run instead of {STEPS}"
    )
    args = parser.parse_args(argv)
    steps = QUICK_STEPS if args.quick else STEPS
    rows = []
    for algorithm in ALGORITHMS:
        base = run_distributed(_run, 4, (algorithm, False, steps))
        slow = run_distributed(_run, 4, (algorithm, True, steps))
        b, s = statistics.mean(base[:3]) * 1e3, statistics.mean(slow[:3]) * 1e3
        rows.append(
            {
                "algorithm": algorithm,
                "fast_ranks_ms_no_straggler": round(b, 1),
                "fast_ranks_ms_with_straggler": round(s, 1),
                "straggler_ms": round(slow[3] * 1e3, 1),
                "slowdown": round(s / b, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    write_results(
        "straggler",
        {"rows": rows},
        header=[
            "algorithm",
            "fast ranks, no straggler (ms/step)",
            "fast ranks, with straggler",
            "straggler",
            "slowdown",
        ],
        rows=[
            [
                r["algorithm"],
                r["fast_ranks_ms_no_straggler"],
                r["fast_ranks_ms_with_straggler"],
                r["straggler_ms"],
                r["slowdown"],
            ]
            for r in rows
        ],
        title="A straggler: one of 4 ranks computes twice as slowly",
        quick=args.quick,
        meta={"world_size": 4, "steps": steps},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
