"""Which teardown order lets a gloo process exit cleanly after point-to-point work?

A minimal gloo job, no gossip code: ``--steps`` rounds of ``batch_isend_irecv`` on a
directed ring (rank r sends to r + 1 and receives from r - 1, every work waited; with the
default ``--world 2`` that is one exchange with the other rank), then one of the teardown
orders below, then a marker line and interpreter exit. Each variant runs ``--runs`` times
through ``torchrun --standalone --nproc-per-node WORLD`` (or, with ``--launcher direct``,
WORLD plain processes on an ``env://`` TCPStore); a run aborted when a worker died of SIGABRT
or the output shows ``terminate called`` / ``SIGABRT`` / ``Signal 6``. Writes
``results/exit_probe.json`` and ``results/exit_probe.md``. The variants:

- ``no-destroy``: works dropped; exit with the process group still alive.
- ``destroy``: works dropped; ``destroy_process_group()`` without a barrier.
- ``keep-works``: every Work object kept alive (a module-level list) past
  ``barrier()`` and ``destroy_process_group()`` until interpreter exit.
- ``keep-works-no-destroy``: works kept, no ``destroy_process_group()``.
- ``ordered``: works dropped, ``barrier()``, ``destroy_process_group()`` (the order of
  ``sgp_imagenet.train.train``).
- ``pending-recv``: rank 0 leaves an any-source ``irecv`` that nothing will match
  pending (as an AD-PSGD responder blocked on its next header would), then ``barrier()``,
  ``destroy_process_group()``.
- ``thread``: the P2P steps run on a daemon thread (as gossip-comm's ``Worker``), joined
  before ``barrier()`` and ``destroy_process_group()``.

Not a ``bench_*.py``: ``nox -s bench`` does not run it. Run:
``python benchmarks/exit_probe.py [--runs 50] [--variants ordered,keep-works]``.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _results import RESULTS, write_results
from bench_exit import child_env, find_tool, outcome, parse_output, run_logged, tally

VARIANTS = (
    "no-destroy",
    "destroy",
    "keep-works",
    "keep-works-no-destroy",
    "ordered",
    "pending-recv",
    "thread",
)
MARKER = "PROBE_DONE"
_KEPT: list[Any] = []  # keep-works: Work objects (and their tensors) alive until exit


def _p2p(steps: int, numel: int, keep: bool) -> None:
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    dst, src = (rank + 1) % world, (rank - 1) % world
    for step in range(steps):
        send = torch.full((numel,), float(rank * 1000 + step))
        recv = torch.empty(numel)
        ops = [dist.P2POp(dist.isend, send, dst), dist.P2POp(dist.irecv, recv, src)]
        works = dist.batch_isend_irecv(ops)
        for work in works:
            work.wait()
        if recv[0].item() != float(src * 1000 + step):
            raise RuntimeError(f"rank {rank} step {step}: got {recv[0].item()}")
        if keep:
            _KEPT.extend([works, send, recv])
        del works, ops


def child(variant: str, steps: int, numel: int) -> int:
    """One rank of the probe (under torchrun, or ``--launcher direct``)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if dist.get_world_size() < 2:
        raise SystemExit("the probe needs at least 2 ranks")
    keep = variant.startswith("keep-works")
    if variant == "thread":
        errors: list[BaseException] = []

        def body() -> None:
            try:
                _p2p(steps, numel, keep=False)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=body, daemon=True, name="probe-p2p")
        t.start()
        t.join()
        if errors:
            raise errors[0]
    else:
        _p2p(steps, numel, keep)
    if variant == "pending-recv" and rank == 0:
        header = torch.empty(2, dtype=torch.int64)
        _KEPT.extend([dist.irecv(header, tag=7), header])  # any source; never matched
    if variant == "destroy":
        dist.destroy_process_group()
    elif variant in ("keep-works", "ordered", "pending-recv", "thread"):
        dist.barrier()
        dist.destroy_process_group()
    elif variant in ("no-destroy", "keep-works-no-destroy"):
        pass
    else:
        raise SystemExit(f"unknown variant {variant}")
    print(f"{MARKER} rank {rank} {variant}", flush=True)
    return 0


