"""The compression benchmark's tables, targets and plot, from its rows.

Everything here reads the JSON payload only, so ``bench_compression.py
--report-only`` rebuilds the published files without running anything.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_cluster import write_targets  # noqa: E402
from compression_configs import GPU_HOST, SYNCH_FREQ  # noqa: E402

from _results import RESULTS, write_results  # noqa: E402

NAME = "cluster_compression"


def targets(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The issue's targets, each with the measured value and whether it is met."""
    out: list[dict[str, object]] = []

    def add(what: str, value: float, bound: float, at_most: bool) -> None:
        met = value <= bound if at_most else value >= bound
        kind = "at most" if at_most else "at least"
        out.append(
            {"target": what, "measured": round(value, 3), "bound": bound, "met": met, "kind": kind}
        )

    def best(rate: float, mode: str, gossip: bool) -> dict[str, object] | None:
        sel = [
            r
            for r in rows
            if r["rate_gbit"] == rate
            and r["mode"] == mode
            and (r["compressor"] is not None if gossip else r["family"] == "ddp")
        ]
        return min(sel, key=lambda r: float(r["seconds"]), default=None)  # type: ignore[arg-type]

    for rate, mode, bound in [
        (1.0, "batch 2", 1.5),
        (1.0, "batch 8", 1.2),
        (10.0, "batch 8", 1.0),
        (10.0, "batch 2", 1.0),
    ]:
        ddp, gossip = best(rate, mode, gossip=False), best(rate, mode, gossip=True)
        if ddp is None or gossip is None:
            continue
        what = (
            f"{rate:g} Gbit/s, {mode}: best DDP ({ddp['label']}) time / best compressed "
            f"gossip ({gossip['label']}) time"
        )
        add(what, float(ddp["seconds"]) / float(gossip["seconds"]), bound, at_most=False)  # type: ignore[arg-type]
    for r in rows:
        if r["mode"] == GPU_HOST and r["compressor"] is not None:
            what = f"{GPU_HOST}, {r['rate_gbit']:g} Gbit/s: {r['label']} / its floor"
            add(what, float(r["vs_floor"]), 1.10, at_most=True)  # type: ignore[arg-type]
    return out


_COLOURS = {"compute": "#999999", "ddp": "#c44e52", "sgp": "#4c72b0", "osgp": "#55a868"}


def plot(rows: list[dict[str, object]], hosts: int, path: Path) -> None:
    """Bars of seconds per iteration, one panel per rate and mode, floors marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({float(r["rate_gbit"]) for r in rows})  # type: ignore[arg-type]
    modes = list(dict.fromkeys(str(r["mode"]) for r in rows))
    fig, axes = plt.subplots(
        len(rates), len(modes), figsize=(5.2 * len(modes), 5.6 * len(rates)), squeeze=False
    )
    for (i, rate), (j, mode) in ((a, b) for a in enumerate(rates) for b in enumerate(modes)):
        ax = axes[i][j]
        sel = [r for r in rows if r["rate_gbit"] == rate and r["mode"] == mode]
        ys = range(len(sel))
        secs = [float(r["seconds"]) for r in sel]  # type: ignore[arg-type]
        ax.barh(ys, secs, color=[_COLOURS[str(r["family"])] for r in sel])
        floors = [float(r["floor_s"]) for r in sel]  # type: ignore[arg-type]
        ax.scatter(floors, ys, marker="|", s=200, color="k", zorder=3, label="floor")
        for y, r in zip(ys, sel, strict=True):
            note = f" {r['vs_floor']:.2f}x, {float(r['bytes_per_iter']) / 1e6:.3g} MB"  # type: ignore[arg-type]
            ax.annotate(note, (float(r["seconds"]), y), va="center", fontsize=7)  # type: ignore[arg-type]
        ax.set_yticks(list(ys), [str(r["label"]) for r in sel], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.45 * max(secs))
        ax.set_xlabel("seconds per iteration (slowest rank, median)")
        ax.set_title(f"{rate:g} Gbit/s, {mode}", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    title = (
        f"Compressed gossip against DDP's hooks, {hosts} emulated hosts "
        "(label: time / floor, bytes per rank per iteration)"
    )
    fig.suptitle(textwrap.fill(title, width=60 * len(modes)))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _megabytes(row: dict[str, object]) -> str:
    """A row's bytes per rank per iteration in MB, marked when computed (DDP)."""
    mb = f"{float(row['bytes_per_iter']) / 1e6:.2f}"  # type: ignore[arg-type]
    return mb + (" (computed)" if row["bytes_source"] == "computed" else "")


