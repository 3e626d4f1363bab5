"""One model per node on the emulated cluster: 2 hosts x 2 processes, 1 Gbit/s links.

Each host runs two ranks that share its link (traffic between them stays inside the
host, as on NVLink). Compared, side by side in one run, with ResNet-50 as in
``bench_cluster.py``:

- compute only (the same 4 processes, no communication);
- AR-SGD (DDP over all 4 ranks);
- SGP with every process a gossip participant (4 ranks, each sends the whole model);
- SGP with ``nprocs_per_node=2``: DDP inside the host, each process gossips half the
  model to the other host, so a host sends one model per step.

The floor for the hierarchical run is compute + M/B (one model over the host's link).
Writes ``results/cluster_hierarchy.{json,md,png}``. Needs root:
``sudo python benchmarks/cluster/bench_hierarchy.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_cluster import iteration_time  # noqa: E402
from emulate import Cluster, install_signal_teardown, parse_rate  # noqa: E402

from _results import RESULTS, write_results  # noqa: E402

HOSTS, PER_HOST = 2, 2
CONFIGS: list[tuple[str, list[str]]] = [
    ("compute only", ["--algorithm", "compute"]),
    ("AR-SGD (DDP)", ["--algorithm", "ar"]),
    ("SGP, every process gossips", ["--algorithm", "sgp"]),
    ("SGP, one model per node", ["--algorithm", "sgp", "--nprocs-per-node", "2"]),
]


def _run(cluster: Cluster, args: list[str], common: list[str], out: Path) -> dict[str, object]:
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "train_step.py"), *args, *common, "--out", str(out)]
    codes = cluster.run_all(cmd, timeout=900, procs_per_host=PER_HOST)
    if any(codes) or not out.exists():
        raise RuntimeError(f"train_step.py {' '.join(args)} failed: exit codes {codes}")
    result: dict[str, object] = json.loads(out.read_text())
    return result


def _plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [str(r["label"]) for r in rows]
    ax.barh(labels, [float(r["seconds"]) for r in rows], color="#4c72b0")  # type: ignore[arg-type]
    floor_s = float(rows[-1]["floor_s"])  # type: ignore[arg-type]
    ax.axvline(floor_s, color="k", ls="--", lw=1, label="floor: compute + M/B")
    ax.invert_yaxis()
    ax.set_xlabel("seconds per iteration (slowest rank, median)")
    ax.set_title("2 hosts x 2 processes, 1 Gbit/s, ResNet-50")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="ResNet-18, 3 iterations")
    p.add_argument("--rate", default="1gbit")
    p.add_argument("--report-only", action="store_true", help="redraw the plot from the saved JSON")
    args = p.parse_args(argv)
    if args.report_only:
        saved = json.loads((RESULTS / "cluster_hierarchy.json").read_text())
        _plot(saved["rows"], RESULTS / "cluster_hierarchy.png")
        return 0
    install_signal_teardown()
    model, iters, warmup = ("resnet18", 3, 1) if args.quick else ("resnet50", 10, 3)
    common = ["--model", model, "--iters", str(iters), "--warmup", str(warmup)]
    rate = parse_rate(args.rate)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmpdir, Cluster(HOSTS, args.rate) as cluster:
        check = cluster.check_link()
        print(f"[bench] link self-check: {json.dumps(check.as_dict())}", flush=True)
        for label, cfg in CONFIGS:
            print(f"[bench] {label}", flush=True)
            results[label] = _run(cluster, cfg, common, Path(tmpdir) / "step.json")
    compute = iteration_time(results["compute only"])
    ddp = iteration_time(results["AR-SGD (DDP)"])
    model_bytes = int(results["compute only"]["model_bytes"])  # type: ignore[call-overload]
    floor_s = compute + model_bytes * 8 / rate
    rows = []
    for label, _ in CONFIGS:
        res = results[label]
        t = iteration_time(res)
        per_proc = [float(r["gossip_bytes_per_step"]) for r in res["ranks"]]  # type: ignore[attr-defined]
        rows.append(
            {
                "label": label,
                "seconds": round(t, 4),
                "floor_s": round(floor_s, 4),
                "vs_floor": round(t / floor_s, 3),
                "speedup_vs_ddp": round(ddp / t, 3),
                "gossip_mb_per_process_step": round(max(per_proc) / 1e6, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    name = "cluster_hierarchy"
    png = RESULTS / (f"{name}_quick.png" if args.quick else f"{name}.png")
    _plot(rows, png)
    write_results(
        name,
        {"rows": rows, "link_check": check.as_dict(), "raw": list(results.values())},
        header=[
            "setting",
            "s/iter",
            "/ floor (compute + M/B)",
            "DDP / this",
            "gossip MB sent per process per step",
        ],
        rows=[
            [
                r["label"],
                f"{r['seconds']:.3f}",
                f"{r['vs_floor']:.2f}",
                f"{r['speedup_vs_ddp']:.2f}",
                f"{r['gossip_mb_per_process_step']:.1f}",
            ]
            for r in rows
        ],
        title="One model per node: 2 hosts x 2 processes on 1 Gbit/s links",
        quick=args.quick,
        notes=(
            f"{model}, batch 8 at 32x32, one thread per process, gloo; median of {iters} "
            f"iterations after {warmup}; M = {model_bytes / 1e6:.1f} MB; link self-check "
            f"efficiency {check.efficiency:.2f}. The floor counts one model over a host's "
            "link per step."
        ),
        meta={"hosts": HOSTS, "procs_per_host": PER_HOST, "rate_bps": rate, "model": model},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
