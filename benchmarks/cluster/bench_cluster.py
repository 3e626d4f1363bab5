"""Training iterations on an emulated 4-host Ethernet cluster, every algorithm side by side.

Run as root: ``nox -s cluster`` or ``python benchmarks/cluster/bench_cluster.py``.
For each link rate (1 and 10 Gbit/s) it builds the cluster (`emulate.Cluster`), checks
the links, and runs `train_step.py` on every host for: compute only, AR-SGD (DDP), SGP,
OSGP with ``synch_freq`` 0 and 1, D-PSGD, AD-PSGD and SGP with a bf16 wire. Then a
straggler run at 1 Gbit/s (one host computes 2x slower) and a chunk-size sweep of one
full-duplex exchange of the model's bytes between two hosts.

Each algorithm is reported as a ratio to its physical floor, from the same run:
``compute + M/B`` for SGP and D-PSGD (a step's send follows its compute),
``compute + M/(2B)`` with a bf16 wire, ``max(compute, M/B)`` for OSGP and AD-PSGD
(communication overlaps compute), and ``compute + 2(n-1)/n * M/B`` for ring all-reduce.
``M`` is the model's bytes, ``B`` the configured link rate, ``compute`` the measured
compute-only iteration. Times are the median of ``--iters`` iterations after
``--warmup``, on the slowest rank (AD-PSGD: the mean over active ranks).

Writes ``benchmarks/results/cluster.{json,md}``, ``cluster_chunks.{json,md}``,
``cluster_straggler.{json,md}``, ``cluster.png`` and the home page's ``home.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from emulate import Cluster, install_signal_teardown, parse_rate  # noqa: E402

from _results import RESULTS, write_results  # noqa: E402
from plot_home import plot_home  # noqa: E402

#: (label, train_step.py arguments, floor kind)
CONFIGS: list[tuple[str, list[str], str]] = [
    ("compute only", ["--algorithm", "compute"], "compute"),
    ("AR-SGD (DDP)", ["--algorithm", "ar"], "allreduce"),
    ("SGP", ["--algorithm", "sgp"], "serial"),
    ("SGP, bf16 wire", ["--algorithm", "sgp", "--wire", "bf16"], "serial-half"),
    ("OSGP, synch_freq 0", ["--algorithm", "osgp", "--synch-freq", "0"], "overlap"),
    ("OSGP, synch_freq 1", ["--algorithm", "osgp", "--synch-freq", "1"], "overlap"),
    ("D-PSGD", ["--algorithm", "dpsgd"], "serial"),
    ("AD-PSGD", ["--algorithm", "adpsgd"], "overlap"),
]
STRAGGLER: list[tuple[str, list[str]]] = [
    ("AR-SGD (DDP)", ["--algorithm", "ar"]),
    ("SGP", ["--algorithm", "sgp"]),
    ("OSGP, synch_freq 2", ["--algorithm", "osgp", "--synch-freq", "2"]),
    ("AD-PSGD", ["--algorithm", "adpsgd"]),
]


def floor(kind: str, compute: float, model_bytes: int, rate_bps: float, n: int) -> float:
    """The physical lower bound of one iteration for a floor ``kind`` (see above)."""
    transfer = model_bytes * 8 / rate_bps
    return {
        "compute": compute,
        "serial": compute + transfer,
        "serial-half": compute + transfer / 2,
        "overlap": max(compute, transfer),
        "allreduce": compute + 2 * (n - 1) / n * transfer,
    }[kind]


def iteration_time(result: dict[str, object], exclude: int = -1, key: str = "median_s") -> float:
    """The slowest rank's ``key`` (median or mean); for AD-PSGD the mean over active ranks."""
    ranks = [r for r in result["ranks"] if r["rank"] != exclude]  # type: ignore[attr-defined]
    if result["algorithm"] == "adpsgd":
        ranks = [r for r in ranks if not r["passive"]] or ranks
        return float(statistics.mean(r[key] for r in ranks))
    return float(max(r[key] for r in ranks))


