"""Running one configuration on a shared machine, and accounting for who else ran.

A run is repeated once when other processes took CPU during it (`timed_run`); the
machine's load can be waited out before a benchmark starts (`wait_idle`); the packages'
source is fingerprinted so an edit during a long run shows (`source_digest`). Used by
the cluster benchmarks that time configurations one after another.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_cluster import iteration_time, run_step  # noqa: E402
from emulate import Cluster  # noqa: E402


def source_digest() -> str:
    """A digest of the packages' source: a library edited mid-run shows up in the JSON."""
    digest = hashlib.sha256()
    for path in sorted((HERE.parents[1] / "packages").glob("*/src/**/*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def user_cpu() -> tuple[float, float]:
    """User CPU seconds so far: the whole machine's, and this process's with its ranks'."""
    ticks = Path("/proc/stat").read_text().splitlines()[0].split()[1:3]  # user, nice
    mine = os.times()
    return sum(map(int, ticks)) / os.sysconf("SC_CLK_TCK"), mine.user + mine.children_user


def other_load(since: tuple[float, float], wall_s: float) -> dict[str, float]:
    """Other processes' user CPU since ``since`` (a `user_cpu`): how idle the run was.

    Its ranks are this process's children (``ip netns exec`` execs them), so whatever
    user time the machine spent beyond theirs and its own went to someone else.
    """
    machine, mine = user_cpu()
    other = max(0.0, machine - since[0] - (mine - since[1]))
    return {"other_user_cpu_s": round(other, 1), "other_cores_mean": round(other / wall_s, 3)}


def wait_idle(minutes: float, below: float = 1.0) -> dict[str, object]:
    """Wait (up to ``minutes``, polling each minute) for the 1-minute load to drop."""
    start = time.monotonic()
    while loadavg() >= below and time.monotonic() - start < minutes * 60:
        print(f"[bench] waiting for an idle machine: load {loadavg():.2f}", flush=True)
        time.sleep(60)
    return {
        "waited_s": round(time.monotonic() - start),
        "loadavg_1m_at_start": loadavg(),
        "idle_at_start": loadavg() < below,
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
        t0, cpu0 = time.monotonic(), user_cpu()
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
