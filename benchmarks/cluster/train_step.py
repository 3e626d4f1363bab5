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

Compression, against DDP's own: ``--compression SPEC`` (and ``--consensus-step``) makes
a gossip algorithm send compressed differences; ``--ddp-hook bf16|powersgd`` (with
``--algorithm ar``) registers torch's ``bf16_compress_hook`` or ``powerSGD_hook`` on a
``DistributedDataParallel`` built here with DDP's defaults (PowerSGD with one bucket: on
gloo its chained all-reduces from several buckets interleave differently across ranks;
its first ``POWERSGD_START`` steps are plain all-reduces, so ``--warmup`` must cover
them). A DDP variant's
bytes per iteration are *computed* (ring all-reduce, ``2 (n - 1) / n`` times the
payload), a gossip algorithm's are *measured* (``bytes_sent``).

``--gpu-host SECONDS|auto`` stands in for a GPU host: forward and backward are replaced
by a sleep and every parameter's gradient by a fixed random tensor (drawn once per
rank), so the optimizer step and gossip run as usual while the CPU is free to move
bytes. ``auto`` first measures the real model's forward and backward (the median of a
few iterations, the slowest rank's) and sleeps that long.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torchvision
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

from gossip_nn import ALGORITHMS as WRAPPED
from gossip_nn import GossipOptions, make_data_parallel

ALGORITHMS = ("compute", *WRAPPED)
#: The algorithms that compress, as gossip-nn answers it.
GOSSIP = tuple(a for a in WRAPPED if not GossipOptions(compression="int8").ignored_by(a))
DDP_HOOKS = ("none", "bf16", "powersgd")
#: PowerSGD's plain all-reduce iterations before it compresses (the hook needs >= 2).
POWERSGD_START = 2
#: A bucket larger than any model here: PowerSGD on gloo needs exactly one.
ONE_BUCKET_MB = 4096
#: Timed forward+backward iterations (after one untimed) for ``--gpu-host auto``.
AUTO_ITERS = 3


