"""What ``check_finite`` costs: one SGP training step with the check and without it (gloo, CPU).

Each rank trains a wide linear model (``--numel`` parameters, 25.6 M by default, as
many as ResNet-50) on a fixed batch with ``make_data_parallel("sgp", ...)``. The
benchmark alternates blocks of steps with ``check_finite=False`` and ``True`` (two
wrappers over two copies of the model, so both see the same work), and reports the
median block of the slowest rank. The check reads every received message once, so its
cost grows with the bytes received and not with the model's compute.

Writes ``benchmarks/results/check_finite.json`` and ``check_finite.md``. Run with
``nox -s bench`` or ``python benchmarks/bench_check_finite.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from _results import write_results
from gossip_comm.testing import run_distributed
from gossip_nn import make_data_parallel

IN = 3072  # a 32 x 32 RGB image, flattened


def _worker(rank: int, n: int, numel: int, reps: int, rounds: int) -> dict[str, list[float]]:
    torch.set_num_threads(1)
    out = max(1, numel // IN)
    x = torch.randn(8, IN, generator=torch.Generator().manual_seed(rank))
    wrapped = {}
    for check in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(IN, out)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        wrapped[check] = (make_data_parallel("sgp", model, opt, check_finite=check), opt)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds + 1):  # the first round warms up (connections, page faults)
        for check, key in ((False, "off"), (True, "on")):
            dp, opt = wrapped[check]
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                opt.zero_grad(set_to_none=True)
                dp(x).square().mean().backward()
                opt.step()
            times[key].append((time.perf_counter() - t0) / reps)
    for dp, _ in wrapped.values():
        dp.close()
    return {k: v[1:] for k, v in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 M parameters, fewer steps")
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args(argv)
    numel = 1_000_000 if args.quick else 25_600_000
    reps, rounds = (2, 2) if args.quick else (3, 4)
    per_rank = run_distributed(_worker, args.world_size, (numel, reps, rounds), timeout=1800)
    step = {
        k: statistics.median(max(r[k][i] for r in per_rank) for i in range(rounds))
        for k in ("off", "on")
    }
    params = (numel // IN) * (IN + 1)
    row = {
        "world_size": args.world_size,
        "parameters": params,
        "step_ms_off": round(step["off"] * 1e3, 2),
        "step_ms_on": round(step["on"] * 1e3, 2),
        "extra_ms": round((step["on"] - step["off"]) * 1e3, 2),
        "extra_fraction": round(step["on"] / step["off"] - 1.0, 4),
    }
    print(json.dumps(row), flush=True)
    header = ["ranks", "parameters", "step ms, off", "step ms, check_finite", "extra ms", "extra"]
    cells = [row["world_size"], f"{params:,}", row["step_ms_off"], row["step_ms_on"],
             row["extra_ms"], f"{100 * row['extra_fraction']:.1f}%"]  # fmt: skip
    write_results(
        "check_finite",
        {"rows": [row]},
        header=header,
        rows=[cells],
        quick=args.quick,
        title="What check_finite costs: one SGP step of a wide linear model, gloo on CPU, "
        "one thread per rank (median block, slowest rank)",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