# --- the driver ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_direct(
    variant: str, world: int, steps: int, numel: int, env: dict[str, str], timeout: float
) -> dict[str, Any]:
    """``world`` plain processes; exact per-rank exit codes (negative: killed by that signal)."""
    port = str(_free_port())
    start = time.perf_counter()
    procs = []
    for rank in range(world):
        e = dict(env, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        e.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        command = [sys.executable, __file__, "--child", variant, "--steps", str(steps)]
        command += ["--numel", str(numel)]
        procs.append(
            subprocess.Popen(
                command, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs: list[str] = []
    codes: dict[int, int] = {}
    timed_out = False
    for rank, p in enumerate(procs):
        try:
            out, _ = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            timed_out = True
        outputs.append(out)
        codes[rank] = p.returncode
    text = "".join(outputs)
    rc = next((c for c in codes.values() if c != 0), 0)
    return {
        "rc": rc,
        "output": text,
        "seconds": round(time.perf_counter() - start, 2),
        "timed_out": timed_out,
        "rank_exitcodes": codes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=50, help="runs per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--world", type=int, default=2, help="ranks (at least 2)")
    parser.add_argument("--steps", type=int, default=20, help="P2P rounds per run")
    parser.add_argument("--numel", type=int, default=100_000, help="floats per message")
    parser.add_argument("--launcher", choices=("torchrun", "direct"), default="torchrun")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a run")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default="exit_probe", help="results file stem")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.steps, args.numel)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = sorted(set(variants) - set(VARIANTS))
    if bad or not variants:
        parser.error(f"--variants: choose from {','.join(VARIANTS)}; got {bad or 'none'}")
    env = child_env()
    torchrun = find_tool("torchrun") if args.launcher == "torchrun" else ""
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    # Interleave the variants (round-robin), so a slow or noisy spell of the machine does
    # not land on one variant only.
    for i in range(args.runs):
        for variant in variants:
            if args.launcher == "torchrun":
                command = [torchrun, "--standalone", "--nproc-per-node", str(args.world)]
                command.append(__file__)
                command += ["--child", variant, "--steps", str(args.steps)]
                command += ["--numel", str(args.numel)]
                result = run_logged(command, env, args.timeout)
            else:
                result = _run_direct(variant, args.world, args.steps, args.numel, env, args.timeout)
            info = parse_output(result["output"], result.get("rank_exitcodes"))
            codes, aborted = info["worker_exitcodes"], info["aborted"]
            record = {
                "run": i,
                "variant": variant,
                **outcome(result, info),
                "finished_ranks": result["output"].count(MARKER),
            }
            if result["rc"] != 0 or aborted:
                record["output_tail"] = result["output"][-2000:]
            runs.append(record)
            flag = "ABORT" if aborted else ("ok" if result["rc"] == 0 else "FAIL")
            print(
                f"[{i + 1}/{args.runs}] {variant:22s} rc={result['rc']} {flag} "
                f"{result['seconds']:.1f}s done={record['finished_ranks']}/{args.world}"
                + (f" workers {codes}" if any(c != 0 for c in codes.values()) else ""),
                flush=True,
            )
    total = round(time.perf_counter() - started, 1)
    per_variant = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        t = tally(mine)
        done = [r for r in mine if r["finished_ranks"] == args.world]
        t["aborts_after_finish"] = sum(r["aborted"] for r in done)
        per_variant[v] = t
    header = ["teardown", "runs", "exit 0", "aborts (SIGABRT)", "of which after all ranks finished"]
    header += ["other failures"]
    rows = [
        [
            f"`{v}`",
            per_variant[v]["runs"],
            per_variant[v]["exit0"],
            per_variant[v]["aborts"],
            per_variant[v]["aborts_after_finish"],
            per_variant[v]["other_failures"],
        ]
        for v in variants
    ]
    notes = (
        f"Plain `batch_isend_irecv` on gloo, {args.world} ranks in a ring, {args.steps} rounds of "
        f"{args.numel} floats each way, then the teardown; {args.runs} runs per variant "
        f"(interleaved) through {args.launcher}, `OMP_NUM_THREADS=1`. The variants are "
        f"described in `benchmarks/exit_probe.py`. {total:.0f} s in all."
    )
    write_results(
        args.name,
        {"per_variant": per_variant, "total_seconds": total, "runs": runs},
        header=header,
        rows=rows,
        title=(
            f"Exit after point-to-point work: aborts by teardown order (gloo, {args.world} ranks)"
        ),
        quick=False,
        notes=notes,
        meta={
            "launcher": args.launcher,
            "world_size": args.world,
            "steps": args.steps,
            "numel": args.numel,
            "runs_per_variant": args.runs,
        },
        directory=args.out_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
