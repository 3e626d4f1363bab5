"""Per-iteration time and digits accuracy of the training algorithms (gloo, loopback).

Time: a 4-rank run of an MLP (about 1 M parameters, so communication matters) for each
algorithm, and a compute-only run (same loop, no wrapper). Accuracy: scikit-learn's digits
with a small MLP, 4 ranks, averaged over 3 seeds. Writes ``benchmarks/results/nn.json`` and
``nn.md``. Run with ``nox -s bench`` or ``python benchmarks/bench_nn.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from _results import write_results
from gossip_comm.testing import run_distributed
from gossip_nn import ALGORITHMS, make_data_parallel

SEEDS = (0, 1, 2)


def _timing(rank: int, n: int, steps: int, width: int) -> dict[str, float]:
    torch.set_num_threads(1)
    out = {}
    for algorithm in ("compute-only", *ALGORITHMS):
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Linear(256, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 10),
        )
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        dp = None if algorithm == "compute-only" else make_data_parallel(algorithm, net, opt)
        model = net if dp is None else dp
        x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
        criterion = nn.CrossEntropyLoss()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            criterion(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        out[algorithm] = statistics.median(times[2:])
        if dp is not None:
            dp.close()
    return out


def _accuracy(rank: int, n: int, seed: int, epochs: int) -> dict[str, float]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X / 16.0, y, test_size=0.2, random_state=seed, stratify=y
    )
    Xs, ys = torch.tensor(X_tr[rank::n], dtype=torch.float32), torch.tensor(y_tr[rank::n])
    Xt, yt = torch.tensor(X_te, dtype=torch.float32), torch.tensor(y_te)
    acc = {}
    for algorithm in ALGORITHMS:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        model = make_data_parallel(algorithm, net, opt)
        gen = torch.Generator().manual_seed(1000 * seed + rank)
        for _ in range(epochs):
            order = torch.randperm(len(Xs), generator=gen)
            for i in range(0, len(Xs) - 31, 32):
                b = order[i : i + 32]
                nn.functional.cross_entropy(model(Xs[b]), ys[b]).backward()
                opt.step()
                opt.zero_grad()
        model.close()
        model.eval()
        with torch.no_grad(), model.average_for_eval():
            acc[algorithm] = float((model(Xt).argmax(1) == yt).float().mean())
    return acc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="width 256 (about 0.33 M parameters), 10 timed steps, 5 digits epochs",
    )
    args = parser.parse_args(argv)
    n = 4
    steps, width, epochs = (10, 256, 5) if args.quick else (40, 1024, 20)
    per_rank = run_distributed(_timing, n, (steps, width), timeout=1800)
    timing = {a: max(r[a] for r in per_rank) * 1e3 for a in per_rank[0]}
    accs = [run_distributed(_accuracy, n, (s, epochs), timeout=1800)[0] for s in SEEDS]
    accuracy = {a: statistics.mean(acc[a] for acc in accs) for a in ALGORITHMS}
    params = 256 * width + width * width + width * 10 + 2 * width + 10
    data: dict[str, Any] = {
        "world_size": n,
        "parameters": params,
        "ms_per_step": timing,
        "digits_accuracy_mean_of_3_seeds": accuracy,
        "per_seed": accs,
    }
    write_results(
        "nn",
        data,
        header=[
            "algorithm",
            f"ms/step ({params:,} params, {n} ranks)",
            f"digits accuracy ({len(SEEDS)} seeds)",
        ],
        rows=[
            [a, f"{timing[a]:.2f}", f"{100 * accuracy[a]:.2f}%" if a in accuracy else "-"]
            for a in timing
        ],
        title="Training algorithms: step time and digits accuracy (gloo, loopback)",
        quick=args.quick,
        meta={"backend": "gloo"},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
