"""A straggler: one of 4 ranks computes twice as slowly. Who waits for it?

Each step sleeps 20 ms to stand for compute (40 ms on rank 3). Reports the mean step
time of the three fast ranks for AR-SGD, SGP and AD-PSGD, with and without the straggler.
Writes ``benchmarks/results/straggler.json`` and ``straggler.md``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from gossip_comm.testing import run_distributed
from gossip_nn import make_data_parallel

RESULTS = Path(__file__).parent / "results"
STEPS = 40


def _run(rank: int, n: int, algorithm: str, slow: bool) -> float:
    torch.manual_seed(0)
    net = torch.nn.Linear(64, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    dp = make_data_parallel(algorithm, net, opt)
    x, y = torch.randn(16, 64), torch.randn(16, 1)
    compute = 0.04 if (slow and rank == 3) else 0.02
    t0 = time.perf_counter()
    for _ in range(STEPS):
        torch.nn.functional.mse_loss(dp(x), y).backward()
        time.sleep(compute)
        opt.step()
        opt.zero_grad()
    elapsed = (time.perf_counter() - t0) / STEPS
    if hasattr(dp, "close"):
        dp.close()
    return elapsed


def main() -> int:
    rows = []
    for algorithm in ("ar", "sgp", "adpsgd"):
        base = run_distributed(_run, 4, (algorithm, False))
        slow = run_distributed(_run, 4, (algorithm, True))
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
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "straggler.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| algorithm | fast ranks, no straggler (ms/step) | fast ranks, with straggler "
        "| straggler | slowdown |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['algorithm']} | {r['fast_ranks_ms_no_straggler']} | "
        f"{r['fast_ranks_ms_with_straggler']} | {r['straggler_ms']} | {r['slowdown']} |"
        for r in rows
    ]
    (RESULTS / "straggler.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
