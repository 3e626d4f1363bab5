"""One worker of the torchrun comparison in the fault benchmark; one torchrun per host starts it.

The same job as `train_faults.py` (SGP on the cluster benchmarks' ResNet-50, one fixed
synthetic batch, one thread), without fault tolerance and the way a torchrun job
survives a failure instead: every ``--checkpoint-every`` steps each rank saves its
model, optimizer and gossip state (written to a temporary file and renamed, so a kill
never leaves half a checkpoint); when any worker fails, torchrun restarts them all and
each resumes from the newest step that every rank has saved.

Each attempt meets on the agent's store under a prefix of its own
(``TORCHELASTIC_RESTART_COUNT``): with the static rendezvous the agent's store outlives
the attempts, and a restarted worker must not read the addresses of the attempt that
failed. Every iteration appends one JSON line to ``OUT_DIR/rank{R}.jsonl`` (the
wall-clock time it ended, its duration, the step, the attempt); each process writes
``OUT_DIR/rank{R}.a{A}.proc`` (pid, host, when it started, which step it resumed
from, how long loading took) and each save one line to ``OUT_DIR/rank{R}.saves.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from datetime import timedelta
from pathlib import Path

STARTED = time.time()  # before torch is imported: a cold start's cost counts

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from train_step import add_job_flags, build_model  # noqa: E402

from gossip_nn import make_data_parallel  # noqa: E402

#: Checkpoints each rank keeps (a kill during a save still leaves an older common one).
KEEP = 2


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_job_flags(p)
    p.add_argument("--checkpoint-every", type=int, required=True)
    p.add_argument("--checkpoint-dir", type=Path, required=True)
    return p.parse_args()


def saved_steps(directory: Path, rank: int) -> list[int]:
    """The steps ``rank`` has a complete checkpoint of, oldest first."""
    pattern = re.compile(rf"ckpt\.rank{rank}\.step(\d+)\.pt")
    return sorted(int(m[1]) for p in directory.iterdir() if (m := pattern.fullmatch(p.name)))


def save(directory: Path, rank: int, step: int, state: dict[str, object]) -> None:
    """Write ``state`` as the checkpoint of ``step`` atomically; drop the oldest beyond KEEP."""
    final = directory / f"ckpt.rank{rank}.step{step}.pt"
    tmp = final.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, final)
    for old in saved_steps(directory, rank)[:-KEEP]:
        (directory / f"ckpt.rank{rank}.step{old}.pt").unlink()


def common_step(directory: Path, rank: int, world: int) -> int:
    """The newest step every rank has a checkpoint of (0: none, start afresh)."""
    mine: list[int] = saved_steps(directory, rank)
    everyone: list[list[int] | None] = [None] * world
    dist.all_gather_object(everyone, mine)
    common = set.intersection(*(set(s or []) for s in everyone))
    return max(common, default=0)


def main() -> int:
    args = parse()
    torch.set_num_threads(1)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_store = dist.TCPStore(  # type: ignore[attr-defined]
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
        timeout=timedelta(seconds=300),
    )  # fmt: skip
    store = dist.PrefixStore(f"bench/attempt{attempt}/", agent_store)  # type: ignore[attr-defined]
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(args.model, args.image, args.classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dp = make_data_parallel("sgp", model, opt, timeout=args.gossip_timeout, buffers="local")
    t_load = time.time()
    start = common_step(args.checkpoint_dir, rank, world)
    if start:
        state = torch.load(args.checkpoint_dir / f"ckpt.rank{rank}.step{start}.pt")
        dp.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    proc = {"pid": os.getpid(), "host": int(os.environ.get("BENCH_HOST", "-1")),
            "started": STARTED, "resumed_from": start, "load_s": time.time() - t_load}  # fmt: skip
    (args.out_dir / f"rank{rank}.a{attempt}.proc").write_text(json.dumps(proc))
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 3, args.image, args.image, generator=g)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)
    lossf = torch.nn.CrossEntropyLoss()
    with (args.out_dir / f"rank{rank}.jsonl").open("a") as log:
        for step in range(start, args.steps):
            t0 = time.time()
            opt.zero_grad(set_to_none=True)
            lossf(dp(x), y).backward()
            opt.step()
            t1 = time.time()
            row = {"t": t1, "dt": t1 - t0, "step": step, "attempt": attempt}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if (step + 1) % args.checkpoint_every == 0:
                state = {"model": dp.state_dict(), "optimizer": opt.state_dict()}
                save(args.checkpoint_dir, rank, step + 1, state)
                with (args.out_dir / f"rank{rank}.saves.jsonl").open("a") as saves:
                    saves.write(json.dumps({"step": step + 1, "s": time.time() - t1}) + "\n")
    dp.close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
