"""The digits benchmark's compression sections: compressed gossip against DDP's hooks,
and the consensus steps of the configurations that miss the accuracy target."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from _digits import (
    BATCH,
    COMPRESSIONS,
    DDP_BUCKET_MB,
    EPOCHS,
    GOSSIP_ALGORITHMS,
    POWERSGD_RANK,
    POWERSGD_START,
    TARGET_POINTS,
    WORLD,
    Case,
    mean_pm,
    paired_delta,
    run_values,
    train,
)
from _results import write_results
from gossip_comm import make_compressor
from gossip_comm.testing import run_distributed

POWERSGD_LABEL = f"DDP + PowerSGD r{POWERSGD_RANK}"


def _compression_cases() -> list[Case]:
    """AR-SGD and DDP references, then each gossip algorithm with each compressor."""
    cases = [
        Case(label="ar", algorithm="ar"),
        Case(label="DDP", algorithm="ddp"),
        Case(label=POWERSGD_LABEL, algorithm="ddp", hook="powersgd", baseline="DDP"),
        Case(label="DDP + bf16 hook", algorithm="ddp", hook="bf16", baseline="DDP"),
    ]
    for algorithm in GOSSIP_ALGORITHMS:
        for spec in COMPRESSIONS:
            cases.append(
                Case(
                    label=f"{algorithm} {spec or 'none'}",
                    algorithm=algorithm,
                    options={"compression": spec},
                    baseline=None if spec is None else f"{algorithm} none",
                )
            )
    return cases


COMPRESSION_CASES = _compression_cases()


def _compression_rows(res: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per case: accuracies, traffic, differences to uncompressed and PowerSGD."""
    runs_of = {c.label: res[f"iid|{c.label}"] for c in COMPRESSION_CASES}
    rows = []
    for case in COMPRESSION_CASES:
        runs = runs_of[case.label]
        row: dict[str, Any] = {
            "case": case.label,
            "algorithm": "DDP" if case.algorithm == "ddp" else case.algorithm,
            "compression": case.compression,
            "average_model_acc": round(statistics.mean(run_values(runs, "average")), 4),
            "own_models_acc": round(statistics.mean(run_values(runs, "own")), 4),
            "average_model_runs": run_values(runs, "average"),
            "own_models_runs": run_values(runs, "own"),
        }
        for key in ("bytes_sent", "allreduce_payload"):
            values = run_values(runs, key)
            row[f"{key}_per_iter"] = None if values[0] is None else statistics.mean(values)
        for name, ref in (("uncompressed", case.baseline), ("powersgd", POWERSGD_LABEL)):
            deltas = None if ref in (None, case.label) else paired_delta(runs, runs_of[ref])
            row[f"delta_vs_{name}_points_runs"] = deltas
            row[f"delta_vs_{name}_points"] = None if deltas is None else statistics.mean(deltas)
            row[f"within_{TARGET_POINTS}_of_{name}"] = (
                None if deltas is None else statistics.mean(deltas) >= -TARGET_POINTS
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _compression_cells(row: dict[str, Any]) -> list[str]:
    def delta(name: str) -> str:
        runs = row[f"delta_vs_{name}_points_runs"]
        return "—" if runs is None else mean_pm(runs, digits=2, sign="+")

    def within(name: str) -> str:
        value = row[f"within_{TARGET_POINTS}_of_{name}"]
        return "—" if value is None else ("yes" if value else "no")

    if row["bytes_sent_per_iter"] is not None:
        traffic = f"{row['bytes_sent_per_iter']:,.0f}"
    else:
        traffic = f"({row['allreduce_payload_per_iter']:,.0f} all-reduced)"
    return [
        row["algorithm"],
        row["compression"],
        mean_pm(row["average_model_runs"], scale=100.0, digits=2),
        mean_pm(row["own_models_runs"], scale=100.0, digits=2),
        delta("uncompressed"),
        within("uncompressed"),
        delta("powersgd"),
        within("powersgd"),
        traffic,
    ]


def bench_compression(quick: bool, epochs: int, seeds: list[int]) -> None:
    """The ``compression`` section: compressed gossip against DDP's compression hooks."""
    start = time.perf_counter()
    res = run_distributed(
        train, WORLD, (COMPRESSION_CASES, ("iid",), epochs, seeds), timeout=4 * 3600
    )
    wall = time.perf_counter() - start
    rows = _compression_rows(res[0])
    steps = {spec: make_compressor(spec).default_consensus_step for spec in COMPRESSIONS if spec}
    reduced = "" if quick or epochs == EPOCHS else f" (reduced from {EPOCHS} to fit the time)"
    write_results(
        "compression_digits",
        {"rows": rows},
        header=[
            "algorithm",
            "compression",
            "network-average top-1 (%)",
            "ranks' own top-1 (%, mean)",
            "Δ vs uncompressed (points)",
            f"within {TARGET_POINTS} of uncompressed",
            f"Δ vs DDP + PowerSGD r{POWERSGD_RANK} (points)",
            f"within {TARGET_POINTS} of PowerSGD",
            "bytes sent / rank / iter",
        ],
        rows=[_compression_cells(r) for r in rows],
        title="Compressed gossip on digits: accuracy against uncompressed and DDP + PowerSGD",
        quick=quick,
        notes=(
            f"digits, small CNN with BatchNorm, {WORLD} ranks on gloo, iid split, "
            f"{epochs} epochs{reduced}, batch {BATCH}, SGD lr 0.05 momentum 0.9; mean ± "
            f"standard deviation over seeds {seeds}. Compression at the default consensus "
            f"steps ({', '.join(f'{s}: {g:g}' for s, g in steps.items())}). "
            "Δ is the network-average model's top-1 minus that of the same algorithm "
            "uncompressed (for the DDP hooks: plain DDP), or of DDP + PowerSGD, per seed "
            f"(same initial model and batches), mean ± spread. 'within {TARGET_POINTS}' "
            f"is yes when the mean Δ is at least -{TARGET_POINTS} (no more than "
            f"{TARGET_POINTS} points below). DDP: torch's DistributedDataParallel, one "
            f"bucket (bucket_cap_mb={DDP_BUCKET_MB:g}); PowerSGD hook with "
            f"matrix_approximation_rank={POWERSGD_RANK}, start_powerSGD_iter="
            f"{POWERSGD_START} (vanilla all-reduce before; torch requires at least 2), "
            "error feedback and warm start on. Bytes: gossip's measured bytes_sent per "
            "iteration, mean over ranks (payload and push-sum weights; BatchNorm buffers "
            "travel with the parameters); in parentheses, the bytes entering the gradient "
            "all-reduces per iteration (PowerSGD's averaged over the run, its first "
            f"{POWERSGD_START} iterations uncompressed): a ring all-reduce sends about "
            f"2(n-1)/n = {2 * (WORLD - 1) / WORLD:g} times that per rank. The test set "
            "has 360 images: one image is 0.28 points."
        ),
        meta={
            "world_size": WORLD,
            "epochs": epochs,
            "epochs_default": EPOCHS,
            "seeds": seeds,
            "batch": BATCH,
            "split": "iid",
            "consensus_steps": steps,
            "powersgd": {
                "matrix_approximation_rank": POWERSGD_RANK,
                "start_powerSGD_iter": POWERSGD_START,
                "bucket_cap_mb": DDP_BUCKET_MB,
            },
            "target_points": TARGET_POINTS,
            "wall_s": round(wall, 1),
        },
    )


#: (algorithm, compressor, consensus steps) the ``consensus_steps`` section sweeps: the
#: configurations that miss the 0.5-point target at their default step (the coarse
#: compressors, with every algorithm), at the default and at larger steps.
STEP_SWEEP: tuple[tuple[str, str, tuple[float, ...]], ...] = tuple(
    (algorithm, spec, steps)
    for algorithm in GOSSIP_ALGORITHMS
    for spec, steps in (("topk:0.01", (0.02, 0.05, 0.1)), ("lowrank:2", (0.05, 0.1, 0.2)))
)


def _step_cases() -> list[Case]:
    """Each swept configuration at each step, after its algorithm uncompressed."""
    cases = [Case(label=f"{a} none", algorithm=a) for a in GOSSIP_ALGORITHMS]
    for algorithm, spec, steps in STEP_SWEEP:
        for gamma in steps:
            cases.append(
                Case(
                    label=f"{algorithm} {spec} {gamma:g}",
                    algorithm=algorithm,
                    options={"compression": spec, "consensus_step": gamma},
                    baseline=f"{algorithm} none",
                )
            )
    return cases


def bench_consensus_steps(quick: bool, epochs: int, seeds: list[int]) -> None:
    """The ``consensus_steps`` section: does a larger consensus step close the gap?"""
    cases = _step_cases()
    start = time.perf_counter()
    res = run_distributed(train, WORLD, (cases, ("iid",), epochs, seeds), timeout=4 * 3600)
    wall = time.perf_counter() - start
    runs_of = {c.label: res[0][f"iid|{c.label}"] for c in cases}
    rows = []
    for case in cases:
        if case.baseline is None:
            continue
        runs = runs_of[case.label]
        deltas = paired_delta(runs, runs_of[case.baseline])
        rows.append(
            {
                "algorithm": case.algorithm,
                "compression": case.compression,
                "consensus_step": case.options["consensus_step"],
                "default_step": make_compressor(case.compression).default_consensus_step,
                "average_model_runs": run_values(runs, "average"),
                "own_models_runs": run_values(runs, "own"),
                "uncompressed_runs": run_values(runs_of[case.baseline], "average"),
                "delta_points_runs": deltas,
                f"within_{TARGET_POINTS}": statistics.mean(deltas) >= -TARGET_POINTS,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    write_results(
        "compression_digits_steps",
        {"rows": rows},
        header=[
            "algorithm",
            "compression",
            "consensus step",
            "network-average top-1 (%)",
            "ranks' own top-1 (%, mean)",
            "uncompressed top-1 (%)",
            "Δ vs uncompressed (points)",
            f"within {TARGET_POINTS}",
        ],
        rows=[
            [
                r["algorithm"],
                r["compression"],
                f"{r['consensus_step']:g}"
                + (" (default)" if r["consensus_step"] == r["default_step"] else ""),
                mean_pm(r["average_model_runs"], scale=100.0, digits=2),
                mean_pm(r["own_models_runs"], scale=100.0, digits=2),
                mean_pm(r["uncompressed_runs"], scale=100.0, digits=2),
                mean_pm(r["delta_points_runs"], digits=2, sign="+"),
                "yes" if r[f"within_{TARGET_POINTS}"] else "no",
            ]
            for r in rows
        ],
        title="Compressed gossip on digits: the consensus step of the configurations that "
        "miss the target",
        quick=quick,
        notes=(
            f"Same setting as compression_digits ({WORLD} ranks, iid split, {epochs} "
            f"epochs, batch {BATCH}, seeds {seeds}), with the consensus step swept for "
            "topk:0.01 and lowrank:2 with every gossip algorithm. Δ is the "
            "network-average top-1 minus that of the same algorithm uncompressed in this "
            "run, per seed, mean ± spread. AD-PSGD is asynchronous: its runs, the "
            "uncompressed one included, differ from run to run with the same seed."
        ),
        meta={
            "world_size": WORLD,
            "epochs": epochs,
            "seeds": seeds,
            "batch": BATCH,
            "sweep": [list(x) for x in STEP_SWEEP],
            "target_points": TARGET_POINTS,
            "wall_s": round(wall, 1),
        },
    )
