"""Compressed gossip against DDP's compression hooks on the emulated 4-host cluster.

Run as root: ``nox -s cluster_compression`` or
``python benchmarks/cluster/bench_compression.py``; the full run takes about 40 minutes
on the 2-core reference machine, ``--quick`` (2 hosts, ResNet-18, 3 iterations, a few
configurations) about 8. For each link rate (1 and 10 Gbit/s) it builds the cluster
(`emulate.Cluster`), checks the links, and runs `train_step.py` on every host, side by
side in one run:

- with the real model (ResNet-50, 100 classes, 32 px, one thread per rank), at batch 8
  and at batch 2: compute only; DDP; DDP with torch's bf16 hook; DDP with PowerSGD at
  rank 1 and 4; SGP and OSGP (``synch_freq`` 1), uncompressed and with each compressor;
- in GPU-host mode (``train_step.py --gpu-host``): forward and backward replaced by a
  sleep as long as the batch-8 model's measured forward and backward on this machine
  (``auto``, measured once by the first GPU-host run and reused), gradients by fixed
  random tensors, so the CPU only steps and moves bytes, as on a GPU host: compute only,
  SGP and OSGP with each compressor. DDP's hooks need a real backward, so they have no
  GPU-host rows.

Each row reports the slowest rank's median seconds per iteration, the bytes each rank
sends per iteration (measured ``bytes_sent`` for gossip; *computed* for DDP, ring
all-reduce: ``2 (n - 1) / n`` times the hook's payload), and the ratio to its floor,
with ``C`` the same mode's compute-only iteration and ``M'`` those bytes:
``C + M'/B`` for SGP and DDP (a step's send follows its compute), ``max(C, M'/B)`` for
OSGP (it overlaps), ``B`` the configured rate (and, in a second column, the rate the
link self-check reached, as in ``bench_cluster.py``). The targets of the issue are
checked on the same run. Writes ``benchmarks/results/cluster_compression.{json,md,png}``
and ``cluster_compression_targets.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_cluster import floor, iteration_time, run_step  # noqa: E402
from emulate import Cluster, LinkCheck, install_signal_teardown  # noqa: E402

from _results import RESULTS, write_results  # noqa: E402

#: The default run's compressors; ``--compressors ... lowrank:4`` adds more (and time).
COMPRESSORS = ("bf16", "int8", "topk:0.01", "lowrank:2")
POWERSGD_RANKS = (1, 4)
BATCHES = (8, 2)
GPU_HOST = "GPU host"
NAME = "cluster_compression"
#: OSGP's staleness bound in every OSGP row.
SYNCH_FREQ = 1


@dataclass(frozen=True, kw_only=True)
class Config:
    """One row's training configuration: its label, arguments and floor."""

    label: str
    args: tuple[str, ...]
    family: str  # "compute", "ddp", "sgp" or "osgp"
    compressor: str | None = None

    @property
    def floor_kind(self) -> str:
        """`bench_cluster.floor`'s kind; DDP's bytes are the hook's payload."""
        return {"compute": "compute", "ddp": "allreduce", "sgp": "serial", "osgp": "overlap"}[
            self.family
        ]


def configs(mode: str, compressors: Sequence[str], powersgd_ranks: Sequence[int]) -> list[Config]:
    """The rows of one mode (``"batch B"`` or `GPU_HOST`), compute only first."""
    rows = [Config(label="compute only", args=("--algorithm", "compute"), family="compute")]
    if mode != GPU_HOST:  # DDP's hooks need a real backward
        ar = ("--algorithm", "ar")
        rows.append(Config(label="DDP", args=ar, family="ddp"))
        rows.append(Config(label="DDP + bf16 hook", args=(*ar, "--ddp-hook", "bf16"), family="ddp"))
        for r in powersgd_ranks:
            psgd = (*ar, "--ddp-hook", "powersgd", "--powersgd-rank", str(r))
            rows.append(Config(label=f"DDP + PowerSGD rank {r}", args=psgd, family="ddp"))
    for algorithm in ("sgp", "osgp"):
        base: tuple[str, ...] = ("--algorithm", algorithm)
        if algorithm == "osgp":
            base += ("--synch-freq", str(SYNCH_FREQ))
        name = algorithm.upper()
        rows.append(Config(label=name, args=base, family=algorithm))
        for spec in compressors:
            rows.append(
                Config(
                    label=f"{name}, {spec}",
                    args=(*base, "--compression", spec),
                    family=algorithm,
                    compressor=spec,
                )
            )
    return rows