def _gpu_host(value: str) -> float | str:
    if value == "auto":
        return value
    seconds = float(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"--gpu-host must be 'auto' or >= 0; got {value}")
    return seconds


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--algorithm", choices=ALGORITHMS, required=True)
    p.add_argument("--synch-freq", type=int, default=0, help="OSGP's staleness bound")
    p.add_argument("--wire", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--chunk-bytes", type=int, default=None, help="default: the library's")
    p.add_argument(
        "--nprocs-per-node", type=int, default=1, help="processes per host sharing one model"
    )
    p.add_argument("--compression", default=None, help="gossip algorithms: a compressor spec")
    p.add_argument("--consensus-step", type=float, default=None, help="with --compression")
    p.add_argument("--ddp-hook", choices=DDP_HOOKS, default="none", help="--algorithm ar only")
    p.add_argument("--powersgd-rank", type=int, default=1, help="with --ddp-hook powersgd")
    p.add_argument(
        "--gpu-host",
        type=_gpu_host,
        default=None,
        metavar="SECONDS|auto",
        help="replace forward+backward by a sleep and random gradients (not with ar)",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument(
        "--model",
        default="resnet50",
        help="a torchvision.models name, or linear:OUT (one Linear layer, 3*image^2 -> OUT)",
    )
    p.add_argument("--straggler-rank", type=int, default=-1)
    p.add_argument("--straggler-factor", type=float, default=2.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.ddp_hook != "none" and args.algorithm != "ar":
        p.error(f"--ddp-hook applies to --algorithm ar; got --algorithm {args.algorithm}")
    if args.ddp_hook == "powersgd" and args.warmup <= POWERSGD_START:
        p.error(f"--ddp-hook powersgd needs --warmup > {POWERSGD_START} (its plain steps)")
    if args.algorithm not in GOSSIP and (args.compression or args.consensus_step is not None):
        p.error(f"--compression applies to {', '.join(GOSSIP)}; got {args.algorithm}")
    if args.gpu_host is not None and args.algorithm == "ar":
        p.error("--gpu-host cannot stand in for DDP's backward (its hooks need a real one)")
    return args


def ddp_payload_bytes(model: torch.nn.Module, hook: str, rank: int) -> int:
    """Bytes of one rank's all-reduce input per iteration under a DDP hook.

    ``powersgd``: the hook's own split (its ``_should_compress``): a weight viewed as
    ``m x n`` goes as ``P`` (``m r``) and ``Q`` (``n r``) if that is under half its
    size, and whole otherwise, as does every vector.
    """
    grads = [p for p in model.parameters() if p.requires_grad]
    if hook == "none":
        return sum(4 * p.numel() for p in grads)
    if hook == "bf16":
        return sum(2 * p.numel() for p in grads)
    floats = 0
    for p in grads:
        m, n = p.shape[0], p.numel() // p.shape[0]
        r = min(m, n, rank)
        worth, whole, low = powerSGD_hook._should_compress(m, n, r, 2)  # its default rate
        floats += low if worth else whole
    return 4 * floats


def ddp_with_hook(model: torch.nn.Module, hook: str, rank: int) -> DistributedDataParallel:
    """DDP with torch's ``bf16_compress_hook`` or ``powerSGD_hook`` (one bucket)."""
    if hook == "bf16":
        ddp = DistributedDataParallel(model)
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
        return ddp
    ddp = DistributedDataParallel(model, bucket_cap_mb=ONE_BUCKET_MB)
    state = powerSGD_hook.PowerSGDState(
        process_group=None, matrix_approximation_rank=rank, start_powerSGD_iter=POWERSGD_START
    )
    ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    return ddp


def wrap(args: argparse.Namespace, model: torch.nn.Module, opt: torch.optim.Optimizer) -> object:
    """The model as the algorithm trains it (the bare model for ``compute``)."""
    if args.algorithm == "compute":
        return model
    if args.ddp_hook != "none":
        return ddp_with_hook(model, args.ddp_hook, args.powersgd_rank)
    if args.algorithm == "ar":
        return make_data_parallel("ar", model, opt)
    options: dict[str, object] = {"timeout": 600.0, "chunk_bytes": args.chunk_bytes}
    if args.algorithm == "osgp":
        options["synch_freq"] = args.synch_freq
    if args.wire == "bf16":
        options["wire_dtype"] = torch.bfloat16
    if args.nprocs_per_node > 1:
        options["nprocs_per_node"] = args.nprocs_per_node
    if args.compression is not None:
        options["compression"] = args.compression
        options["consensus_step"] = args.consensus_step
    return make_data_parallel(args.algorithm, model, opt, **options)


def add_job_flags(p: argparse.ArgumentParser) -> None:
    """The flags the fault benchmark's two workers share: the run and its model."""
    p.add_argument("--steps", type=int, required=True, help="the job's optimizer steps")
    p.add_argument("--gossip-timeout", type=float, default=30.0)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--out-dir", type=Path, required=True)


def build_model(name: str, image: int, classes: int) -> torch.nn.Module:
    """A torchvision model by name, or ``linear:OUT``: one wide layer, all bytes and no depth.

    ``linear:OUT`` maps the flattened ``3 x image x image`` input to ``OUT`` outputs (of
    which the first ``classes`` are the labels' range), so its parameter count is set by
    ``OUT`` alone: ``linear:8136`` at 32 px is 25.0 M parameters, as many as ResNet-50.
    """
    if name.startswith("linear:"):
        out = int(name.split(":", 1)[1])
        if out < classes:
            raise ValueError(f"--model {name}: OUT must be >= --classes ({classes})")
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * image * image, out))
    model: torch.nn.Module = getattr(torchvision.models, name)(num_classes=classes)
    return model


def measure_compute(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The real model's median forward+backward, the slowest rank's (all ranks agree).

    Runs on a copy, so the model's BatchNorm statistics stay identical across ranks.
    """
    model = copy.deepcopy(model)
    times = []
    for _ in range(AUTO_ITERS + 1):
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - t0)
    slowest = torch.tensor([statistics.median(times[1:])], dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return float(slowest.item())


def compute_step(
    args: argparse.Namespace, net: object, model: torch.nn.Module, sleep_s: float | None
) -> Callable[[], None]:
    """Forward and backward: the real ones, or (GPU host) a sleep and fixed gradients."""
    gen = torch.Generator().manual_seed(dist.get_rank())
    x = torch.randn(args.batch, 3, args.image, args.image, generator=gen)
    y = torch.randint(0, args.classes, (args.batch,), generator=gen)
    if sleep_s is None:

        def real() -> None:
            torch.nn.functional.cross_entropy(net(x), y).backward()  # type: ignore[operator]

        return real
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [1e-3 * torch.randn(p.shape, generator=gen) for p in params]

    def gpu_host() -> None:
        time.sleep(sleep_s)
        for p, g in zip(params, grads, strict=True):
            p.grad = g  # read-only for SGD and the wrappers; set to None by zero_grad

    return gpu_host


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = build_model(args.model, args.image, args.classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    sleep_s = args.gpu_host
    if sleep_s == "auto":
        gen = torch.Generator().manual_seed(rank)
        x = torch.randn(args.batch, 3, args.image, args.image, generator=gen)
        y = torch.randint(0, args.classes, (args.batch,), generator=gen)
        sleep_s = measure_compute(model, x, y)
    net = wrap(args, model, opt)
    step = compute_step(args, net, model, sleep_s)
    slow = rank == args.straggler_rank
    dist.barrier()
    stamps = [time.perf_counter()]
    compute: list[float] = []
    stepping: list[float] = []
    for _ in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        step()
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
        "exchanges": int(getattr(net, "exchanges", 0)),  # AD-PSGD: adopted or answered
        "gossip_bytes_per_step": int(getattr(net, "bytes_sent", 0)) / (args.warmup + args.iters),
    }
    gathered: list[object] = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        payload: dict[str, object] = {
            "algorithm": args.algorithm,
            "synch_freq": args.synch_freq,
            "wire": args.wire,
            "chunk_bytes": args.chunk_bytes,
            "nprocs_per_node": args.nprocs_per_node,
            "compression": args.compression,
            "consensus_step": args.consensus_step,
            "ddp_hook": args.ddp_hook,
            "powersgd_rank": args.powersgd_rank if args.ddp_hook == "powersgd" else None,
            "gpu_host_s": sleep_s,
            "gpu_host_measured": args.gpu_host == "auto",
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
        if args.algorithm == "ar":
            ddp_bytes = ddp_payload_bytes(model, args.ddp_hook, args.powersgd_rank)
            payload["ddp_payload_bytes"] = ddp_bytes
            # computed, not measured: what a ring all-reduce sends per rank
            payload["computed_bytes_per_iter"] = 2 * (world - 1) / world * ddp_bytes
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
