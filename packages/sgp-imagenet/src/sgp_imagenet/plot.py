"""``sgp-imagenet plot``: the paper's figures from training logs, and a summary table.

Each log directory holds the ``summary.json`` that ``sgp-imagenet train --log-dir``
writes. The figure has four panels: top-1 validation error of the network-average model
against wall-clock time and against epochs, one line per run, then what each iteration
cost each run: seconds, and megabytes that one rank sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_runs", "plot_runs", "summary_table"]


def load_runs(directories: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The ``summary.json`` of each directory, with ``"dir"`` added.

    Raises:
        ValueError: Naming a directory without a readable summary.
    """
    runs = []
    for d in directories:
        path = Path(d) / "summary.json"
        if not path.is_file():
            raise ValueError(f"{d}: no summary.json (is it a --log-dir of sgp-imagenet train?)")
        try:
            run = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not run.get("epochs"):
            raise ValueError(f"{path}: no finished epoch to plot")
        runs.append({**run, "dir": str(d)})
    if not runs:
        raise ValueError("give at least one log directory")
    return runs


def _label(run: dict[str, Any]) -> str:
    return f"{run['algorithm']} ({run['world_size']} ranks)"


def _megabytes(run: dict[str, Any]) -> float:
    """Megabytes one rank sent per iteration (NaN for summaries written before it was)."""
    return float(run.get("bytes_per_iter", math.nan)) / 1e6


def _bar_labels(runs: Sequence[dict[str, Any]]) -> list[str]:
    """One label per run; runs that share algorithm and size add their log directory."""
    labels = [_label(run) for run in runs]
    return [
        f"{label} {Path(run['dir']).name}" if labels.count(label) > 1 else label
        for label, run in zip(labels, runs, strict=True)
    ]


def summary_table(runs: Sequence[dict[str, Any]]) -> str:
    """A markdown table: final accuracy (network average and own models), time, traffic."""
    lines = [
        "| run | epochs | network-average top-1 | ranks' own models top-1 | wall (s) | s/iter "
        "| MB sent/iter |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        last = run["epochs"][-1]
        sent = _megabytes(run)
        lines.append(
            f"| {_label(run)} | {len(run['epochs'])} | {last['average_top1']:.2f}% | "
            f"{last['own_top1']:.2f}% | {run['wall_s']:.1f} | {run['s_per_iter']:.4f} | "
            f"{'n/a' if math.isnan(sent) else f'{sent:.3f}'} |"
        )
    return "\n".join(lines)


def plot_runs(runs: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Draw the four panels into ``out`` (PNG).

    Raises:
        ValueError: If matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError("sgp-imagenet plot needs matplotlib: pip install matplotlib") from exc
    fig, (by_time, by_epoch, speed, traffic) = plt.subplots(1, 4, figsize=(18, 4.2))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = list(dict.fromkeys(run["algorithm"] for run in runs))
    colour = {a: palette[i % len(palette)] for i, a in enumerate(order)}
    for run in runs:
        epochs = [e["epoch"] + 1 for e in run["epochs"]]
        error = [100.0 - e["average_top1"] for e in run["epochs"]]
        elapsed = [e.get("elapsed_s", float("nan")) for e in run["epochs"]]
        c = colour[run["algorithm"]]
        by_time.plot(elapsed, error, marker="o", color=c, label=_label(run))
        by_epoch.plot(epochs, error, marker="o", color=c, label=_label(run))
    labels = _bar_labels(runs)
    colours = [colour[run["algorithm"]] for run in runs]
    rows = range(len(runs))
    speed.barh(rows, [run["s_per_iter"] for run in runs], color=colours)
    traffic.barh(rows, [_megabytes(run) for run in runs], color=colours)
    for ax in (speed, traffic):
        ax.set_yticks(rows, labels, fontsize=8)
        ax.invert_yaxis()  # the runs in the order given, top to bottom
    by_time.set(xlabel="wall-clock time (s)", ylabel="top-1 error (%), network average")
    by_epoch.set(xlabel="epoch", ylabel="top-1 error (%), network average")
    speed.set(xlabel="seconds per iteration", title="time per iteration")
    traffic.set(xlabel="MB sent per iteration by one rank", title="bytes sent per iteration")
    for ax in (by_time, by_epoch):
        ax.legend(fontsize=8)
    for ax in (by_time, by_epoch, speed, traffic):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
