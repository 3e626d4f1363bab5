"""Accuracy on real data for gossip-nn's options: buffer modes, exact averaging, SlowMo.

scikit-learn's bundled digits (8x8 images), a small CNN with BatchNorm, 4 ranks on gloo,
SGP on the default topology. Two ways to split the training set: ``iid`` (rank r takes
every 4th sample) and ``skewed`` (sorted by label, so each rank sees about 2-3 classes,
where local BatchNorm statistics differ most). Reports test accuracy of

- the network-average model (``average_for_eval``: parameters and buffers averaged), and
- the ranks' own models (each with its own parameters and buffers), averaged over ranks,

as the mean over seeds. It writes ``results/buffers.*`` (the ``buffers=`` modes, which
chose the default) and ``results/gossip_options.*`` (Gossip-PGA, all-reduce warm-up and
SlowMo against plain SGP). Run: ``nox -s bench`` or
``python benchmarks/bench_digits.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from _results import write_results
from gossip_comm.testing import run_distributed
from gossip_nn import SlowMoOptions, make_data_parallel

WORLD = 4
EPOCHS, QUICK_EPOCHS = 12, 2
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
BATCH = 16

BUFFER_CASES: list[tuple[str, dict[str, Any]]] = [
    ("average", {"buffers": "average"}),
    ("local", {"buffers": "local"}),
    ("broadcast", {"buffers": "broadcast"}),
]
OPTION_CASES: list[tuple[str, dict[str, Any]]] = [
    ("SGP", {}),
    ("SGP + Gossip-PGA (every 8)", {"global_average_every": 8}),
    ("SGP + all-reduce warm-up (1 epoch)", {"allreduce_warmup_steps": -1}),
    ("SGP + SlowMo (beta 0.5, every 8)", {"slowmo": SlowMoOptions(beta=0.5, lr=1.0, every=8)}),
]


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def _data(rank: int, n: int, split: str) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X / 16.0, y, test_size=0.2, random_state=0, stratify=y
    )
    if split == "skewed":
        order = y_tr.argsort(kind="stable")
        part = order[rank * len(order) // n : (rank + 1) * len(order) // n]
    else:
        part = list(range(rank, len(y_tr), n))
    as_images = lambda a: torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8)  # noqa: E731
    return as_images(X_tr[part]), torch.tensor(y_tr[part]), as_images(X_te), torch.tensor(y_te)


def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def _train(
    rank: int, n: int, cases: list[tuple[str, dict[str, Any]]], epochs: int, seeds: list[int]
) -> dict[str, Any]:
    import torch.distributed as dist

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for split in ("iid", "skewed"):
        Xs, ys, Xt, yt = _data(rank, n, split)
        steps_per_epoch = len(Xs) // BATCH
        for label, options in cases:
            opts = dict(options)
            if opts.get("allreduce_warmup_steps") == -1:
                opts["allreduce_warmup_steps"] = steps_per_epoch
            for seed in seeds:
                torch.manual_seed(seed)
                net = _net()
                opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
                model = make_data_parallel("sgp", net, opt, **opts)
                gen = torch.Generator().manual_seed(1000 * seed + rank)
                criterion = nn.CrossEntropyLoss()
                for _ in range(epochs):
                    model.train()
                    order = torch.randperm(len(Xs), generator=gen)
                    for i in range(steps_per_epoch):
                        batch = order[i * BATCH : (i + 1) * BATCH]
                        criterion(model(Xs[batch]), ys[batch]).backward()
                        opt.step()
                        opt.zero_grad()
                model.eval()
                own = torch.tensor([_accuracy(model, Xt, yt)])
                dist.all_reduce(own)
                with model.average_for_eval():
                    avg = _accuracy(model, Xt, yt)
                model.close()
                key = f"{split}|{label}"
                out.setdefault(key, []).append((avg, float(own) / n))
    return out


def _summarise(res: dict[str, Any], cases: list[tuple[str, dict[str, Any]]]) -> list[dict]:
    rows = []
    for split in ("iid", "skewed"):
        for label, _ in cases:
            runs = res[f"{split}|{label}"]
            avg, own = [a for a, _ in runs], [o for _, o in runs]
            rows.append(
                {
                    "split": split,
                    "case": label,
                    "average_model_acc": round(statistics.mean(avg), 4),
                    "own_models_acc": round(statistics.mean(own), 4),
                    "average_model_runs": avg,
                    "own_models_runs": own,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _pm(runs: list[float]) -> str:
    """Mean ± sample standard deviation over seeds (just the mean for one seed)."""
    if len(runs) < 2:
        return f"{runs[0]:.3f}"
    return f"{statistics.mean(runs):.3f} ± {statistics.stdev(runs):.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed")
    args = parser.parse_args(argv)
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    seeds = list(QUICK_SEEDS if args.quick else SEEDS)
    meta = {"world_size": WORLD, "epochs": epochs, "seeds": seeds, "batch": BATCH}
    header = ["split", "setting", "network-average model", "ranks' own models (mean)"]
    for name, cases, title in (
        ("buffers", BUFFER_CASES, "BatchNorm buffers under SGP: test accuracy by buffers= mode"),
        ("gossip_options", OPTION_CASES, "Exact averaging and SlowMo against plain SGP"),
    ):
        res = run_distributed(_train, WORLD, (cases, epochs, seeds), timeout=3600)
        rows = _summarise(res[0], cases)
        write_results(
            name,
            {"rows": rows},
            header=header,
            rows=[
                [
                    r["split"],
                    r["case"],
                    _pm(r["average_model_runs"]),
                    _pm(r["own_models_runs"]),
                ]
                for r in rows
            ],
            title=title,
            quick=args.quick,
            notes=(
                f"digits, small CNN with BatchNorm, {WORLD} ranks, SGP, {epochs} epochs, "
                f"batch {BATCH}; mean ± standard deviation over seeds {seeds}. BatchNorm "
                "uses batch statistics in training, so the buffer mode changes only what "
                "evaluation sees."
            ),
            meta=meta,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