def _notes(
    meta: dict[str, object], checks: list[dict[str, float]], rows: list[dict[str, object]]
) -> str:
    links = "; ".join(
        f"{c['rate_gbit']:g} Gbit/s: {c['efficiency']:.2f} of the rate" for c in checks
    )
    sleep = meta.get("gpu_host_s")
    gpu = (
        ""
        if sleep is None
        else f"GPU host: forward and backward replaced by a {float(sleep):.3f} s sleep ("  # type: ignore[arg-type]
        + (
            "given with --gpu-host"
            if meta.get("gpu_host_given")
            else "the batch-8 model's forward and backward as measured here"
        )
        + ") and random gradients. "
    )
    return (
        f"{meta['model']}, 100 classes at 32x32, one thread per rank, gloo; the "
        f"{meta['hosts']} ranks share this machine's {os.cpu_count()} cores with "
        "the kernel's network stack. `s/iter`: the "
        f"slowest rank's median of {meta['iters']} iterations after {meta['warmup']}; `mean "
        "s`: its mean (the rate, which a median can flatter when OSGP's iterations alternate "
        "between waiting and not). OSGP with "
        f"synch_freq {SYNCH_FREQ}. {gpu}Bytes: measured `bytes_sent` for gossip; computed "
        "for DDP (ring all-reduce of the hook's payload, 2(n-1)/n of it per rank). Floors: "
        "C + M'/B for SGP and DDP, max(C, M'/B) for OSGP, C the same mode's compute-only "
        "row, B the configured rate (`/ floor (measured link)`: the rate the self-check "
        "reached). DDP's floor is a reference, not a bound: DDP all-reduces buckets while "
        "backward still runs, so it can beat it (`/ floor` under 1). `best DDP / this`: "
        "the fastest DDP row of the same rate and batch (plain or with a hook) over this "
        f"row's time. Link self-checks: {links}. {_shared(rows)}"
        + (
            " **The packages' source changed during this run**: rows before and after the "
            "change ran different code."
            if meta.get("library_source_changed_during_run")
            else ""
        )
    )


def _shared(rows: list[dict[str, object]], busy: float = 0.25) -> str:
    """Which rows shared the machine with other processes (a busy run is repeated once)."""
    hit = [r for r in rows if float(r.get("other_cores_mean") or 0.0) >= busy]  # type: ignore[arg-type]
    if not hit:
        return f"No row shared the machine: other processes used under {busy} cores throughout."
    where = dict.fromkeys(f"{r['rate_gbit']:g} Gbit/s {r['mode']}" for r in hit)
    most = max(float(r["other_cores_mean"]) for r in hit)  # type: ignore[arg-type]
    return (
        f"{len(hit)} of {len(rows)} rows shared the machine with other processes even after "
        f"one repeat (up to {most:.2f} of its 2 cores; {', '.join(where)}): read those as "
        "upper bounds."
    )


def write_tables(
    name: str, data: dict[str, object], goals: list[dict[str, object]], quick: bool
) -> None:
    """The main table and the targets table, from the run's JSON payload."""
    rows, meta = data["rows"], dict(data["meta"])  # type: ignore[call-overload]
    checks = data["link_checks"]
    write_results(
        name,
        {k: v for k, v in data.items() if k != "meta"},
        header=[
            "link",
            "mode",
            "configuration",
            "MB sent per rank per iter",
            "s/iter",
            "mean s",
            "floor s",
            "/ floor",
            "/ floor (measured link)",
            "best DDP / this",
            "fwd+bwd s",
            "opt step s",
        ],
        rows=[
            [
                f"{r['rate_gbit']:g} Gbit/s",
                r["mode"],
                r["label"],
                _megabytes(r),
                f"{r['seconds']:.3f}",
                f"{r['mean_s']:.3f}",
                f"{r['floor_s']:.3f}",
                f"{r['vs_floor']:.2f}",
                f"{r['vs_floor_measured_link']:.2f}",
                "" if r["best_ddp_vs_this"] is None else f"{r['best_ddp_vs_this']:.2f}",
                f"{r['fwd_bwd_s']:.3f}",
                f"{r['opt_step_s']:.3f}",
            ]
            for r in rows  # type: ignore[attr-defined]
        ],
        title=f"Compressed gossip against DDP's compression hooks, {meta['hosts']} emulated hosts",
        quick=quick,
        notes=_notes(meta, checks, rows),  # type: ignore[arg-type]
        meta=meta,
    )
    write_targets(
        name.replace(NAME, NAME + "_targets", 1),
        goals,
        quick=quick,
        meta=meta,
        title="Targets for compressed gossip, from this run",
    )


def _machine_keys(meta: dict[str, object]) -> dict[str, object]:
    """``meta`` without the keys `write_results` adds itself (for a rewrite)."""
    from _results import machine_meta

    drop = set(machine_meta(quick=False))
    kept = {k: v for k, v in meta.items() if k not in drop}
    kept.setdefault("measured_utc", meta.get("measured_utc", meta.get("utc")))
    return kept


def report_only(name: str) -> int:
    """Rebuild the tables, targets and plot of results ``name`` from its JSON (no runs)."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    data["meta"] = _machine_keys(data["meta"])
    write_tables(name, data, targets(data["rows"]), quick=False)
    plot(data["rows"], int(data["meta"]["hosts"]), RESULTS / f"{name}.png")
    return 0
