r"""A model of time per iteration against host count, calibrated on the emulated cluster.

This machine emulates at most 4 hosts, so larger clusters are extrapolated on paper.
For ``n`` hosts, compute time ``C`` per iteration, ``M`` model bytes, link rate ``B``
and per-message latency ``a``:

* ring all-reduce (AR-SGD) moves :math:`2(n-1)/n \cdot M` bytes per host in
  :math:`2(n-1)` latency-bound hops: ``T_ar = C + 2(n-1)/n * M/B + 2(n-1) a``;
* SGP sends ``M`` to one peer and receives ``M`` from one peer per step, after its
  compute: ``T_sgp = C + M/B + a``;
* OSGP overlaps that transfer with the next compute: ``T_osgp = max(C, M/B + a)``.

Calibration, all from measurements made by ``bench_cluster.py`` (never typed in): ``C``
is the compute-only iteration at each host count, ``M`` the model's bytes, ``B`` the
configured rate times the link self-check's efficiency (raw TCP, both directions at
once), and ``a`` half of one tiny two-host all-reduce. The model is then checked
against the measured AR-SGD, SGP and OSGP iterations at ``n = 2`` and ``n = 4``, and
extrapolated to 8-256 hosts with the ``n = 4`` compute time.

Beside it: the SGP paper's reported wall-clock for ResNet-50, 90 epochs on 32 nodes with
10 GbE (SGP about 1.6 h, AR-SGD over 5 h; Assran et al. 2019, arXiv:1811.10792). Those
are turned into seconds per iteration (``90 * 1,281,167 / (32 * 256)`` iterations) and
compared with the model in the paper's setting, with ``C`` solved from the SGP figure.

Writes ``benchmarks/results/scale_model.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _results import RESULTS, write_results  # noqa: E402

HOSTS = [2, 4, 8, 16, 32, 64, 128, 256]
PAPER = {
    "nodes": 32,
    "link_bps": 10e9,
    "sgp_hours": 1.6,
    "ar_hours": 5.0,  # "over 5 h": a lower bound
    "epochs": 90,
    "images": 1_281_167,
    "batch_per_node": 256,
    "model_bytes": 25_557_032 * 4,
}
LABELS = {"AR-SGD (DDP)": "ar", "SGP": "sgp", "OSGP, synch_freq 0": "osgp"}


def predict(kind: str, n: int, compute: float, model_bytes: float, bps: float, a: float) -> float:
    """Seconds per iteration of ``kind`` (``ar``, ``sgp`` or ``osgp``) on ``n`` hosts."""
    transfer = model_bytes * 8 / bps
    if kind == "ar":
        return compute + 2 * (n - 1) / n * transfer + 2 * (n - 1) * a
    if kind == "sgp":
        return compute + transfer + a
    if kind == "osgp":
        return max(compute, transfer + a)
    raise ValueError(f"kind must be ar, sgp or osgp; got {kind!r}")


def _load(name: str) -> dict[str, object]:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(
            f"{path} is missing: run `nox -s cluster` (and `nox -s cluster -- --hosts 2 "
            "--skip straggler chunks`) first"
        )
    data: dict[str, object] = json.loads(path.read_text())
    return data


def _measured(data: dict[str, object]) -> dict[float, dict[str, float]]:
    """``{rate_gbit: {label: seconds}}`` from a cluster results file."""
    out: dict[float, dict[str, float]] = {}
    for row in data["rows"]:  # type: ignore[attr-defined]
        out.setdefault(float(row["rate_gbit"]), {})[row["label"]] = float(row["seconds"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None).parse_args(
        argv
    )
    four, two, chunks = _load("cluster"), _load("cluster_h2"), _load("cluster_chunks")
    model_bytes = float(four["runs"][0]["model_bytes"])  # type: ignore[index]
    eff = {float(c["rate_gbit"]): float(c["efficiency"]) for c in four["link_checks"]}  # type: ignore[attr-defined]
    tiny = [float(r["tiny_allreduce_s"]) for r in chunks["rows"]]  # type: ignore[attr-defined]
    a = min(tiny) / 2
    measured = {4: _measured(four), 2: _measured(two)}
    checks, curves = [], []
    for rate, efficiency in sorted(eff.items()):
        bps = rate * 1e9 * efficiency
        for n, by_rate in measured.items():
            if rate not in by_rate:
                continue
            got = by_rate[rate]
            for label, kind in LABELS.items():
                if label in got:
                    pred = predict(kind, n, got["compute only"], model_bytes, bps, a)
                    checks.append(
                        {
                            "rate_gbit": rate,
                            "hosts": n,
                            "algorithm": label,
                            "measured_s": got[label],
                            "model_s": round(pred, 4),
                            "model_over_measured": round(pred / got[label], 3),
                        }
                    )
        compute = measured[4][rate]["compute only"]
        for kind in ("ar", "sgp", "osgp"):
            curves.append(
                {
                    "rate_gbit": rate,
                    "kind": kind,
                    "hosts": HOSTS,
                    "seconds": [predict(kind, n, compute, model_bytes, bps, a) for n in HOSTS],
                }
            )
    # the paper's setting: C solved from its SGP figure, then AR-SGD predicted
    p = PAPER
    iters = p["epochs"] * p["images"] / (p["nodes"] * p["batch_per_node"])
    sgp_s, ar_s = p["sgp_hours"] * 3600 / iters, p["ar_hours"] * 3600 / iters
    paper_transfer = p["model_bytes"] * 8 / p["link_bps"]
    paper_compute = sgp_s - paper_transfer - a
    ar_pred = predict("ar", int(p["nodes"]), paper_compute, p["model_bytes"], p["link_bps"], a)
    ar_transfer = ar_s - paper_compute - 2 * (p["nodes"] - 1) * a
    ar_eff = 2 * (p["nodes"] - 1) / p["nodes"] * paper_transfer / ar_transfer
    paper = {
        "iterations": round(iters),
        "reported_sgp_s_per_iter": round(sgp_s, 4),
        "reported_ar_s_per_iter_at_least": round(ar_s, 4),
        "compute_solved_s": round(paper_compute, 4),
        "model_ar_s_at_line_rate": round(ar_pred, 4),
        "model_ar_hours_at_line_rate": round(ar_pred * iters / 3600, 2),
        "all_reduce_bandwidth_fraction_implied": round(ar_eff, 3),
    }
    _plot(curves, measured, checks, paper, RESULTS / "scale_model.png")
    write_results(
        "scale_model",
        {
            "latency_s": a,
            "model_bytes": model_bytes,
            "link_efficiency": eff,
            "checks": checks,
            "curves": curves,
            "paper": paper,
        },
        header=["link", "hosts", "algorithm", "measured s", "model s", "model / measured"],
        rows=[
            [
                f"{c['rate_gbit']:g} Gbit/s",
                c["hosts"],
                c["algorithm"],
                f"{c['measured_s']:.3f}",
                f"{c['model_s']:.3f}",
                f"{c['model_over_measured']:.2f}",
            ]
            for c in checks
        ],
        title="Scale model of time per iteration, checked against the measured points",
        quick=False,
        notes=(
            f"Latency a = {a * 1e6:.0f} us per message (half a tiny 2-host all-reduce). "
            f"The paper's 32-node 10 GbE figures are {sgp_s:.2f} s/iteration for SGP and at "
            f"least {ar_s:.2f} s for AR-SGD; with the compute solved from SGP "
            f"({paper_compute:.2f} s), a line-rate ring all-reduce would take {ar_pred:.2f} s "
            f"({paper['model_ar_hours_at_line_rate']} h for 90 epochs), so the paper's "
            f"AR-SGD ran at about {ar_eff:.2f} of line rate or less."
        ),
    )
    return 0


def _plot(
    curves: list[dict[str, object]],
    measured: dict[int, dict[float, dict[str, float]]],
    checks: list[dict[str, object]],
    paper: dict[str, float],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ar": "#c44e52", "sgp": "#4c72b0", "osgp": "#55a868"}
    names = {"ar": "AR-SGD (ring)", "sgp": "SGP", "osgp": "OSGP"}
    styles = {1.0: "-", 10.0: "--"}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for c in curves:
        rate = float(c["rate_gbit"])  # type: ignore[arg-type]
        ax.plot(
            c["hosts"],
            c["seconds"],
            styles.get(rate, ":"),
            color=colours[str(c["kind"])],
            label=f"{names[str(c['kind'])]}, {rate:g} Gbit/s (model)",
        )
    for ch in checks:
        kind = LABELS[str(ch["algorithm"])]
        marker = "o" if ch["rate_gbit"] == 1.0 else "s"
        ax.scatter([ch["hosts"]], [ch["measured_s"]], color=colours[kind], marker=marker, zorder=3)
        ax.scatter(  # the model at that point, with that point's own compute time
            [ch["hosts"]],
            [ch["model_s"]],
            facecolors="none",
            edgecolors=colours[kind],
            marker=marker,
            s=70,
            zorder=3,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("hosts")
    ax.set_ylabel("seconds per iteration")
    ax.set_title(
        "ResNet-50: model (lines: 4-host compute; hollow: each point's own compute)\n"
        "vs measured (filled); o = 1 Gbit/s, s = 10 Gbit/s",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    bars = [
        ("SGP\nreported", paper["reported_sgp_s_per_iter"], "#4c72b0"),
        ("AR-SGD\nreported (>=)", paper["reported_ar_s_per_iter_at_least"], "#c44e52"),
        ("AR-SGD model\nline rate", paper["model_ar_s_at_line_rate"], "#e8a0a0"),
    ]
    bx.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    bx.set_ylabel("seconds per iteration")
    bx.set_title("SGP paper: 32 nodes, 10 GbE, ResNet-50 (90 epochs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