def run_step(
    cluster: Cluster, args: list[str], common: list[str], out: Path, timeout: float
) -> dict[str, object]:
    """Run train_step.py on every host; its JSON result."""
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "train_step.py"), *args, *common, "--out", str(out)]
    codes = cluster.run_all(cmd, timeout=timeout)
    if any(codes) or not out.exists():
        raise RuntimeError(f"train_step.py {' '.join(args)} failed: exit codes {codes}")
    result: dict[str, object] = json.loads(out.read_text())
    return result


def sweep_chunks(
    cluster: Cluster, sizes: list[int], numel: int, steps: int, tmp: Path
) -> list[dict[str, object]]:
    """Seconds per full-duplex exchange of ``numel`` floats between hosts 0 and 1."""
    rows = []
    out = tmp / "exchange.json"
    for size in sizes:
        out.unlink(missing_ok=True)
        cmd = [sys.executable, str(HERE / "exchange.py"), "--numel", str(numel)]
        cmd += ["--steps", str(steps), "--chunk-bytes", str(size), "--out", str(out)]
        codes = cluster.run_all(cmd, timeout=600, hosts=2)  # hosts 0 and 1 only
        if any(codes):
            raise RuntimeError(f"exchange.py failed with chunk_bytes={size}: {codes}")
        res = json.loads(out.read_text())
        ideal = numel * 4 * 8 / cluster.rate_bps
        mean = statistics.mean(res["times"])
        rows.append(
            {
                "rate_gbit": cluster.rate_bps / 1e9,
                "chunk_bytes": size,
                "median_s": res["median_s"],
                "mean_s": mean,
                "max_s": max(res["times"]),
                "ideal_s": ideal,
                "ratio": mean / ideal,
                "all_s": res["times"],
                "tiny_allreduce_s": res["tiny_allreduce_s"],
                # machine-wide busy CPU per exchange of 2 x numel floats (both ways)
                "cpu_busy_s": res["cpu_busy_s_per_step"],
                "cpu_s_per_gb": res["cpu_busy_s_per_step"] / (2 * numel * 4 / 1e9),
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "all_s"}), flush=True)
    return rows


def targets(
    rows: list[dict[str, object]], straggler: list[dict[str, object]]
) -> list[dict[str, object]]:
    """Issue 8's targets, each with the measured value and whether it is met."""
    by = {(float(r["rate_gbit"]), str(r["label"])): r for r in rows}  # type: ignore[arg-type]
    out: list[dict[str, object]] = []

    def add(what: str, value: float, bound: float, at_most: bool = True) -> None:
        met = value <= bound if at_most else value >= bound
        out.append(
            {
                "target": what,
                "measured": round(value, 3),
                "bound": bound,
                "met": met,
                "kind": "at most" if at_most else "at least",
            }
        )

    def ratio(rate: float, label: str, key: str = "vs_floor") -> float | None:
        row = by.get((rate, label))
        return None if row is None else float(row[key])  # type: ignore[arg-type]

    for label, bound in [
        ("SGP", 1.10),
        ("D-PSGD", 1.10),
        ("SGP, bf16 wire", 1.10),
        ("OSGP, synch_freq 0", 1.15),
        ("OSGP, synch_freq 1", 1.15),
        ("AD-PSGD", 1.15),
    ]:
        value = ratio(1.0, label)
        if value is not None:
            add(f"1 Gbit/s: {label} / its floor", value, bound)
    for label in ("OSGP, synch_freq 0", "OSGP, synch_freq 1"):
        value = ratio(1.0, label, "speedup_vs_ddp")
        if value is not None:
            add(f"1 Gbit/s: DDP time / {label} time", value, 1.6, at_most=False)
    value = ratio(10.0, "SGP")
    if value is not None:
        add("10 Gbit/s: SGP / its floor", value, 1.20)
    compute = by.get((10.0, "compute only"))
    sgp = by.get((10.0, "SGP"))
    for label in ("OSGP, synch_freq 0", "OSGP, synch_freq 1"):
        row = by.get((10.0, label))
        if row is None or compute is None or sgp is None:
            continue
        t = float(row["seconds"])  # type: ignore[arg-type]
        add(f"10 Gbit/s: {label} / SGP", t / float(sgp["seconds"]), 1.0)  # type: ignore[arg-type]
        add(f"10 Gbit/s: {label} / compute", t / float(compute["seconds"]), 1.20)  # type: ignore[arg-type]
    for row in straggler:
        if row["label"] == "AD-PSGD":
            add(
                "2x straggler: AD-PSGD's other ranks keep this share of their rate",
                float(row["rate_kept"]),
                0.80,
                at_most=False,
            )  # type: ignore[arg-type]
    return out


