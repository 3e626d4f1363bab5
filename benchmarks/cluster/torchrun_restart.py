"""The torchrun half of the fault benchmark: the same job restarted the way torchrun does it.

One ``torchrun`` per emulated host (the static rendezvous: ``--node-rank``,
``--master-addr`` host 0, ``--max-restarts``), each starting `train_restart.py`: SGP
without fault tolerance, saving a checkpoint every ``--checkpoint-every`` steps. Once the
job has run ``--torchrun-kill-at`` steps, host 2's worker is killed with SIGKILL, as in
the gossip half. The other workers fail on their next exchange with it, every agent
restarts its worker, and the job goes on from the newest common checkpoint to
``--torchrun-steps``. From the workers' logs:

- **restart**: from the kill to the last of the four new worker processes starting
  (torchrun noticing the failures and restarting every worker);
- **cold start**: from there to the first iteration of the restarted job (importing
  torch, forming the group, loading the checkpoints);
- **iterations redone**: the steps done since the last checkpoint, run again;
- **time lost**: from the kill until the restarted job has again done as many steps
  as it had at the kill; all of the above together.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from emulate import Cluster

HERE = Path(__file__).resolve().parent
#: The static rendezvous's port on host 0 (the gossip half's coordinator uses another).
PORT = 29420


def _rows(out: Path) -> dict[int, list[dict[str, Any]]]:
    rows = {}
    for path in sorted(out.glob("rank*.jsonl")):
        if path.name.endswith(".saves.jsonl"):
            continue
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows[int(path.name.split(".")[0].removeprefix("rank"))] = lines
    return rows


def _procs(out: Path) -> list[dict[str, Any]]:
    procs = []
    for path in sorted(out.glob("rank*.a*.proc")):
        rank, attempt = path.name.split(".")[:2]
        proc = json.loads(path.read_text())
        proc.update(rank=int(rank.removeprefix("rank")), attempt=int(attempt.removeprefix("a")))
        procs.append(proc)
    return procs


def run(cluster: Cluster, args: argparse.Namespace, out: Path, victim: int) -> dict[str, Any]:
    """Start one torchrun per host, kill ``victim``'s worker mid-run; the raw events."""
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    hosts = cluster.hosts
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", str(hosts),
        "--nproc-per-node", "1", "--master-addr", Cluster.address(0), "--master-port",
        str(PORT), "--max-restarts", "3", str(HERE / "train_restart.py"),
        "--steps", str(args.torchrun_steps), "--checkpoint-every", str(args.checkpoint_every),
        "--gossip-timeout", str(args.gossip_timeout), "--batch", str(args.batch),
        "--out-dir", str(out), "--checkpoint-dir", str(ckpt),
    ]  # fmt: skip
    agents = []
    for host in range(hosts):
        cmd = ["ip", "netns", "exec", cluster.namespace(host), *argv[:3], "--node-rank",
               str(host), *argv[3:]]  # fmt: skip
        log = (out / f"agent{host}.log").open("w")
        env = cluster.env(host, {"BENCH_HOST": str(host)})
        agents.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    launched = time.time()
    try:
        deadline = time.monotonic() + 900
        while _done(out, victim) < args.torchrun_kill_at:
            if time.monotonic() > deadline or any(a.poll() is not None for a in agents):
                raise RuntimeError(f"the torchrun job did not reach step {args.torchrun_kill_at}")
            time.sleep(0.1)
        pid = next(p["pid"] for p in _procs(out) if p["rank"] == victim and p["attempt"] == 0)
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        for a in agents:
            a.wait(timeout=1800)
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    saves = [
        json.loads(line)
        for path in out.glob("rank*.saves.jsonl")
        for line in path.read_text().splitlines()
    ]
    return {"launched": launched, "killed": killed, "codes": [a.returncode for a in agents],
            "rows": {str(r): v for r, v in _rows(out).items()}, "procs": _procs(out),
            "saves": saves}  # fmt: skip


def _done(out: Path, rank: int) -> int:
    """Steps ``rank`` has finished so far (in the first attempt)."""
    path = out / f"rank{rank}.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["step"] + 1 if lines else 0


def analyse(raw: dict[str, Any]) -> dict[str, Any]:
    """The figures of the torchrun restart, from the raw events."""
    rows = {int(r): v for r, v in raw["rows"].items()}
    killed = raw["killed"]
    attempts = {p["attempt"] for p in raw["procs"]}
    restarted = [p for p in raw["procs"] if p["attempt"] == max(attempts)]
    # Steps the job had done at the kill: the slowest rank's count (a step needs them all).
    at_kill = min(max((r["step"] + 1 for r in v if r["t"] <= killed), default=0)
                  for v in rows.values())  # fmt: skip
    resumed = min(p["resumed_from"] for p in restarted)
    after = {r: [x for x in v if x["attempt"] == max(attempts)] for r, v in rows.items()}
    first = max(v[0]["t"] - v[0]["dt"] for v in after.values())
    back = max(next(x["t"] for x in v if x["step"] + 1 >= at_kill) for v in after.values())
    last_start = max(p["started"] for p in restarted)
    before = [x["dt"] for v in rows.values() for x in v if x["attempt"] == 0 and x["step"] > 0]
    return {
        "attempts": len(attempts),
        "restart_s": last_start - killed,
        "cold_start_s": first - last_start,
        "load_s": max(p["load_s"] for p in restarted),
        "steps_at_kill": at_kill,
        "resumed_from": resumed,
        "redone_iterations": at_kill - resumed,
        "lost_s": back - killed,
        "iteration_s": statistics.median(before),
        "save_s": statistics.median(s["s"] for s in raw["saves"]) if raw["saves"] else 0.0,
        "codes": raw["codes"],
    }
