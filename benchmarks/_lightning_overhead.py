"""One process of bench_lightning's overhead section (run under torchrun, 2 processes).

Times the same training, model, data and algorithm two ways in the same process: the
plain gossip-nn loop (``make_data_parallel`` and a for loop) and a LightningModule
under ``Trainer(strategy=GossipStrategy(...))``; for ``"ddp"``, torch DDP in a plain
loop against Lightning's own ``"ddp"`` strategy (Lightning's overhead, for scale). The
two run alternately, ``--repeats`` times (plain first, then Lightning first), so that
both see the same machine; each
timing covers ``ITERS`` optimizer steps after ``WARMUP`` steps. Rank 0 writes
seconds per iteration to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
import torch.distributed as dist
import torchvision
from lightning import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gossip_nn import make_data_parallel
from gossip_nn.lightning import GossipStrategy

WARMUP = 3
BATCH = 8
MODELS = {"mlp": (1, 8, 8), "resnet18": (3, 32, 32)}  # name -> input shape
#: Timed iterations per model and repeat, at full size (``--scale`` shrinks them): many
#: for the MLP, whose steps take milliseconds
ITERS = {"mlp": 200, "resnet18": 30}


def network(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":  # the tutorial's
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return torchvision.models.resnet18(num_classes=10)


def loader(name: str, steps: int) -> DataLoader:
    gen = torch.Generator().manual_seed(dist.get_rank())
    x = torch.randn(steps * BATCH, *MODELS[name], generator=gen)
    y = torch.randint(0, 10, (steps * BATCH,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def sgd(params: object) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)  # type: ignore[arg-type]


def plain(algorithm: str, name: str, iters: int) -> tuple[float, float]:
    module = network(name)
    optimizer = sgd(module.parameters())
    model = make_data_parallel("ar" if algorithm == "ddp" else algorithm, module, optimizer)
    start = cpu = 0.0
    for i, (x, y) in enumerate(loader(name, WARMUP + iters)):
        if i == WARMUP:
            start, cpu = time.perf_counter(), time.process_time()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    model.close()
    return elapsed / iters, cpu / iters


class Classifier(LightningModule):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.net = network(name)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return sgd(self.parameters())


class Clock(Callback):
    """From the start of batch WARMUP to the end of the last batch."""

    def __init__(self, last: int) -> None:
        self.last, self.start, self.elapsed = last, 0.0, 0.0
        self.cpu_start, self.cpu = 0.0, 0.0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == WARMUP:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(
        self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.last:
            self.elapsed = time.perf_counter() - self.start
            self.cpu = time.process_time() - self.cpu_start


def lightning(algorithm: str, name: str, iters: int) -> tuple[float, float]:
    clock = Clock(WARMUP + iters - 1)
    trainer = Trainer(
        strategy="ddp" if algorithm == "ddp" else GossipStrategy(algorithm),
        accelerator="cpu", devices=2, max_steps=WARMUP + iters, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, callbacks=[clock],
    )  # fmt: skip
    trainer.fit(Classifier(name), loader(name, WARMUP + iters))
    return clock.elapsed / iters, clock.cpu / iters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="times ITERS")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--algorithms", nargs="+", default=["ddp", "sgp", "osgp", "dpsgd"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # two processes on two cores, one each
    dist.init_process_group("gloo")
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[dist.get_rank() % len(cores)]})
    times: dict[str, dict[str, dict[str, list[float]]]] = {}
    ways = [("plain", plain), ("lightning", lightning)]
    for name in args.models:
        for repeat in range(args.repeats):
            for algorithm in args.algorithms:
                got = times.setdefault(name, {}).setdefault(algorithm, {})
                iters = max(2, round(ITERS[name] * args.scale))
                # plain first in even repeats, Lightning first in odd ones: whatever the
                # first run leaves behind (a warm cache, a thread winding down) evens out
                for way, run in ways if repeat % 2 == 0 else ways[::-1]:
                    wall, cpu = run(algorithm, name, iters)
                    got.setdefault(way, []).append(wall)
                    got.setdefault(f"{way}_cpu", []).append(cpu)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            iters = {name: max(2, round(ITERS[name] * args.scale)) for name in args.models}
            json.dump({"iters": iters, "repeats": args.repeats, "warmup": WARMUP,
                       "batch": BATCH, "times": times}, f)  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