def plot(rows: list[dict[str, object]], path: Path, *, hosts: int) -> None:
    """Bars of seconds per iteration by algorithm, one panel per rate, floors marked.

    Sized for the docs' text width (about 690 px): the panels are stacked, the bars
    horizontal so that every label reads level, and the fonts 9 to 11 points at 100 dpi.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({float(r["rate_gbit"]) for r in rows})  # type: ignore[arg-type]
    size = (6.9, 0.6 + 3.6 * len(rates))
    fig, axes = plt.subplots(len(rates), 1, figsize=size, sharex=True, layout="constrained")
    axes = [axes] if len(rates) == 1 else list(axes)
    for ax, rate in zip(axes, rates, strict=True):
        sel = [r for r in rows if r["rate_gbit"] == rate]
        ys = range(len(sel))
        seconds = [float(r["seconds"]) for r in sel]  # type: ignore[arg-type]
        floors = [float(r["floor_s"]) for r in sel]  # type: ignore[arg-type]
        ax.barh(ys, seconds, color="#4c72b0", height=0.7, label="measured (median)")
        ax.scatter(floors, ys, marker="|", s=260, linewidths=2.5, color="#dd5555", label="floor")
        for y, s, fl, r in zip(ys, seconds, floors, sel, strict=True):
            note = f" {s:.3f} s, {r['vs_floor']:.2f}x floor"
            ax.annotate(note, (max(s, fl), y), va="center", ha="left", fontsize=9)
        ax.set_yticks(list(ys), [str(r["label"]) for r in sel], fontsize=10)
        ax.invert_yaxis()
        ax.set_title(f"{hosts} hosts, {rate:g} Gbit/s links", fontsize=11)
        ax.grid(axis="x", alpha=0.3)
    right = max(max(float(r["seconds"]), float(r["floor_s"])) for r in rows)  # type: ignore[arg-type]
    axes[-1].set_xlim(0, right * 1.45)
    axes[-1].set_xlabel("seconds per iteration (slowest rank)", fontsize=10)
    title = "ResNet-50 training iteration, emulated cluster (gloo, 1 thread per rank)"
    fig.suptitle(title, fontsize=11)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_targets(
    name: str,
    goals: list[dict[str, object]],
    *,
    quick: bool,
    meta: dict[str, object],
    title: str = "Design targets, checked on this run",
) -> None:
    """A targets table, as a benchmark's ``targets`` computed it."""
    write_results(
        name,
        {"targets": goals},
        header=["target", "measured", "bound", "met"],
        rows=[
            [
                g["target"],
                f"{g['measured']:.2f}",
                f"{g['kind']} {g['bound']}",
                "yes" if g["met"] else "**no**",
            ]
            for g in goals
        ],
        title=title,
        quick=quick,
        meta=meta,
    )


