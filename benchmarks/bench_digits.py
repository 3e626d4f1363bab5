"""Accuracy on real data for gossip-nn's options: buffer modes, exact averaging, SlowMo,
compressed gossip.

scikit-learn's bundled digits (8x8 images), a small CNN with BatchNorm, 4 ranks on gloo.
Two ways to split the training set: ``iid`` (rank r takes every 4th sample) and
``skewed`` (sorted by label, so each rank sees about 2-3 classes, where local BatchNorm
statistics differ most). Reports test accuracy of

- the network-average model (``average_for_eval``: parameters and buffers averaged), and
- the ranks' own models (each with its own parameters and buffers), averaged over ranks,

as the mean over seeds. Four sections, each its own results file:

- ``buffers``: the ``buffers=`` modes under SGP, which chose the default
  (``results/buffers.*``);
- ``options``: Gossip-PGA, all-reduce warm-up and SlowMo against plain SGP
  (``results/gossip_options.*``);
- ``consensus_steps``: the compressed configurations that miss the 0.5-point target
  (``topk:0.01`` and ``lowrank:2``, every algorithm) at larger consensus steps
  (``results/compression_digits_steps.*``; the compression section's 10 seeds).
- ``compression``: SGP, OSGP, D-PSGD and AD-PSGD with ``compression=`` none, ``int8``,
  ``topk:0.01`` and ``lowrank:2`` at the default consensus steps, against AR-SGD, torch
  DDP, DDP with the PowerSGD hook (rank 2) and DDP with the bf16 hook, with the bytes
  each rank sends per iteration (``results/compression_digits.*``; iid split only; 10
  seeds, as the differences it measures are as small as 3 seeds' noise).

The training machinery (data, model, DDP with hooks, one run per case) is in
``_digits.py``, the two compression sections in ``_digits_compression.py``.

Run: ``nox -s bench`` or ``python benchmarks/bench_digits.py [--quick]
[--only {buffers,options,compression,consensus_steps}]`` from any directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from typing import Any

from _digits import (
    BATCH,
    COMPRESSION_EPOCHS,
    COMPRESSION_SEEDS,
    EPOCHS,
    QUICK_EPOCHS,
    QUICK_SEEDS,
    SEEDS,
    SPLITS,
    WORLD,
    Case,
    mean_pm,
    run_values,
    train,
)
from _digits_compression import bench_compression, bench_consensus_steps
from _results import write_results
from gossip_comm.testing import run_distributed
from gossip_nn import SlowMoOptions

BUFFER_CASES = [
    Case(label="average", options={"buffers": "average"}),
    Case(label="local", options={"buffers": "local"}),
    Case(label="broadcast", options={"buffers": "broadcast"}),
]
OPTION_CASES = [
    Case(label="SGP"),
    Case(label="SGP + Gossip-PGA (every 8)", options={"global_average_every": 8}),
    Case(label="SGP + all-reduce warm-up (1 epoch)", options={"allreduce_warmup_steps": -1}),
    Case(
        label="SGP + SlowMo (beta 0.5, every 8)",
        options={"slowmo": SlowMoOptions(beta=0.5, lr=1.0, every=8)},
    ),
]


def _summarise(
    res: dict[str, list[dict[str, Any]]], cases: list[Case], splits: Sequence[str]
) -> list[dict]:
    rows = []
    for split in splits:
        for case in cases:
            runs = res[f"{split}|{case.label}"]
            avg, own = run_values(runs, "average"), run_values(runs, "own")
            rows.append(
                {
                    "split": split,
                    "case": case.label,
                    "average_model_acc": round(statistics.mean(avg), 4),
                    "own_models_acc": round(statistics.mean(own), 4),
                    "average_model_runs": avg,
                    "own_models_runs": own,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _bench_sgp_options(name: str, quick: bool, epochs: int, seeds: list[int]) -> None:
    """The ``buffers`` and ``options`` sections: SGP settings on both splits."""
    stem, cases, title = {
        "buffers": (
            "buffers",
            BUFFER_CASES,
            "BatchNorm buffers under SGP: test accuracy by buffers= mode",
        ),
        "options": (
            "gossip_options",
            OPTION_CASES,
            "Exact averaging and SlowMo against plain SGP",
        ),
    }[name]
    res = run_distributed(train, WORLD, (cases, SPLITS, epochs, seeds), timeout=3600)
    rows = _summarise(res[0], cases, SPLITS)
    write_results(
        stem,
        {"rows": rows},
        header=["split", "setting", "network-average model", "ranks' own models (mean)"],
        rows=[
            [r["split"], r["case"], mean_pm(r["average_model_runs"]), mean_pm(r["own_models_runs"])]
            for r in rows
        ],
        title=title,
        quick=quick,
        notes=(
            f"digits, small CNN with BatchNorm, {WORLD} ranks, SGP, {epochs} epochs, "
            f"batch {BATCH}; mean ± standard deviation over seeds {seeds}. BatchNorm "
            "uses batch statistics in training, so the buffer mode changes only what "
            "evaluation sees."
        ),
        meta={"world_size": WORLD, "epochs": epochs, "seeds": seeds, "batch": BATCH},
    )


SECTIONS = ("buffers", "options", "compression", "consensus_steps")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed")
    parser.add_argument(
        "--only", choices=SECTIONS, default=None, help="run one section (default: all)"
    )
    args = parser.parse_args(argv)
    seeds = list(QUICK_SEEDS if args.quick else SEEDS)
    for name in SECTIONS if args.only is None else (args.only,):
        if name == "compression":
            bench_compression(
                args.quick,
                QUICK_EPOCHS if args.quick else COMPRESSION_EPOCHS,
                list(QUICK_SEEDS if args.quick else COMPRESSION_SEEDS),
            )
        elif name == "consensus_steps":
            bench_consensus_steps(
                args.quick,
                QUICK_EPOCHS if args.quick else COMPRESSION_EPOCHS,
                list(QUICK_SEEDS if args.quick else COMPRESSION_SEEDS),
            )
        else:
            _bench_sgp_options(name, args.quick, QUICK_EPOCHS if args.quick else EPOCHS, seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
