"""Per-iteration time and digits accuracy of the training algorithms (gloo, loopback).

Time: a 4-rank run of an MLP (about 1 M parameters, so communication matters) for each
algorithm, and a compute-only run (same loop, no wrapper). Accuracy: scikit-learn's digits
with a small MLP, 4 ranks, averaged over 3 seeds. Writes ``benchmarks/results/nn.json`` and
``nn.md``. Run with ``nox -s bench`` or ``python benchmarks/bench_nn.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gossip_comm.testing import run_distributed
from gossip_nn import ALGORITHMS, make_data_parallel

RESULTS = Path(__file__).parent / "results"


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
        model = net if algorithm == "compute-only" else make_data_parallel(algorithm, net, opt)
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
        if hasattr(model, "close"):
            model.close()
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
        if hasattr(model, "close"):
            model.close()
        model.eval()
        with torch.no_grad(), model.average_for_eval():
            acc[algorithm] = float((model(Xt).argmax(1) == yt).float().mean())
    return acc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 4
    steps, width, epochs = (10, 256, 5) if args.quick else (40, 1024, 20)
    per_rank = run_distributed(_timing, n, (steps, width), timeout=1800)
    timing = {a: max(r[a] for r in per_rank) * 1e3 for a in per_rank[0]}
    seeds = [0, 1, 2]
    accs = [run_distributed(_accuracy, n, (s, epochs), timeout=1800)[0] for s in seeds]
    accuracy = {a: statistics.mean(acc[a] for acc in accs) for a in ALGORITHMS}
    params = 256 * width + width * width + width * 10 + 2 * width + 10
    data: dict[str, Any] = {
        "world_size": n,
        "parameters": params,
        "ms_per_step": timing,
        "digits_accuracy_mean_of_3_seeds": accuracy,
        "per_seed": accs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "nn.json").write_text(json.dumps(data, indent=2))
    lines = [
        f"| algorithm | ms/step ({params:,} params, {n} ranks) | digits accuracy (3 seeds) |",
        "|---|---|---|",
    ]
    for a in timing:
        acc = f"{100 * accuracy[a]:.2f}%" if a in accuracy else "-"
        lines.append(f"| {a} | {timing[a]:.2f} | {acc} |")
    (RESULTS / "nn.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