def write_cluster_table(
    name: str,
    rows: list[dict[str, object]],
    checks: list[dict[str, float]],
    raw: list[dict[str, object]],
    model: str,
    hosts: int,
    quick: bool,
    meta: dict[str, object],
) -> None:
    """The main table, with where each iteration's time goes (from the runs' ranks)."""
    phases: dict[tuple[float, str], tuple[float, float]] = {}
    for run in raw:
        ranks = run["ranks"]  # type: ignore[assignment]
        key = (int(run["rate_bps"]) / 1e9, str(run["label"]))  # type: ignore[call-overload]
        phases[key] = (
            max(float(r["fwd_bwd_median_s"]) for r in ranks),  # type: ignore[attr-defined]
            max(float(r["opt_step_median_s"]) for r in ranks),  # type: ignore[attr-defined]
        )
    nan = (float("nan"), float("nan"))
    write_results(
        name,
        {"rows": rows, "link_checks": checks, "runs": raw},
        header=[
            "link",
            "algorithm",
            "s/iter",
            "floor s",
            "/ floor",
            "/ floor (measured link)",
            "DDP / this",
            "forward+backward s",
            "optimizer step s",
        ],
        rows=[
            [
                f"{r['rate_gbit']:g} Gbit/s",
                r["label"],
                f"{r['seconds']:.3f}",
                f"{r['floor_s']:.3f}",
                f"{r['vs_floor']:.2f}",
                f"{r['vs_floor_measured_link']:.2f}",
                f"{r['speedup_vs_ddp']:.2f}",
                f"{phases.get((float(r['rate_gbit']), str(r['label'])), nan)[0]:.3f}",  # type: ignore[arg-type]
                f"{phases.get((float(r['rate_gbit']), str(r['label'])), nan)[1]:.3f}",  # type: ignore[arg-type]
            ]
            for r in rows
        ],
        title=f"Training iterations on an emulated {hosts}-host cluster",
        quick=quick,
        notes=(
            f"{model}, batch 8 at 32x32, 100 classes, one thread per rank, gloo. "
            "Link self-checks (raw TCP, both directions at once): "
            + "; ".join(
                f"{c['rate_gbit']:g} Gbit/s: {c['efficiency']:.2f} of the rate" for c in checks
            )
            + ". Floors: compute + M/B for SGP and D-PSGD (M/(2B) with a bf16 wire), "
            "max(compute, M/B) for OSGP and AD-PSGD, compute + 2(n-1)/n M/B for DDP, which "
            "is a reference rather than a bound: DDP all-reduces buckets while backward "
            "still runs, so it can beat it (`/ floor` under 1). "
            "`/ floor` uses the configured rate; `/ floor (measured link)` the rate the "
            "self-check reached. The last two columns split the iteration (slowest rank's "
            "medians): forward and backward (DDP's all-reduce runs inside backward; "
            "overlapped gossip shares the CPU with it), and the optimizer step, inside "
            "whose hooks the gossip wrappers mix and wait."
        ),
        meta=meta,
    )


