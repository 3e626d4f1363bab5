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
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from compression_configs import (  # noqa: E402
    BATCHES,
    COMPRESSORS,
    GPU_HOST,
    POWERSGD_RANKS,
    SYNCH_FREQ,
    configs,
    summarise,
)
from compression_report import NAME, plot, report_only, targets, write_tables  # noqa: E402
from emulate import Cluster, install_signal_teardown  # noqa: E402
from run_accounting import (  # noqa: E402
    loadavg,
    other_load,
    source_digest,
    timed_run,
    user_cpu,
    wait_idle,
)

from _results import RESULTS  # noqa: E402


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
    started, cpu0, source = time.monotonic(), user_cpu(), source_digest()
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
        "loadavg_1m_at_end": loadavg(),
        **idle,
        **other_load(cpu0, time.monotonic() - started),
        "note": args.note,
        "library_source_digest": source,
        "library_source_changed_during_run": source_digest() != source,
    }
    data = {"meta": meta, "rows": rows, "link_checks": checks, "runs": raw}
    goals = [] if args.quick else targets(rows)
    write_tables(name, data, goals, quick=args.quick)
    plot(rows, args.hosts, RESULTS / f"{name}{'_quick' if args.quick else ''}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
