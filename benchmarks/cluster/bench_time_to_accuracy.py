"""Time to accuracy on an emulated 4-host cluster at 1 Gbit/s: the SGP paper's headline figure.

Run as root: ``nox -s time_to_accuracy`` or
``python benchmarks/cluster/bench_time_to_accuracy.py``. It builds the cluster
(`emulate.Cluster`), checks the links, and runs `train_accuracy.py` on every host for
each configuration: AR-SGD (DDP), DDP with torch's PowerSGD hook (rank 2), SGP and OSGP
(``synch_freq`` 1), each uncompressed and with ``int8``, ``lowrank:2`` and
``topk:0.01`` compression. Every run trains the same wide MLP on digits for the same
number of epochs from the same initial model and batches (one run per seed, three
seeds by default) and records the network-average model's test accuracy against the
training wall-clock time (the clock stops while it evaluates).

The table gives each configuration's final accuracy, training time, seconds per
iteration, and the epoch and time at which it first reached AR-SGD's final accuracy
minus one point (at an evaluation: every quarter epoch; each seed against its own
AR-SGD run, the median over seeds), or "not reached". Writes
``benchmarks/results/time_to_accuracy.{json,md,png}``; ``--quick`` (2 hosts, 1 epoch,
four configurations, one seed) writes ``time_to_accuracy_quick.*`` instead. After each
run the runs so far are saved to ``time_to_accuracy_partial.json``: ``--resume`` keeps
them (and those of the saved results) and runs only the missing ones, and
``--report-only`` rewrites the table and plot from them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from emulate import Cluster, install_signal_teardown  # noqa: E402

from _results import RESULTS, write_results  # noqa: E402

NAME = "time_to_accuracy"
RATE = "1gbit"
HOSTS, QUICK_HOSTS = 4, 2
EPOCHS, QUICK_EPOCHS = 8.0, 1.0
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
#: The target: AR-SGD's final accuracy minus this many points.
MARGIN_POINTS = 1.0
#: The reference every other configuration is timed against.
REFERENCE = "AR-SGD (DDP)"


@dataclass(frozen=True, kw_only=True)
class Config:
    """One configuration: its label and its `train_accuracy.py` arguments."""

    label: str
    args: tuple[str, ...]
    quick: bool = False
    linestyle: str = "-"


_LINES = {"sgp": "--", "osgp": ":"}


def _gossip(algorithm: str, spec: str | None, *, quick: bool = False) -> Config:
    name = algorithm.upper() if spec is None else f"{algorithm.upper()}, {spec}"
    args = ("--algorithm", algorithm) + (() if spec is None else ("--compression", spec))
    return Config(label=name, args=args, quick=quick, linestyle=_LINES[algorithm])


CONFIGS: list[Config] = [
    Config(label=REFERENCE, args=("--algorithm", "ar"), quick=True),
    Config(
        label="DDP + PowerSGD rank 2",
        args=("--algorithm", "ar", "--ddp-hook", "powersgd", "--powersgd-rank", "2"),
        quick=True,
    ),
    _gossip("sgp", None),
    _gossip("osgp", None, quick=True),
    _gossip("sgp", "int8"),
    _gossip("osgp", "int8"),
    _gossip("sgp", "lowrank:2"),
    _gossip("osgp", "lowrank:2", quick=True),
    _gossip("sgp", "topk:0.01"),
    _gossip("osgp", "topk:0.01"),
]


def run_config(
    cluster: Cluster, config: Config, common: list[str], out: Path, timeout: float
) -> dict[str, Any]:
    """Run `train_accuracy.py` on every host; rank 0's record.

    Rank 0 writes the record after the run's last collective, so a record means every
    rank trained to the end; a rank that fails after that (in teardown) is reported and
    its exit code kept in the record.
    """
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "train_accuracy.py"), *config.args, *common]
    env = {"PYTHONFAULTHANDLER": "1"}  # a Python stack if a rank dies
    codes = cluster.run_all([*cmd, "--out", str(out)], extra_env=env, timeout=timeout)
    if not out.exists():
        raise RuntimeError(f"{config.label}: train_accuracy.py failed, exit codes {codes}")
    if any(codes):
        print(f"[warning] {config.label}: ranks exited with {codes} after the run", flush=True)
    record: dict[str, Any] = json.loads(out.read_text())
    record.update(label=config.label, exit_codes=codes)
    return record


def time_to(curve: list[dict[str, Any]], target: float) -> dict[str, float] | None:
    """The first evaluation at or above ``target`` (its training seconds and epoch)."""
    return next(
        (
            {"s": float(p["train_s"]), "epoch": float(p["epoch"])}
            for p in curve
            if p["accuracy"] >= target
        ),
        None,
    )


def _median(values: list[float | None]) -> float | None:
    """The median, a ``None`` (never reached) counting as later than any time."""
    ordered = sorted(values, key=lambda v: math.inf if v is None else v)
    n = len(ordered)
    middle = ordered[(n - 1) // 2 : n // 2 + 1]
    return None if None in middle else statistics.mean(middle)  # type: ignore[arg-type]


def targets(runs: list[dict[str, Any]]) -> dict[int, float]:
    """Each seed's target: that seed's AR-SGD final accuracy minus `MARGIN_POINTS`."""
    return {
        r["config"]["seed"]: r["curve"][-1]["accuracy"] - MARGIN_POINTS / 100
        for r in runs
        if r["label"] == REFERENCE
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration, over its seeds: means, and median times to the target.

    Each seed is timed against its own AR-SGD run's target (same initial model and batches).
    """
    goal = targets(runs)
    rows = []
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        hits = [
            None
            if r["config"]["seed"] not in goal
            else time_to(r["curve"], goal[r["config"]["seed"]])
            for r in mine
        ]
        seconds = [None if h is None else h["s"] for h in hits]
        epochs = [None if h is None else h["epoch"] for h in hits]
        finals = [r["curve"][-1]["accuracy"] for r in mine]
        rows.append(
            {
                "label": label,
                "seeds": [r["config"]["seed"] for r in mine],
                "final_accuracy": statistics.mean(finals),
                "final_accuracy_runs": finals,
                "train_s": statistics.mean(r["train_s"] for r in mine),
                "s_per_iter": statistics.mean(r["s_per_iter"] for r in mine),
                "s_per_iter_runs": [r["s_per_iter"] for r in mine],
                "mb_per_iter": statistics.mean(r["bytes_per_iter"] for r in mine) / 1e6,
                "bytes_computed": mine[0]["bytes_computed"],
                "time_to_target_s": _median(seconds),
                "time_to_target_s_runs": seconds,
                "epochs_to_target": _median(epochs),
                "epochs_to_target_runs": epochs,
                "reached": sum(h is not None for h in hits),
            }
        )
    return rows


