"""Draw the home page's figure from the cluster benchmark's results; runs nothing.

Reads ``results/cluster.json`` (written by ``nox -s cluster``) and draws, for its
1 Gbit/s rows, each algorithm's seconds per iteration next to DDP's, with DDP's time
over each algorithm's beside its bar (the table's ``DDP / this`` column), and the
compute-only iteration last. Writes ``results/home.png``, which ``docs/index.md``
embeds. ``bench_cluster.py`` calls it whenever it rewrites ``cluster.json`` (also with
``--report-only``); ``python benchmarks/plot_home.py`` redraws it on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from _results import RESULTS

__all__ = ["plot_home"]

RATE_GBIT = 1.0
DDP = "AR-SGD (DDP)"
COMPUTE = "compute only"


def plot_home(rows: Sequence[dict[str, object]], path: Path) -> None:
    """Horizontal bars of seconds per iteration at 1 Gbit/s, DDP first, sized for a page.

    Args:
        rows: ``cluster.json``'s ``rows``: ``rate_gbit``, ``label``, ``seconds`` and
            ``speedup_vs_ddp`` (DDP's time over the row's) for each configuration.
        path: The PNG to write.

    Raises:
        ValueError: If the rows hold no 1 Gbit/s DDP or compute-only row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at_rate = [r for r in rows if float(r["rate_gbit"]) == RATE_GBIT]  # type: ignore[arg-type]
    by_label = {str(r["label"]): r for r in at_rate}
    if DDP not in by_label or COMPUTE not in by_label:
        raise ValueError(f"no {DDP!r} and {COMPUTE!r} rows at {RATE_GBIT:g} Gbit/s")
    others = [r for r in at_rate if r["label"] not in (DDP, COMPUTE)]
    bars = [by_label[DDP], *others, by_label[COMPUTE]]
    seconds = [float(r["seconds"]) for r in bars]  # type: ignore[arg-type]
    colours = ["#c44e52", *["#4c72b0"] * len(others), "#999999"]
    notes = [
        "the baseline",
        *(f"{float(r['speedup_vs_ddp']):.2f}x as fast as DDP" for r in others),  # type: ignore[arg-type]
        "no communication at all",
    ]
    fig, ax = plt.subplots(figsize=(6.9, 4.4), layout="constrained")  # 690 px: the text width
    ys = range(len(bars))
    ax.barh(ys, seconds, color=colours, height=0.65)
    for y, s, note in zip(ys, seconds, notes, strict=True):
        ax.annotate(f" {s:.3f} s, {note}", (s, y), va="center", ha="left", fontsize=10)
    ax.set_yticks(list(ys), [str(r["label"]) for r in bars], fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, max(seconds) * 1.8)
    ax.set_xlabel("seconds per training iteration (slowest rank's median)", fontsize=10)
    ax.set_title(
        f"ResNet-50 on 4 emulated hosts, {RATE_GBIT:g} Gbit/s links",
        fontsize=11,
    )
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Redraw ``results/home.png`` from ``results/cluster.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--results", type=Path, default=RESULTS / "cluster.json")
    p.add_argument("--out", type=Path, default=RESULTS / "home.png")
    args = p.parse_args(argv)
    plot_home(json.loads(args.results.read_text())["rows"], args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
