"""Images per second of ``sgp-imagenet train`` against a plain PyTorch loop, one GPU.

The application's overhead on one device: ResNet-50 on synthetic data with bf16 autocast
and channels-last, run (1) as ``sgp-imagenet train --algorithm sgp`` at world size 1,
timed from its own per-iteration CSV, and (2) as a plain training loop over the same
model, optimizer, data set and loader. Both report the median time per iteration after
a warm-up. The issue's target is a ratio of at least 0.95.

Run on a machine with a CUDA GPU (``--device cpu`` with a tiny model checks the script)::

    python benchmarks/gpu_throughput.py --out benchmarks/results
    python benchmarks/gpu_throughput.py --device cpu --arch resnet18 --image-size 32 \\
        --batch-size 8 --epochs 2 --warmup 2 --out /tmp/tp     # a smoke test

Writes ``gpu_throughput.json`` and ``gpu_throughput.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgp_imagenet.data import build_datasets, make_loader
from sgp_imagenet.models import build_model, param_groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(args: argparse.Namespace, device: torch.device) -> list[float]:
    """Seconds per iteration of a hand-written loop: same model, data, loader, AMP."""
    bundle = build_datasets("synthetic", image_size=args.image_size, seed=0)
    loader = make_loader(bundle.train, batch_size=args.batch_size, rank=0, world_size=1,
                         seed=0, train=True, workers=args.workers)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(args.arch, bundle.num_classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    times: list[float] = []
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        _sync(device)
        tick = time.perf_counter()
        for x, y in loader:
            x = x.to(device, non_blocking=True).to(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = criterion(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            float(loss.detach())  # the application reads the loss every iteration too
            _sync(device)
            now = time.perf_counter()
            times.append(now - tick)
            tick = now
    return times


def application(args: argparse.Namespace, device: torch.device, log_dir: Path) -> list[float]:
    """Seconds per iteration of ``sgp-imagenet train --algorithm sgp`` at world size 1."""
    command = [
        sys.executable, "-m", "sgp_imagenet.cli", "train",
        "--algorithm", "sgp", "--dataset", "synthetic",
        "--arch", args.arch, "--image-size", str(args.image_size),
        "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
        "--amp", "bf16", "--channels-last", "--workers", str(args.workers),
        "--print-freq", "1", "--progress", "off", "--no-tensorboard",
        "--log-dir", str(log_dir), "--backend", "nccl" if device.type == "cuda" else "gloo",
    ]  # fmt: skip
    env = {**os.environ, "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"sgp-imagenet train failed:\n{done.stderr[-4000:]}")
    with open(log_dir / "rank0.csv") as f:
        return [float(r["BT(s)"]) for r in csv.DictReader(f) if r["val"] != "val"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=8, help="of 1024 synthetic images")
    parser.add_argument("--warmup", type=int, default=10, help="iterations left out")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        app = application(args, device, Path(tmp) / "logs")
    plain = plain_loop(args, device)
    if min(len(app), len(plain)) <= args.warmup:
        raise SystemExit(f"--warmup {args.warmup} leaves no iterations; raise --epochs")
    app_s, plain_s = (statistics.median(t[args.warmup :]) for t in (app, plain))
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "arch": args.arch,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "iterations_timed": {"app": len(app) - args.warmup, "plain": len(plain) - args.warmup},
        "app_images_per_s": args.batch_size / app_s,
        "plain_images_per_s": args.batch_size / plain_s,
        "ratio": plain_s / app_s,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    table = (
        f"**sgp-imagenet against a plain loop** ({result['device']}, torch {result['torch']}, "
        f"{args.arch}, batch {args.batch_size} at {args.image_size} px, bf16, channels-last; "
        f"median over the iterations after the first {args.warmup})\n\n"
        "| run | images/s |\n|---|---|\n"
        f"| plain PyTorch loop | {result['plain_images_per_s']:.1f} |\n"
        f"| `sgp-imagenet train --algorithm sgp`, world size 1 | "
        f"{result['app_images_per_s']:.1f} |\n"
        f"| ratio (target >= 0.95) | {result['ratio']:.3f} |\n"
    )
    (args.out / "gpu_throughput.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