def _cells(row: dict[str, Any], ref_time: float | None) -> list[str]:
    reached = row["time_to_target_s"]
    speedup = "—"
    if reached is not None and ref_time is not None:
        speedup = f"{ref_time / reached:.2f}"
    mb = f"{row['mb_per_iter']:.2f}" + (" (computed)" if row["bytes_computed"] else "")
    n = len(row["seeds"])
    seconds = "not reached" if reached is None else f"{reached:.1f}"
    if 0 < row["reached"] < n:
        seconds += f" ({row['reached']} of {n} seeds)"
    epochs = "—" if row["epochs_to_target"] is None else f"{row['epochs_to_target']:.2f}"
    return [
        row["label"],
        f"{100 * row['final_accuracy']:.2f}",
        f"{row['train_s']:.1f}",
        f"{row['s_per_iter']:.3f}",
        mb,
        epochs,
        seconds,
        speedup,
    ]


def mean_curves(runs: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per configuration, (training seconds, accuracy) at each evaluation, mean over seeds."""
    out = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        curves = [r["curve"] for r in runs if r["label"] == label]
        out[label] = [
            (
                statistics.mean(p["train_s"] for p in points),
                statistics.mean(p["accuracy"] for p in points),
            )
            for points in zip(*curves, strict=True)
        ]
    return out


def plot(
    runs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    target: float | None,
    path: Path,
    title: str,
) -> None:
    """Accuracy against training wall-clock time (left), and the time to the target (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    styles = {c.label: c.linestyle for c in CONFIGS}
    colors = dict(zip([r["label"] for r in rows], plt.get_cmap("tab10").colors * 2, strict=False))
    curves = mean_curves(runs)
    for label, points in curves.items():
        xs = [t for t, _ in points]
        ys = [100 * a for _, a in points]
        style = styles.get(label, "-")
        left.plot(xs, ys, style, color=colors[label], marker=".", ms=3, lw=1.2, label=label)
    finals = [100 * points[-1][1] for points in curves.values()]
    low = min(finals) - 12 if target is None else min(100 * target, min(finals)) - 10
    left.set_ylim(low, min(100.0, max(finals) + 1))
    if target is not None:
        left.axhline(100 * target, color="black", lw=0.8, ls="-.", label="target: AR - 1 point")
    left.set_xlabel("training wall-clock time (s), evaluation excluded")
    left.set_ylabel("test accuracy of the network-average model (%)")
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    left.set_title("accuracy against time")
    ys = range(len(rows))
    times = [r["time_to_target_s"] or 0.0 for r in rows]
    right.barh(ys, times, color=[colors[r["label"]] for r in rows])
    for y, r in zip(ys, rows, strict=True):
        t = r["time_to_target_s"]
        text = "not reached" if t is None else f"{t:.1f} s ({r['s_per_iter']:.3f} s/iter)"
        right.annotate(
            text, (t or 0.0, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7
        )
    right.set_yticks(list(ys), [r["label"] for r in rows], fontsize=8)
    right.invert_yaxis()
    right.set_xlim(0, 1.45 * max([*times, 1.0]))
    right.set_xlabel("seconds to the target (median over seeds)")
    right.set_title("time to AR's final accuracy - 1 point")
    right.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(runs: list[dict[str, Any]], extra: dict[str, Any], quick: bool) -> None:
    """The table, the JSON (every curve) and the plot, over the seeds every configuration ran.

    The runs of a seed that some configuration lacks (an interrupted run) are kept in the
    JSON as ``incomplete_runs`` and left out of the table and plot.
    """
    labels = {r["label"] for r in runs}
    by_seed: dict[int, set[str]] = {}
    for r in runs:
        by_seed.setdefault(r["config"]["seed"], set()).add(r["label"])
    complete = {k for k, have in by_seed.items() if have == labels}
    extra = {**extra, "incomplete_runs": [r for r in runs if r["config"]["seed"] not in complete]}
    runs = [r for r in runs if r["config"]["seed"] in complete]
    rows, goal = summarise(runs), targets(runs)
    sessions = [x for x in extra.get("sessions", []) if "finished_utc" in x]
    ref = next((r for r in rows if r["label"] == REFERENCE), None)
    ref_time = None if ref is None else ref["time_to_target_s"]
    first = runs[0]
    cfg = first["config"]
    hosts = first["world_size"]
    width, params = cfg["hidden"], first["model_params"] / 1e6
    model = f"64-{width}-{width}-10 MLP ({params:.2f} M parameters)"
    test = first["test_images"]
    title = f"Time to accuracy on digits, {hosts} emulated hosts at 1 Gbit/s"
    seeds = sorted({r["config"]["seed"] for r in runs})
    target_text = ", ".join(f"{100 * goal[k]:.2f} %" for k in sorted(goal)) or "no AR-SGD run"
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {seeds}"
    write_results(
        NAME,
        {"rows": rows, "target_accuracy": goal, "runs": runs, **extra},
        header=[
            "configuration",
            "final top-1 (%)",
            "training s",
            "s/iter",
            "MB sent / rank / iter",
            "epochs to target",
            "s to target",
            "speed-up to target (AR / this)",
        ],
        rows=[_cells(r, ref_time) for r in rows],
        title=title,
        quick=quick,
        notes=(
            f"digits (8x8), {model}, iid split over {hosts} ranks, batch {cfg['batch']} "
            f"per rank, {cfg['epochs']:g} epochs of {first['steps_per_epoch']} iterations, "
            f"SGD momentum {cfg['momentum']:g}, cosine learning rate from {cfg['lr']:g}; "
            f"{over}, times to target the median over seeds. One thread per rank (the "
            "emulated hosts share this machine's CPUs), gloo. Accuracy: the "
            f"network-average model on the {test} held-out images (one image is "
            f"{100 / test:.2f} points), every 1/{cfg['evals_per_epoch']} epoch. Time: "
            "training wall-clock, the slowest rank's, with the clock stopped while "
            "evaluating (OSGP's in-flight messages are folded in before it stops, and "
            f"counted). Target: AR-SGD's final accuracy minus {MARGIN_POINTS:g} point, per "
            f"seed ({target_text}); `epochs to target` and `s to target`: the first "
            "evaluation at or above it. OSGP: synch_freq 1. Compression at the default "
            "consensus steps. DDP + PowerSGD: torch's powerSGD_hook on "
            "DistributedDataParallel with one bucket, start_powerSGD_iter 2. MB: measured "
            "bytes_sent for gossip, computed for DDP (ring all-reduce, 2(n-1)/n of the "
            "payload)." + (f" Run note: {extra['note']}" if extra.get("note") else "")
        ),
        meta={
            "hosts": hosts,
            "rate": RATE,
            "model": model,
            "epochs": cfg["epochs"],
            "batch": cfg["batch"],
            "lr": cfg["lr"],
            "margin_points": MARGIN_POINTS,
            **({"measured_utc": sessions[-1]["finished_utc"]} if sessions else {}),
        },
    )
    stem = f"{NAME}_quick" if quick else NAME
    mean_target = statistics.mean(goal.values()) if goal else None
    plot(runs, rows, mean_target, RESULTS / f"{stem}.png", f"{title} ({over})")


def _saved(stem: str) -> dict[str, Any]:
    """The runs saved so far: ``<stem>_partial.json`` (an interrupted run's, which
    includes the runs it resumed from), else ``<stem>.json``; ``{}`` if neither."""
    for name in (f"{stem}_partial", stem):
        path = RESULTS / f"{name}.json"
        if path.exists():
            data: dict[str, Any] = json.loads(path.read_text())
            return data
    return {}


def report_only(quick: bool, note: str | None) -> int:
    """Rewrite the table and plot from the saved JSON, without running (``note`` replaces
    the saved note if given)."""
    data = _saved(f"{NAME}_quick" if quick else NAME)
    skip = ("meta", "rows", "target_accuracy", "runs", "incomplete_runs")
    extra = {k: v for k, v in data.items() if k not in skip}
    if note is not None:
        extra["note"] = note
    write(data["runs"] + data.get("incomplete_runs", []), extra, quick)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="2 hosts, 1 epoch, 4 configurations")
    p.add_argument("--hosts", type=int, default=None)
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default {list(SEEDS)}")
    p.add_argument(
        "--only", nargs="*", default=None, help=f"these labels only ({REFERENCE} always runs)"
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the saved runs of the same hosts and epochs; run only the missing ones",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild table and plot from JSON")
    p.add_argument("--note", default=None, help="a remark kept in the JSON (what was cut, why)")
    args = p.parse_args(argv)
    if args.report_only:
        return report_only(args.quick, args.note)
    hosts = args.hosts or (QUICK_HOSTS if args.quick else HOSTS)
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS)
    seeds = args.seeds or list(QUICK_SEEDS if args.quick else SEEDS)
    configs = [c for c in CONFIGS if c.quick or not args.quick]
    if args.only is not None:
        unknown = set(args.only) - {c.label for c in CONFIGS}
        if unknown:
            p.error(f"unknown labels {sorted(unknown)}; choose from {[c.label for c in CONFIGS]}")
        configs = [c for c in configs if c.label in {REFERENCE, *args.only}]
    stem = f"{NAME}_quick" if args.quick else NAME
    saved = _saved(stem) if args.resume else {}
    runs = [
        r
        for r in saved.get("runs", []) + saved.get("incomplete_runs", [])
        if r["world_size"] == hosts and r["config"]["epochs"] == epochs
    ]
    kept = ("meta", "rows", "target_accuracy", "runs", "incomplete_runs", "skipped")
    extra: dict[str, Any] = {k: v for k, v in saved.items() if k not in kept}
    extra.update(
        defaults={"epochs": EPOCHS, "seeds": list(SEEDS)},
        sessions=saved.get("sessions", []),
        note=args.note if args.note is not None else saved.get("note"),
    )
    done = {(r["label"], r["config"]["seed"]) for r in runs}
    todo = [(c, k) for k in seeds for c in configs if (c.label, k) not in done]
    install_signal_teardown()
    start = time.perf_counter()
    with Cluster(hosts, RATE) as cluster, tempfile.TemporaryDirectory() as tmp:
        check = cluster.check_link()
        print(f"[cluster] self-check: {json.dumps(check.as_dict())}", flush=True)
        for config, seed in todo:
            print(f"== {config.label}, seed {seed}", flush=True)
            load_before = os.getloadavg()[0]
            common = ["--epochs", f"{epochs:g}", "--seed", str(seed)]
            runs.append(run_config(cluster, config, common, Path(tmp) / "run.json", args.timeout))
            # the 1-minute load average of the machine: other work would slow the ranks
            runs[-1]["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            partial = RESULTS / f"{stem}_partial.json"
            partial.write_text(json.dumps({**extra, "runs": runs}) + "\n")
    extra["sessions"].append(
        {
            "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "link_check": check.as_dict(),
            "wall_s": round(time.perf_counter() - start, 1),
            "runs": len(todo),
        }
    )
    labels = [c.label for c in CONFIGS]
    runs.sort(key=lambda r: (labels.index(r["label"]), r["config"]["seed"]))
    extra["skipped"] = [c for c in labels if c not in {r["label"] for r in runs}]
    write(runs, extra, args.quick)
    (RESULTS / f"{stem}_partial.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
