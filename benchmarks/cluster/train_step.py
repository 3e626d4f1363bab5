"""One rank of the training-step benchmark; run by ``bench_cluster.py`` on every host.

Reads the ``torchrun``-style environment the emulated cluster sets (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ...), trains torchvision's ResNet-50 on one fixed
synthetic batch with one thread per rank, and times each iteration (forward, backward,
optimizer step, and whatever communication the algorithm does in them). Rank 0 gathers
every rank's times and writes them as JSON to ``--out``.

``--algorithm compute`` runs the same loop with no wrapper and no communication: the
lower bound. ``--straggler-rank`` makes one rank's compute ``--straggler-factor`` times
slower by sleeping for the extra time after its backward pass (a slower accelerator
does not take CPU from the others either).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torchvision

from gossip_nn import make_data_parallel

ALGORITHMS = ("compute", "ar", "sgp", "osgp", "dpsgd", "adpsgd")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--algorithm", choices=ALGORITHMS, required=True)
    p.add_argument("--synch-freq", type=int, default=0, help="OSGP's staleness bound")
    p.add_argument("--wire", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--chunk-bytes", type=int, default=None, help="default: the library's")
    p.add_argument(
        "--nprocs-per-node", type=int, default=1, help="processes per host sharing one model"
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--model", default="resnet50", help="a torchvision.models name")
    p.add_argument("--straggler-rank", type=int, default=-1)
    p.add_argument("--straggler-factor", type=float, default=2.0)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(num_classes=args.classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    net: torch.nn.Module = model
    if args.algorithm != "compute":
        options: dict[str, object] = {"timeout": 600.0, "chunk_bytes": args.chunk_bytes}
        if args.algorithm == "osgp":
            options["synch_freq"] = args.synch_freq
        if args.wire == "bf16":
            options["wire_dtype"] = torch.bfloat16
        if args.nprocs_per_node > 1:
            options["nprocs_per_node"] = args.nprocs_per_node
        net = make_data_parallel(args.algorithm, model, opt, **options)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 3, args.image, args.image, generator=gen)
    y = torch.randint(0, args.classes, (args.batch,), generator=gen)
    slow = rank == args.straggler_rank
    dist.barrier()
    stamps = [time.perf_counter()]
    compute: list[float] = []
    stepping: list[float] = []
    for _ in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        spent = time.perf_counter() - t0
        if slow:
            time.sleep(spent * (args.straggler_factor - 1.0))
        compute.append(spent)
        t1 = time.perf_counter()
        opt.step()  # the wrappers' gossip runs in its hooks
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
        stepping.append(stamps[-1] - t1)
    close = getattr(net, "close", None)
    if close is not None:
        close()
    times = [b - a for a, b in itertools.pairwise(stamps)][args.warmup :]
    mine = {
        "rank": rank,
        "iter_s": times,
        "median_s": statistics.median(times),
        "mean_s": statistics.mean(times),
        "fwd_bwd_median_s": statistics.median(compute[args.warmup :]),
        "opt_step_median_s": statistics.median(stepping[args.warmup :]),
        "passive": bool(getattr(net, "is_passive", False)),
        "gossip_bytes_per_step": int(getattr(net, "bytes_sent", 0)) / (args.warmup + args.iters),
    }
    gathered: list[object] = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        payload = {
            "algorithm": args.algorithm,
            "synch_freq": args.synch_freq,
            "wire": args.wire,
            "chunk_bytes": args.chunk_bytes,
            "nprocs_per_node": args.nprocs_per_node,
            "model": args.model,
            "model_bytes": model_bytes,
            "batch": args.batch,
            "image": args.image,
            "world_size": world,
            "rate_bps": int(os.environ.get("CLUSTER_RATE_BPS", "0")),
            "straggler_rank": args.straggler_rank,
            "straggler_factor": args.straggler_factor,
            "ranks": gathered,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