def report_only() -> int:
    """Rebuild the tables, targets and plots from the saved ``cluster*.json`` (no runs)."""
    for name in ("cluster", "cluster_h2"):
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        meta = {k: data["meta"][k] for k in ("hosts", "model", "iters", "warmup", "backend")}
        meta["measured_utc"] = data["meta"].get("measured_utc", data["meta"]["utc"])
        rows, hosts = data["rows"], int(meta["hosts"])
        write_cluster_table(
            name, rows, data["link_checks"], data["runs"], str(meta["model"]), hosts, False, meta
        )
        plot(rows, RESULTS / f"{name}.png", hosts=hosts)
        if name != "cluster":
            continue
        plot_home(rows, RESULTS / "home.png")
        straggler_path = RESULTS / "cluster_straggler.json"
        straggler = (
            json.loads(straggler_path.read_text())["rows"] if straggler_path.exists() else []
        )
        goals = targets(rows, straggler)
        write_targets("cluster_targets", goals, quick=False, meta=meta)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="2 hosts, ResNet-18, 3 iterations")
    p.add_argument("--rates", nargs="+", default=["1gbit", "10gbit"])
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chunk-sizes", type=int, nargs="*", default=None)
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "straggler", "chunks"])
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="run only these algorithm labels (compute only and DDP always run); results "
        "go to *_partial files",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the tables, targets and plot from the saved JSON without running",
    )
    args = p.parse_args(argv)
    if args.report_only:
        return report_only()
    install_signal_teardown()
    model, hosts, iters, warmup = "resnet50", args.hosts, args.iters, args.warmup
    if args.quick:
        model, hosts, iters, warmup = "resnet18", 2, 3, 1
    common = ["--model", model, "--iters", str(iters), "--warmup", str(warmup)]
    sizes = args.chunk_sizes or [0, 256 << 10, 1 << 20, 4 << 20, 16 << 20]
    rows: list[dict[str, object]] = []
    checks: list[dict[str, float]] = []
    chunk_rows: list[dict[str, object]] = []
    raw: list[dict[str, object]] = []
    straggler_rows: list[dict[str, object]] = []
    suffix = f"_h{hosts}" if hosts != 4 else ""  # write_results adds "_quick"
    if args.only is not None:
        suffix += "_partial"
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for rate in args.rates:
            with Cluster(hosts, rate) as cluster:
                check = cluster.check_link()
                checks.append(check.as_dict())
                print(f"[bench] link self-check at {rate}: {json.dumps(check.as_dict())}")
                if "chunks" not in args.skip:
                    numel = 25_557_032 if not args.quick else 11_689_512
                    steps = 3 if args.quick else 12
                    chunk_rows += sweep_chunks(cluster, sizes, numel, steps, tmp)
                if "train" in args.skip:
                    continue
                results = {}
                configs = [
                    c
                    for c in CONFIGS
                    if args.only is None or c[0] in (*args.only, "compute only", "AR-SGD (DDP)")
                ]
                for label, cfg, kind in configs:
                    print(f"[bench] {rate}: {label}", flush=True)
                    res = run_step(cluster, cfg, common, tmp / "step.json", timeout=900)
                    res["label"], res["kind"] = label, kind
                    results[label] = res
                    summary = {
                        key: [round(r[key], 3) for r in res["ranks"]]  # type: ignore[attr-defined]
                        for key in ("median_s", "fwd_bwd_median_s", "opt_step_median_s")
                    }
                    print(f"[bench] {rate}: {label}: {json.dumps(summary)}", flush=True)
                    raw.append(res)
                compute = iteration_time(results["compute only"])
                ddp = iteration_time(results["AR-SGD (DDP)"])
                for label, _, kind in configs:
                    res = results[label]
                    t = iteration_time(res)
                    fl = floor(kind, compute, int(res["model_bytes"]), parse_rate(rate), hosts)  # type: ignore[call-overload]
                    eff = cluster.rate_bps * check.efficiency
                    fl_meas = floor(kind, compute, int(res["model_bytes"]), eff, hosts)  # type: ignore[call-overload]
                    rows.append(
                        {
                            "rate_gbit": parse_rate(rate) / 1e9,
                            "label": label,
                            "seconds": round(t, 4),
                            "floor_s": round(fl, 4),
                            "vs_floor": round(t / fl, 3),
                            "vs_floor_measured_link": round(t / fl_meas, 3),
                            "speedup_vs_ddp": round(ddp / t, 3),
                            "floor_kind": kind,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
                if "straggler" in args.skip or rate != args.rates[0]:
                    continue
                for label, cfg in STRAGGLER:
                    print(f"[bench] {rate}: straggler, {label}", flush=True)
                    extra = ["--straggler-rank", str(hosts - 1), "--straggler-factor", "2"]
                    res = run_step(cluster, [*cfg, *extra], common, tmp / "s.json", timeout=900)
                    # a rate over the whole run: bounded staleness makes single
                    # iterations uneven, so the median would flatter the straggler
                    fast = iteration_time(res, exclude=hosts - 1, key="mean_s")
                    if label not in results:  # its no-straggler run, for the baseline
                        out = tmp / "b.json"
                        results[label] = run_step(cluster, cfg, common, out, timeout=900)
                    base = iteration_time(results[label], exclude=hosts - 1, key="mean_s")
                    straggler_rows.append(
                        {
                            "rate_gbit": parse_rate(rate) / 1e9,
                            "label": label,
                            "others_s_no_straggler": round(base, 4),
                            "others_s_with_straggler": round(fast, 4),
                            "rate_kept": round(base / fast, 3),
                            "straggler_s": round(
                                next(r["mean_s"] for r in res["ranks"] if r["rank"] == hosts - 1),  # type: ignore[attr-defined]
                                4,
                            ),
                        }
                    )
                    print(json.dumps(straggler_rows[-1]), flush=True)
    meta = {"hosts": hosts, "model": model, "iters": iters, "warmup": warmup, "backend": "gloo"}
    if rows:
        write_cluster_table(f"cluster{suffix}", rows, checks, raw, model, hosts, args.quick, meta)
        plot(rows, RESULTS / f"cluster{suffix}{'_quick' if args.quick else ''}.png", hosts=hosts)
        if not suffix and not args.quick:
            plot_home(rows, RESULTS / "home.png")  # the docs' home page figure
    goals = targets(rows, straggler_rows) if hosts == 4 else []
    if goals:
        write_targets(f"cluster_targets{suffix}", goals, quick=args.quick, meta=meta)
    if chunk_rows:
        write_results(
            f"cluster_chunks{suffix}",
            {"rows": chunk_rows},
            header=[
                "link",
                "chunk bytes",
                "mean s",
                "median s",
                "slowest s",
                "ideal s",
                "/ ideal",
                "busy CPU s per exchange",
                "CPU s per GB moved",
            ],
            rows=[
                [
                    f"{r['rate_gbit']:g} Gbit/s",
                    "one message" if r["chunk_bytes"] == 0 else f"{r['chunk_bytes'] >> 10} KiB",  # type: ignore[operator]
                    f"{r['mean_s']:.3f}",
                    f"{r['median_s']:.3f}",
                    f"{r['max_s']:.3f}",
                    f"{r['ideal_s']:.3f}",
                    f"{r['ratio']:.2f}",
                    f"{r['cpu_busy_s']:.3f}",
                    f"{r['cpu_s_per_gb']:.2f}",
                ]
                for r in chunk_rows
            ],
            title="One full-duplex exchange between two hosts, by chunk size",
            quick=args.quick,
            notes="PushSum on 2 ranks (each sends to the other every step), the model's "
            "float32 bytes each way, timed per step on the slower rank. One message per "
            "direction is fast or slow at random, step by step, so the mean (`/ ideal` uses "
            "it) is the honest figure; ideal = bytes / rate. Busy CPU is "
            "the whole machine's (both hosts' processes and the kernel's packet work, from "
            "/proc/stat) per exchange, with no compute running: the CPU that moving bytes "
            "costs here, which the floors do not count.",
            meta=meta,
        )
    if straggler_rows:
        write_results(
            f"cluster_straggler{suffix}",
            {"rows": straggler_rows},
            header=[
                "algorithm",
                "others s/iter",
                "with a 2x straggler",
                "rate kept",
                "straggler s/iter",
            ],
            rows=[
                [
                    r["label"],
                    f"{r['others_s_no_straggler']:.3f}",
                    f"{r['others_s_with_straggler']:.3f}",
                    f"{r['rate_kept']:.2f}",
                    f"{r['straggler_s']:.3f}",
                ]
                for r in straggler_rows
            ],
            title="A straggler on the emulated cluster",
            quick=args.quick,
            notes=f"Host {hosts - 1} computes 2x slower. Mean seconds per iteration over the "
            "timed iterations (a rate), of the slowest other host (AD-PSGD: the other "
            "active hosts), without and with the straggler.",
            meta=meta,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