def bytes_per_iter(result: dict[str, object]) -> tuple[float, str]:
    """Bytes one rank sends per iteration, and whether they were measured or computed."""
    if "computed_bytes_per_iter" in result:
        return float(result["computed_bytes_per_iter"]), "computed"  # type: ignore[arg-type]
    ranks = result["ranks"]
    return max(float(r["gossip_bytes_per_step"]) for r in ranks), "measured"  # type: ignore[attr-defined]


def summarise(
    mode: str,
    done: list[tuple[Config, dict[str, object]]],
    check: LinkCheck,
    hosts: int,
) -> list[dict[str, object]]:
    """One row per run of one mode at one rate: time, bytes, floor, ratio to best DDP."""
    rate = check.rate_bps
    compute = iteration_time(done[0][1])
    times = {cfg.label: iteration_time(res) for cfg, res in done}
    best_ddp = min((times[cfg.label] for cfg, _ in done if cfg.family == "ddp"), default=None)
    rows = []
    for cfg, res in done:
        t = times[cfg.label]
        sent, source = bytes_per_iter(res)
        # floor's allreduce kind applies the ring's 2(n-1)/n to the payload itself
        floor_bytes = int(res.get("ddp_payload_bytes", sent))  # type: ignore[call-overload]
        fl = floor(cfg.floor_kind, compute, floor_bytes, rate, hosts)
        fl_link = floor(cfg.floor_kind, compute, floor_bytes, rate * check.efficiency, hosts)
        ranks = res["ranks"]
        rows.append(
            {
                "rate_gbit": rate / 1e9,
                "mode": mode,
                "label": cfg.label,
                "family": cfg.family,
                "compressor": cfg.compressor,
                "seconds": round(t, 4),
                "mean_s": round(iteration_time(res, key="mean_s"), 4),
                "bytes_per_iter": round(sent),
                "bytes_source": source,
                "floor_kind": cfg.floor_kind,
                "floor_s": round(fl, 4),
                "vs_floor": round(t / fl, 3),
                "vs_floor_measured_link": round(t / fl_link, 3),
                "best_ddp_vs_this": None if best_ddp is None else round(best_ddp / t, 3),
                "fwd_bwd_s": round(max(float(r["fwd_bwd_median_s"]) for r in ranks), 4),  # type: ignore[attr-defined]
                "opt_step_s": round(max(float(r["opt_step_median_s"]) for r in ranks), 4),  # type: ignore[attr-defined]
                "gpu_host_s": res.get("gpu_host_s"),
                "other_cores_mean": res.get("other_cores_mean"),
            }
        )
    return rows


