"""A lost host and its replacement on the emulated 4-host cluster, against a full restart.

Run as root: ``nox -s cluster_faults`` or ``python benchmarks/cluster/bench_faults.py``
(about 8 minutes on the 2-core reference machine). It builds the cluster
(`emulate.Cluster`, 1 Gbit/s links), serves ``sgp-imagenet coordinator`` from host 0 as
a process of its own, and starts `train_faults.py` on every host: fault-tolerant SGP on
the cluster benchmarks' ResNet-50 (batch 8, 32 px, one thread per rank). Once the job
has run ``--kill-at`` steps, host 2's worker is killed with SIGKILL; once the survivors
have run ``--restart-at`` steps, the same command starts again on host 2 and joins the
running job, which ends at ``--steps``.

From the workers' own logs (one line per iteration, with the generation it ran in) it
reports:

- **time to detect**: from the kill to the first survivor entering the generation
  change;
- **time to reconfigure**: the longest survivor's change, from entering it to gossiping
  in the new group;
- **throughput**: images per second of the whole job (median iteration time of the
  slowest member, times members, times the batch) with 4 members before the kill, 3
  after it and 4 again after the join; the goal for the survivors is at least 3/4 of the
  4-host rate;
- **time to join**: from starting the replacement process to its first iteration, and
  how much of that the generation change took;
- **a torchrun restart of the same job, measured** on the same cluster in the same run
  (`torchrun_restart.py`): one torchrun per host runs the job without fault tolerance,
  checkpointing every ``--checkpoint-every`` steps; host 2's worker is killed with
  SIGKILL half-way between two checkpoints (``--torchrun-kill-at``), and torchrun
  restarts every worker from the last checkpoint. Its time lost runs from the kill until
  the job has again done as many steps as at the kill; the gossip job's, from the kill
  until the survivors gossip again (detection and reconfiguration). The gossip job then
  runs at 3 members, a quarter of its throughput less, until the replacement joins;
  the torchrun job's restarted worker is back at once (the host itself was not lost).

Four emulated hosts share 2 CPU cores with the kernel's network stack: with one host
gone, the other three get more CPU each, so their iterations may get faster; the report
says when CPU, not the link, sets the pace. Writes ``benchmarks/results/cluster_faults``
``.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torchrun_restart  # noqa: E402
from emulate import Cluster, install_signal_teardown  # noqa: E402

from _results import RESULTS, write_results  # noqa: E402

NAME = "cluster_faults"
HOSTS, VICTIM, PORT = 4, 2, 29400


def _rows(out: Path) -> dict[int, list[dict[str, Any]]]:
    """Every member's iteration lines so far."""
    rows = {}
    for path in sorted(out.glob("member*.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows[int(path.stem.removeprefix("member"))] = lines
    return rows


def _wait(out: Path, steps: int, procs: list[Any], timeout: float) -> None:
    """Until some member has run ``steps`` steps."""
    deadline = time.monotonic() + timeout
    while max((r[-1]["step"] + 1 for r in _rows(out).values() if r), default=0) < steps:
        if time.monotonic() > deadline or all(p.poll() is not None for p in procs):
            raise RuntimeError(f"the job did not reach step {steps}")
        time.sleep(0.2)


def _member_on(out: Path, host: int) -> tuple[int, int]:
    """The member id and pid of the first worker started on ``host``."""
    for path in sorted(out.glob("member*.proc")):
        proc = json.loads(path.read_text())
        if proc["host"] == host:
            return int(path.stem.removeprefix("member")), int(proc["pid"])
    raise RuntimeError(f"no worker reported host {host}")


def run(cluster: Cluster, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run the fault-tolerant job with its kill and restart; the raw events."""
    worker = [
        sys.executable, str(HERE / "train_faults.py"), "--coordinator",
        f"{Cluster.address(0)}:{PORT}", "--world-size", str(HOSTS), "--steps",
        str(args.steps), "--gossip-timeout", str(args.gossip_timeout), "--out-dir", str(out),
    ]  # fmt: skip
    script = Path(sys.executable).parent / "sgp-imagenet"
    coordinator = subprocess.Popen(
        ["ip", "netns", "exec", cluster.namespace(0), str(script), "coordinator",
         "--port", str(PORT), "--host", Cluster.address(0)],
        stdout=(out / "coordinator.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    time.sleep(2.0)
    launched = time.time()
    procs = [cluster.spawn(r, worker) for r in range(HOSTS)]
    try:
        _wait(out, args.kill_at, procs, timeout=900)
        victim_member, pid = _member_on(out, VICTIM)
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        procs[VICTIM].wait()
        _wait(out, args.restart_at, procs, timeout=900)
        restarted = time.time()
        procs.append(cluster.spawn(VICTIM, worker))
        for p in procs:
            p.wait(timeout=1800)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        coordinator.send_signal(signal.SIGTERM)
        coordinator.wait(timeout=30)
    codes = [p.returncode for p in procs]
    summaries = {
        int(p.stem.removeprefix("member")): json.loads(p.read_text())
        for p in out.glob("member*.json")
    }
    return {"launched": launched, "killed": killed, "restarted": restarted,
            "victim_member": victim_member, "codes": codes,
            "rows": {str(m): r for m, r in _rows(out).items()},
            "members": {str(m): s for m, s in summaries.items()}}  # fmt: skip


def _median_dt(rows: dict[int, list[dict[str, Any]]], since: float, until: float) -> float:
    """The slowest member's median iteration time over iterations ending in (since, until]."""
    medians = []
    for lines in rows.values():
        dts = [r["dt"] for r in lines if since < r["t"] <= until]
        if len(dts) >= 3:
            medians.append(statistics.median(dts))
    return max(medians) if medians else float("nan")


def analyse(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The figures the report gives, from the raw events."""
    rows = {int(m): r for m, r in raw["rows"].items()}
    members = {int(m): s for m, s in raw["members"].items()}
    victim = raw["victim_member"]
    joiner = next(m for m, s in members.items() if s["joined"])
    survivors = [m for m in members if m not in (victim, joiner)]
    loss_changes = [c for m in survivors for c in members[m]["changes"] if victim in c["lost"]]
    join_changes = [c for m in survivors for c in members[m]["changes"] if joiner in c["joined"]]
    detect = min(c["at"] for c in loss_changes) - raw["killed"]
    reconfigure = max(c["seconds"] for c in loss_changes)
    lost_at = min(c["at"] + c["seconds"] for c in loss_changes)
    joined_at = max(c["at"] + c["seconds"] for c in join_changes)
    first = min(r[0]["t"] for r in rows.values() if r)
    end = max(r[-1]["t"] for r in rows.values() if r)
    dt4 = _median_dt({m: rows[m] for m in [*survivors, victim]}, first, raw["killed"])
    dt3 = _median_dt({m: rows[m] for m in survivors}, lost_at, raw["restarted"])
    dt4b = _median_dt(rows, joined_at, end)
    rate = lambda dt, n: n * args.batch / dt  # noqa: E731
    joiner_first = rows[joiner][0]["t"]
    return {
        "detect_s": detect,
        "reconfigure_s": reconfigure,
        "images_per_s_4": rate(dt4, 4),
        "images_per_s_3": rate(dt3, 3),
        "images_per_s_4_after_join": rate(dt4b, 4),
        "survivors_vs_four": rate(dt3, 3) / rate(dt4, 4),
        "iteration_s": {"4": dt4, "3": dt3, "4 after join": dt4b},
        "join_process_s": joiner_first - raw["restarted"],
        "join_change_s": max(c["seconds"] for c in join_changes),
        "gossip_lost_s": detect + reconfigure,
        "gossip_lost_iterations": (detect + reconfigure) / dt4,
        "codes": raw["codes"],
    }


def _progress(rows: list[dict[str, Any]], since: float) -> tuple[list[float], list[int]]:
    """Steps done against seconds since ``since``, from one worker's iteration lines."""
    return [r["t"] - since for r in rows], [r["step"] + 1 for r in rows]


def plot(raw: dict[str, Any], path: Path) -> None:
    """Iteration time and membership against wall-clock time; both jobs' progress."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {int(m): r for m, r in raw["rows"].items()}
    t0 = raw["launched"]
    fig, (ax, bx, cx) = plt.subplots(3, 1, figsize=(9, 9), height_ratios=[3, 1, 3])
    for m, lines in sorted(rows.items()):
        ax.plot([r["t"] - t0 for r in lines], [r["dt"] for r in lines], ".", ms=3,
                label=f"member {m}")  # fmt: skip
    every = sorted((r["t"] - t0, r["members"]) for lines in rows.values() for r in lines)
    bx.step([t for t, _ in every], [n for _, n in every], where="post")
    for a in (ax, bx):
        a.axvline(raw["killed"] - t0, color="red", ls="--", lw=1)
        a.axvline(raw["restarted"] - t0, color="green", ls="--", lw=1)
    ax.sharex(bx)
    ax.set_ylabel("iteration time (s)")
    ax.set_title("Fault-tolerant SGP, 4 emulated hosts at 1 Gbit/s: host 2 killed (red), "
                 "restarted (green)", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7, markerscale=3)
    bx.set_ylabel("members")
    bx.set_xlabel("wall-clock time since launch (s)")
    bx.set_ylim(0, 5)
    survivor = min(m for m in rows if m != raw["victim_member"])
    cx.plot(*_progress(rows[survivor], raw["killed"]), ".-", ms=3, lw=1,
            label=f"fault-tolerant gossip (member {survivor})")  # fmt: skip
    torchrun = raw["torchrun"]
    cx.plot(*_progress(torchrun["rows"]["0"], torchrun["killed"]), ".-", ms=3, lw=1,
            label="torchrun restart from the last checkpoint (rank 0)")  # fmt: skip
    cx.axvline(0, color="red", ls="--", lw=1)
    cx.set_xlabel("seconds since host 2's worker was killed")
    cx.set_ylabel("steps done")
    cx.set_title("The same job without fault tolerance under torchrun, killed the same way",
                 fontsize=9)  # fmt: skip
    cx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", default="1gbit")
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--kill-at", type=int, default=25)
    p.add_argument("--restart-at", type=int, default=45)
    p.add_argument("--gossip-timeout", type=float, default=30.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--torchrun-steps", type=int, default=45,
                   help="the torchrun job's steps")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=20,
                   help="the torchrun job's steps between checkpoints")  # fmt: skip
    p.add_argument("--torchrun-kill-at", type=int, default=30,
                   help="the torchrun job's step at the kill")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("/tmp/gossip-bench-faults"))
    return p.parse_args(argv)


def table(f: dict[str, Any], t: dict[str, Any], batch: int) -> list[list[str]]:
    """The report's rows: the fault-tolerant job ``f`` beside the torchrun restart ``t``."""
    t_rate = 4 * batch / t["iteration_s"]
    return [
        ["time to detect the failure and react (s)", f"{f['detect_s']:.2f}",
         f"{t['restart_s']:.2f} (kill to all 4 workers restarted)"],
        ["time to reconfigure / cold start (s)", f"{f['reconfigure_s']:.2f}",
         f"{t['cold_start_s']:.2f} (of which loading checkpoints {t['load_s']:.2f})"],
        ["iterations redone", "0",
         f"{t['redone_iterations']} (checkpoint every {t['checkpoint_every']})"],
        ["**time lost to the failure (s)**", f"**{f['gossip_lost_s']:.2f}**",
         f"**{t['lost_s']:.2f}**"],
        ["  in 4-host iterations", f"{f['gossip_lost_iterations']:.1f}",
         f"{t['lost_s'] / t['iteration_s']:.1f}"],
        ["images/s, 4 members", f"{f['images_per_s_4']:.2f}", f"{t_rate:.2f}"],
        ["images/s until the replacement joins", f"{f['images_per_s_3']:.2f} (3 survivors, "
         f"{f['survivors_vs_four']:.2f} of the 4-member rate; goal 0.75)",
         "all 4 restarted together"],
        ["images/s, 4 again after the join", f"{f['images_per_s_4_after_join']:.2f}", ""],
        ["replacement: process start to first iteration (s)",
         f"{f['join_process_s']:.2f} (generation change {f['join_change_s']:.2f})", ""],
        ["saving a checkpoint, every rank (s)", "not needed to survive",
         f"{t['save_s']:.2f} every {t['checkpoint_every']} steps"],
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    install_signal_teardown()
    shutil.rmtree(args.out, ignore_errors=True)
    gossip_out, torchrun_out = args.out / "gossip", args.out / "torchrun"
    for d in (gossip_out, torchrun_out):
        d.mkdir(parents=True)
    with Cluster(HOSTS, args.rate) as cluster:
        link = cluster.check_link().as_dict()
        raw = run(cluster, args, gossip_out)
        raw["link"] = link
        raw["torchrun"] = torchrun_restart.run(cluster, args, torchrun_out, VICTIM)
    shutil.rmtree(torchrun_out / "checkpoints", ignore_errors=True)
    (RESULTS / f"{NAME}_raw.json").write_text(json.dumps(raw))
    figures = analyse(raw, args)
    figures["torchrun"] = {**torchrun_restart.analyse(raw["torchrun"]),
                           "checkpoint_every": args.checkpoint_every}  # fmt: skip
    plot(raw, RESULTS / f"{NAME}.png")
    f, t = figures, figures["torchrun"]
    cpu = f["iteration_s"]["3"] < f["iteration_s"]["4"]
    notes = (
        "Both jobs ran on the same emulated cluster in this run, one after the other: the "
        "same SGP training, host 2's worker killed with SIGKILL. Left, with gossip-nn's "
        "fault tolerance (gossip timeout "
        f"{args.gossip_timeout:g} s); right, without it under one torchrun per host, which "
        "restarts every worker from the last checkpoint (torchrun restarted the workers "
        f"{t['attempts'] - 1} time{'s' if t['attempts'] != 2 else ''}). Four emulated hosts "
        "share 2 CPU cores with the kernel's network stack. "
        + ("The 3 survivors iterate faster than the 4 did: CPU, not the link, sets the pace "
           "here." if cpu else "The 3 survivors do not iterate faster than the 4 did.")
    )  # fmt: skip
    write_results(NAME, {"figures": figures, "args": {k: str(v) for k, v in vars(args).items()}},
                  header=["", "fault-tolerant gossip", "torchrun restart"],
                  rows=table(f, t, args.batch), quick=False, notes=notes,
                  title="A lost host, 4 emulated hosts at 1 Gbit/s: fault-tolerant SGP "
                        "against a torchrun restart (ResNet-50, batch 8)")  # fmt: skip
    good = all(c == 0 for i, c in enumerate(raw["codes"]) if i != VICTIM)
    return 0 if good and all(c == 0 for c in t["codes"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
