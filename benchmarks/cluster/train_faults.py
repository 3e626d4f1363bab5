"""One worker of the fault-tolerance benchmark; started by ``bench_faults.py`` on each host.

Meets the others at ``--coordinator`` (gossip-nn's `FaultTolerance`; the first
``--world-size`` to register form the job, a later one joins it), then trains the cluster
benchmarks' model (torchvision's ResNet-50 on one fixed synthetic batch, one thread) with
fault-tolerant gossip until the job's step count reaches ``--steps``. Every iteration
appends one JSON line to ``OUT_DIR/member{M}.jsonl``: the wall-clock time it ended, its
duration, the step and the generation it ran in. At the end (or when the job stops
without it) ``OUT_DIR/member{M}.json`` holds when the process started, when it was
admitted, and every generation change it went through.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import timedelta

STARTED = time.time()  # before torch is imported: a cold start's cost counts

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from train_step import add_job_flags, build_model  # noqa: E402

from gossip_comm import MembershipError  # noqa: E402
from gossip_nn import FaultTolerance, make_data_parallel  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--coordinator", required=True, help="HOST:PORT")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--algorithm", choices=("sgp", "osgp", "dpsgd"), default="sgp")
    add_job_flags(p)
    return p.parse_args()


def main() -> int:
    args = parse()
    torch.set_num_threads(1)
    host, port = args.coordinator.rsplit(":", 1)
    store = dist.TCPStore(  # type: ignore[attr-defined]
        host, int(port), is_master=False, timeout=timedelta(seconds=300)
    )
    ft = FaultTolerance(store, world_size=args.world_size)
    member = ft.membership.register()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    host = int(os.environ.get("RANK", "-1"))  # the emulated host it runs on
    proc = {"pid": os.getpid(), "host": host}
    (args.out_dir / f"member{member}.proc").write_text(json.dumps(proc))
    ft.start(join=member >= args.world_size, timeout=600)
    torch.manual_seed(0)
    model = build_model(args.model, args.image, args.classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dp = make_data_parallel(
        args.algorithm, model, opt, fault_tolerance=ft, timeout=args.gossip_timeout,
        buffers="local",
    )  # fmt: skip
    admitted = time.time()
    g = torch.Generator().manual_seed(member)
    x = torch.randn(args.batch, 3, args.image, args.image, generator=g)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)
    lossf = torch.nn.CrossEntropyLoss()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stopped = None
    with (args.out_dir / f"member{member}.jsonl").open("a") as log:
        try:
            for step in range(ft.start_step, args.steps):
                t0 = time.time()
                opt.zero_grad(set_to_none=True)
                lossf(dp(x), y).backward()
                opt.step()
                t1 = time.time()
                g_now = ft.generation
                row = {"t": t1, "dt": t1 - t0, "step": step, "generation": g_now.number,
                       "members": g_now.world_size}  # fmt: skip
                log.write(json.dumps(row) + "\n")
                log.flush()
        except MembershipError as err:
            stopped = str(err)
    summary = {
        "member": member,
        "started": STARTED,
        "admitted": admitted,
        "joined": ft.start_step > 0,
        "start_step": ft.start_step,
        "stopped": stopped,
        "changes": [
            {
                "ended": c.ended.number,
                "started": c.started.number,
                "lost": list(c.lost),
                "joined": list(c.joined),
                "at": c.at,
                "seconds": c.seconds,
                "reason": c.reason,
            }
            for c in ft.history
        ],
    }
    (args.out_dir / f"member{member}.json").write_text(json.dumps(summary, indent=1))
    dp.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if stopped is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