def _source_digest() -> str:
    """A digest of the packages' source: a library edited mid-run shows up in the JSON."""
    digest = hashlib.sha256()
    for path in sorted((HERE.parents[1] / "packages").glob("*/src/**/*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _user_cpu() -> tuple[float, float]:
    """User CPU seconds so far: the whole machine's, and this process's with its ranks'."""
    ticks = Path("/proc/stat").read_text().splitlines()[0].split()[1:3]  # user, nice
    mine = os.times()
    return sum(map(int, ticks)) / os.sysconf("SC_CLK_TCK"), mine.user + mine.children_user


def other_load(since: tuple[float, float], wall_s: float) -> dict[str, float]:
    """Other processes' user CPU since ``since`` (a `_user_cpu`): how idle the run was.

    Its ranks are this process's children (``ip netns exec`` execs them), so whatever
    user time the machine spent beyond theirs and its own went to someone else.
    """
    machine, mine = _user_cpu()
    other = max(0.0, machine - since[0] - (mine - since[1]))
    return {"other_user_cpu_s": round(other, 1), "other_cores_mean": round(other / wall_s, 3)}


def wait_idle(minutes: float, below: float = 1.0) -> dict[str, object]:
    """Wait (up to ``minutes``, polling each minute) for the 1-minute load to drop."""
    start = time.monotonic()
    while _loadavg() >= below and time.monotonic() - start < minutes * 60:
        print(f"[bench] waiting for an idle machine: load {_loadavg():.2f}", flush=True)
        time.sleep(60)
    return {
        "waited_s": round(time.monotonic() - start),
        "loadavg_1m_at_start": _loadavg(),
        "idle_at_start": _loadavg() < below,
    }


def timed_run(
    cluster: Cluster, argv: list[str], args: argparse.Namespace, tmp: Path
) -> dict[str, object]:
    """`run_step`, run again (once) if other processes took ``--rerun-busy`` cores or more.

    Of the two, the run that shared the machine least is kept; both record how much
    CPU others took (`other_load`).
    """
    runs = []
    for _ in range(2):
        t0, cpu0 = time.monotonic(), _user_cpu()
        res = run_step(cluster, argv, args.common, tmp / "s.json", 900)
        wall = time.monotonic() - t0
        res.update(wall_s=round(wall, 1), **other_load(cpu0, wall))
        runs.append(res)
        print(
            f"[bench]   {iteration_time(res):.3f} s/iter ({wall:.0f} s run, others used "
            f"{res['other_cores_mean']:.2f} cores)",
            flush=True,
        )
        if float(res["other_cores_mean"]) < args.rerun_busy:  # type: ignore[arg-type]
            break
    best = min(runs, key=lambda r: float(r["other_cores_mean"]))  # type: ignore[arg-type]
    best["runs_made"] = len(runs)
    return best


def run_rate(
    rate: str, hosts: int, modes: list[tuple[str, list[str]]], args: argparse.Namespace, tmp: Path
) -> tuple[list[dict[str, object]], dict[str, float], list[dict[str, object]]]:
    """Every mode's rows at one rate: the summary rows, the link check, the raw runs."""
    rows, raw = [], []
    with Cluster(hosts, rate) as cluster:
        check = cluster.check_link()
        print(f"[bench] link self-check at {rate}: {json.dumps(check.as_dict())}", flush=True)
        for mode, mode_args in modes:
            done = []
            for cfg in configs(mode, args.compressors, args.powersgd_ranks):
                extra = list(mode_args)
                if mode == GPU_HOST:
                    extra += ["--gpu-host", str(args.gpu_host)]
                print(f"[bench] {rate}, {mode}: {cfg.label}", flush=True)
                res = timed_run(cluster, [*cfg.args, *extra], args, tmp)
                res.update(label=cfg.label, mode=mode)
                if mode == GPU_HOST and args.gpu_host == "auto":
                    args.gpu_host = res["gpu_host_s"]  # measured once, reused from here on
                done.append((cfg, res))
                raw.append(res)
            rows += summarise(mode, done, check, hosts)
    return rows, check.as_dict(), raw


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
    write_results(
        f"{name.replace(NAME, NAME + '_targets', 1)}",
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
        title="Targets for compressed gossip, from this run",
        quick=quick,
        meta=meta,
    )


def _machine_keys(meta: dict[str, object]) -> dict[str, object]:
    """``meta`` without the keys `write_results` adds itself (for a rewrite)."""
    from _results import machine_meta

    drop = set(machine_meta(quick=False))
    kept = {k: v for k, v in meta.items() if k not in drop}
    kept.setdefault("measured_utc", meta.get("measured_utc", meta.get("utc")))
    return kept


def results_name(args: argparse.Namespace) -> str:
    """The results files' stem: ``cluster_compression``, or a variant's.

    Another number of hosts is its own experiment, kept beside the 4-host one (with
    ``_gpu_host`` when only that mode ran); a run that leaves out a rate, a batch or the
    GPU-host mode is ``_partial`` (not committed).
    """
    partial = not args.quick and (
        args.rates != ["1gbit", "10gbit"]
        or args.skip_gpu_host
        or (args.hosts == 4 and args.batches != list(BATCHES))
    )
    stem = NAME
    if args.hosts != 4 and not args.quick:
        stem = f"{NAME}_{args.hosts}hosts" + ("" if args.batches else "_gpu_host")
    return stem + ("_partial" if partial else "")


def report_only(name: str) -> int:
    """Rebuild the tables, targets and plot of results ``name`` from its JSON (no runs)."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    data["meta"] = _machine_keys(data["meta"])
    write_tables(name, data, targets(data["rows"]), quick=False)
    plot(data["rows"], int(data["meta"]["hosts"]), RESULTS / f"{name}.png")
    return 0


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="2 hosts, ResNet-18, few configurations")
    p.add_argument("--rates", nargs="+", default=["1gbit", "10gbit"])
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--iters", type=int, default=6, help="timed iterations (default 6)")
    p.add_argument("--warmup", type=int, default=3, help="at least 3 (PowerSGD's plain steps)")
    p.add_argument(
        "--batches",
        type=int,
        nargs="*",
        default=list(BATCHES),
        help="batch sizes of the real-model modes (none: the GPU-host mode alone)",
    )
    p.add_argument("--compressors", nargs="+", default=list(COMPRESSORS))
    p.add_argument("--powersgd-ranks", type=int, nargs="+", default=list(POWERSGD_RANKS))
    p.add_argument("--gpu-host", default="auto", help="GPU-host sleep seconds, or auto")
    p.add_argument("--skip-gpu-host", action="store_true")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="first wait up to this long for a 1-minute load average below 1",
    )
    p.add_argument(
        "--rerun-busy",
        type=float,
        default=0.25,
        metavar="CORES",
        help="run a configuration again (once) if other processes used this many cores",
    )
    p.add_argument("--note", default="", help="free text recorded in the JSON's meta")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite tables and plot from the JSON of the run these arguments name",
    )
    args = p.parse_args(argv)
    if args.quick:  # smaller defaults; lists given on the command line stay
        args.hosts, args.iters = 2, 3
        if args.batches == list(BATCHES):
            args.batches = [8]
        if args.compressors == list(COMPRESSORS):
            args.compressors = ["int8", "lowrank:2"]
        if args.powersgd_ranks == list(POWERSGD_RANKS):
            args.powersgd_ranks = [1]
    args.gpu_host_given = args.gpu_host != "auto"
    args.model = "resnet18" if args.quick else "resnet50"
    args.common = ["--model", args.model, "--iters", str(args.iters), "--warmup", str(args.warmup)]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.report_only:
        return report_only(results_name(args))
    install_signal_teardown()
    idle = wait_idle(args.wait_idle)
    started, cpu0, source = time.monotonic(), _user_cpu(), _source_digest()
    modes = [(f"batch {b}", ["--batch", str(b)]) for b in args.batches]
    if not args.skip_gpu_host:
        modes.append((GPU_HOST, ["--batch", "8"]))
    rows: list[dict[str, object]] = []
    checks, raw = [], []
    with tempfile.TemporaryDirectory() as tmpdir:
        for rate in args.rates:
            got, check, runs = run_rate(rate, args.hosts, modes, args, Path(tmpdir))
            rows, raw = rows + got, raw + runs
            checks.append(check)
    name = results_name(args)
    meta = {
        "hosts": args.hosts,
        "model": args.model,
        "iters": args.iters,
        "warmup": args.warmup,
        "backend": "gloo",
        "batches": args.batches,
        "compressors": args.compressors,
        "powersgd_ranks": args.powersgd_ranks,
        "osgp_synch_freq": SYNCH_FREQ,
        "gpu_host_s": args.gpu_host if args.gpu_host != "auto" else None,
        "gpu_host_given": args.gpu_host_given,
        "run_s": round(time.monotonic() - started),
        "loadavg_1m_at_end": _loadavg(),
        **idle,
        **other_load(cpu0, time.monotonic() - started),
        "note": args.note,
        "library_source_digest": source,
        "library_source_changed_during_run": _source_digest() != source,
    }
    data = {"meta": meta, "rows": rows, "link_checks": checks, "runs": raw}
    goals = [] if args.quick else targets(rows)
    write_tables(name, data, goals, quick=args.quick)
    plot(rows, args.hosts, RESULTS / f"{name}{'_quick' if args.quick else ''}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
