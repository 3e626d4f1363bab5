"""Exit codes of finished runs: does ``sgp-imagenet train`` exit 0 every time?

torch 2.14's gloo has been seen to abort a process at interpreter exit after
point-to-point work (SIGABRT, ``terminate called without an active exception``), which a
scheduler reads as a failed job. This benchmark runs ``--runs`` consecutive short 2-rank
training runs through the real entry point, one at a time::

    torchrun --standalone --nproc-per-node 2 --no-python sgp-imagenet train \\
        --dataset digits --arch small-cnn --epochs 1 --max-iters-per-epoch 5 \\
        --batch-size 16 --workers 0 --algorithm A --log-dir <fresh dir>

cycling the algorithms, with ``OMP_NUM_THREADS=1``. For each run it records torchrun's
exit code, each failed worker's exit code as torchrun's failure summary reports it
(``-6`` is SIGABRT), whether the output shows an abort (``terminate called``,
``SIGABRT``, ``Signal 6``) and the wall time; it writes ``results/exit_codes.json`` and
``results/exit_codes.md``. ``benchmarks/exit_probe.py`` is the companion that isolates the
abort with plain ``batch_isend_irecv`` and compares teardown orders.

Run: ``python benchmarks/bench_exit.py [--runs 100] [--algorithms sgp,osgp,...]
[--quick]`` (about 12 s a run on 2 CPU cores; ``--quick`` makes it 10 runs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _results import RESULTS, write_results
from gossip_nn import ALGORITHMS

RUNS, QUICK_RUNS = 100, 10
TIMEOUT = 300.0  # seconds for one run; a hang counts as a failure, not an abort

# What an abort at exit looks like in the output of torchrun and its workers.
ABORT_MARKERS = ("terminate called", "SIGABRT", "Signal 6")
# torchrun's failure summary: one block per failed worker.
_FAILURE = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n(?:[^\n]*\n)*?\s*exitcode\s*:\s*(-?\d+)")
_SIGNAL = re.compile(r"Signal (\d+) \((SIG\w+)\) received by PID (\d+)")


def find_tool(name: str) -> str:
    """``name`` beside this interpreter (a venv's ``bin/``), else on ``PATH``."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"cannot find {name} beside {sys.executable} or on PATH")
    return found


def parse_output(text: str, codes: Mapping[int, int] | None = None) -> dict[str, Any]:
    """What torchrun's output says about its workers' ends.

    Args:
        text: The merged output of the run.
        codes: Each worker's exit code, when the caller knows them (plain processes
            rather than torchrun); else they are read from torchrun's failure summary.

    Returns:
        ``worker_exitcodes`` (rank -> exit code, for the workers torchrun reports as
        failed, or ``codes``; a negative code is the signal that killed it), ``signals``
        (the ``Signal N (SIGX)`` lines), ``markers`` (which of ``ABORT_MARKERS`` occur)
        and ``aborted`` (any marker, or a worker killed by signal 6).
    """
    if codes is None:
        codes = {int(rank): int(code) for rank, code in _FAILURE.findall(text)}
    signals = sorted({f"{num} ({name})" for num, name, _ in _SIGNAL.findall(text)})
    markers = [m for m in ABORT_MARKERS if m in text]
    aborted = bool(markers) or any(code == -6 for code in codes.values())
    return {
        "worker_exitcodes": {str(r): c for r, c in sorted(codes.items())},
        "signals": signals,
        "markers": markers,
        "aborted": aborted,
    }


def run_logged(command: Sequence[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``command``; its exit code, merged output, wall time and whether it timed out."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            list(command),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        rc, output, timed_out = proc.returncode, proc.stdout, False
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        rc, timed_out = -9, True
    return {
        "rc": rc,
        "output": output,
        "seconds": round(time.perf_counter() - start, 2),
        "timed_out": timed_out,
    }


def outcome(result: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a run's record that every exit benchmark keeps.

    Args:
        result: What `run_logged` returned.
        info: What `parse_output` read from its output.
    """
    return {
        "rc": result["rc"],
        "aborted": info["aborted"],
        "timed_out": result["timed_out"],
        "seconds": result["seconds"],
        "worker_exitcodes": info["worker_exitcodes"],
        "signals": info["signals"],
        "markers": info["markers"],
    }


def child_env() -> dict[str, str]:
    """This environment with one OpenMP thread per process (2 ranks share 2 cores)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def train_command(torchrun: str, script: str, algorithm: str, log_dir: Path) -> list[str]:
    return [
        torchrun,
        "--standalone",
        "--nproc-per-node",
        "2",
        "--no-python",
        script,
        "train",
        "--dataset",
        "digits",
        "--arch",
        "small-cnn",
        "--epochs",
        "1",
        "--max-iters-per-epoch",
        "5",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--algorithm",
        algorithm,
        "--progress",
        "off",
        "--log-dir",
        str(log_dir),
    ]


def tally(runs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Counts over ``runs``: runs, exit 0, aborts, other failures (nonzero, no abort)."""
    return {
        "runs": len(runs),
        "exit0": sum(r["rc"] == 0 for r in runs),
        "aborts": sum(r["aborted"] for r in runs),
        "other_failures": sum(r["rc"] != 0 and not r["aborted"] for r in runs),
        "aborted_with_exit0": sum(r["rc"] == 0 and r["aborted"] for r in runs),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help=f"default {RUNS}")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="cycled in order")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds a run")
    parser.add_argument(
        "--keep-failed", type=Path, default=None, help="save failed runs' output here"
    )
    args = parser.parse_args(argv)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    bad = sorted(set(algorithms) - set(ALGORITHMS))
    if bad or not algorithms:
        parser.error(f"--algorithms: choose from {','.join(ALGORITHMS)}; got {bad or 'none'}")
    n = args.runs if args.runs is not None else (QUICK_RUNS if args.quick else RUNS)
    torchrun, script = find_tool("torchrun"), find_tool("sgp-imagenet")
    env = child_env()
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-exit-") as tmp:
        for i in range(n):
            algorithm = algorithms[i % len(algorithms)]
            log_dir = Path(tmp) / f"run{i:03d}-{algorithm}"
            result = run_logged(
                train_command(torchrun, script, algorithm, log_dir), env, args.timeout
            )
            info = parse_output(result["output"])
            record = {
                "run": i,
                "algorithm": algorithm,
                **outcome(result, info),
                "summary_written": (log_dir / "summary.json").exists(),
            }
            if result["rc"] != 0 or info["aborted"]:
                record["output_tail"] = result["output"][-3000:]
                if args.keep_failed is not None:
                    args.keep_failed.mkdir(parents=True, exist_ok=True)
                    path = args.keep_failed / f"run{i:03d}-{algorithm}.log"
                    path.write_text(result["output"])
            runs.append(record)
            flag = "ABORT" if info["aborted"] else ("ok" if result["rc"] == 0 else "FAIL")
            extra = f" workers {info['worker_exitcodes']}" if info["worker_exitcodes"] else ""
            print(
                f"[{i + 1}/{n}] {algorithm:6s} rc={result['rc']} {flag} "
                f"{result['seconds']:.1f}s{extra}",
                flush=True,
            )
    total = round(time.perf_counter() - started, 1)
    per_algorithm = {a: tally([r for r in runs if r["algorithm"] == a]) for a in algorithms}
    totals = tally(runs)
    header = ["algorithm", "runs", "exit 0", "aborts (SIGABRT)", "other failures", "mean s"]
    rows: list[list[object]] = []
    for a in algorithms:
        t = per_algorithm[a]
        secs = [r["seconds"] for r in runs if r["algorithm"] == a]
        mean = f"{sum(secs) / len(secs):.1f}" if secs else "-"
        rows.append([a, t["runs"], t["exit0"], t["aborts"], t["other_failures"], mean])
    mean_all = f"{sum(r['seconds'] for r in runs) / max(1, n):.1f}"
    rows.append(
        [
            "**all**",
            totals["runs"],
            totals["exit0"],
            totals["aborts"],
            totals["other_failures"],
            mean_all,
        ]
    )
    notes = (
        f"{n} consecutive 2-rank runs of `torchrun --standalone --nproc-per-node 2 "
        "sgp-imagenet train --dataset digits --arch small-cnn --epochs 1 "
        "--max-iters-per-epoch 5 --batch-size 16 --workers 0` on gloo, one at a time, "
        "`OMP_NUM_THREADS=1`, algorithms cycled. An abort is a worker killed by SIGABRT "
        "or `terminate called` / `SIGABRT` / `Signal 6` in the output; other failures are "
        f"any other nonzero exit or a hang past {args.timeout:g} s. {total:.0f} s in all."
    )
    write_results(
        "exit_codes",
        {"totals": totals, "per_algorithm": per_algorithm, "total_seconds": total, "runs": runs},
        header=header,
        rows=rows,
        title="Exit codes of finished sgp-imagenet runs (2 ranks, gloo)",
        quick=args.quick,
        notes=notes,
        meta={"world_size": 2, "backend": "gloo", "algorithms": algorithms, "runs_asked": n},
        directory=args.out_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
