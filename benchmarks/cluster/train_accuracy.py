"""One rank of the time-to-accuracy benchmark; run by ``bench_time_to_accuracy.py``.

Reads the ``torchrun``-style environment the emulated cluster sets (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ...) and trains a wide MLP on scikit-learn's digits
with one thread per rank: the training set split evenly over the ranks (the same iid
split and held-out test set as ``bench_digits.py``), SGD with momentum, a cosine
learning rate over a fixed number of epochs. The model's bytes are large against its
compute (64 -> 2048 -> 2048 -> 10 is 4.3 M parameters for a few milliseconds of
forward and backward), so on a 1 Gbit/s link the network sets the pace.

Every ``--evals-per-epoch``-th of an epoch the clock stops and the test accuracy of the
network-average model is recorded against the training time so far: the sum, over the
stretches between evaluations, of the slowest rank's time (evaluation is a collective,
so every stretch starts together). Gossip still in flight (OSGP) is folded in before the
clock stops, so its wait is counted. DDP with a comm hook is torch's own
``DistributedDataParallel`` (``train_step.ddp_with_hook``): every rank holds the same
parameters, so its model itself is the average. Rank 0 writes the curve as JSON to
``--out``.

Also runs without the emulated cluster, on loopback:
``torchrun --standalone --nproc-per-node 2 benchmarks/cluster/train_accuracy.py
--algorithm sgp --epochs 1 --out /tmp/acc.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from train_step import POWERSGD_START, ddp_payload_bytes, ddp_with_hook  # noqa: E402

from _digits import digits_data  # noqa: E402
from gossip_nn import DataParallelModule, make_data_parallel  # noqa: E402

ALGORITHMS = ("ar", "sgp", "osgp")
DDP_HOOKS = ("none", "powersgd")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One training run, the same on every rank."""

    algorithm: str
    ddp_hook: str = "none"
    powersgd_rank: int = 2
    compression: str | None = None
    synch_freq: int = 1
    epochs: float = 8.0
    batch: int = 8
    lr: float = 0.05
    momentum: float = 0.9
    hidden: int = 2048
    evals_per_epoch: int = 4
    seed: int = 0


def wide_mlp(hidden: int) -> nn.Module:
    """64 -> hidden -> hidden -> 10, ReLU between: ``hidden**2`` weights in the middle,
    which a rank at batch 8 runs forward and backward in milliseconds."""
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


class AccuracyRun:
    """A training run that can be timed and evaluated stretch by stretch.

    Use as a context manager (``close`` on exit); call `train` for a number of
    iterations and `evaluate` between stretches.
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        x_train, self.y_train, x_test, self.y_test = digits_data(self.rank, self.world, "iid")
        self.x_train, self.x_test = x_train.flatten(1), x_test.flatten(1)
        # the same number of steps on every rank (shards differ by a sample at most)
        steps = torch.tensor([len(self.y_train) // config.batch])
        dist.all_reduce(steps, op=dist.ReduceOp.MIN)
        self.steps_per_epoch = int(steps)
        self.total_steps = math.ceil(config.epochs * self.steps_per_epoch)
        torch.manual_seed(config.seed)
        self.model = wide_mlp(config.hidden)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda k: 0.5 * (1 + math.cos(math.pi * min(k, self.total_steps) / self.total_steps)),
        )
        self.net = self._wrap()
        self.gen = torch.Generator().manual_seed(1000 * config.seed + self.rank)
        self.step = 0
        self.train_s = 0.0  # the sum of the stretches' slowest-rank times
        self.eval_s = 0.0  # clock stopped: evaluations
        self._order = torch.empty(0, dtype=torch.long)

    def _wrap(self) -> DataParallelModule | nn.Module:
        c = self.config
        if c.ddp_hook != "none":
            return ddp_with_hook(self.model, c.ddp_hook, c.powersgd_rank)
        if c.algorithm == "ar":
            return make_data_parallel("ar", self.model, self.opt)
        options: dict[str, Any] = {"timeout": 600.0, "compression": c.compression}
        if c.algorithm == "osgp":
            options["synch_freq"] = c.synch_freq
        return make_data_parallel(c.algorithm, self.model, self.opt, **options)

    def __enter__(self) -> AccuracyRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Finish gossip and release the wrapper's hooks and threads."""
        close = getattr(self.net, "close", None)
        if close is not None:
            close()

    def _batch(self) -> torch.Tensor:
        i = self.step % self.steps_per_epoch
        if i == 0:
            self._order = torch.randperm(len(self.y_train), generator=self.gen)
        return self._order[i * self.config.batch : (i + 1) * self.config.batch]

    def train(self, iterations: int) -> None:
        """Run ``iterations`` steps (fewer at the end); add the slowest rank's time."""
        self.net.train()
        t0 = time.perf_counter()
        for _ in range(min(iterations, self.total_steps - self.step)):
            batch = self._batch()
            nn.functional.cross_entropy(
                self.net(self.x_train[batch]), self.y_train[batch]
            ).backward()
            self.opt.step()  # the wrappers' gossip runs in its hooks
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()
            self.step += 1
        finish = getattr(self.net, "finish_gossip", None)
        if finish is not None:  # in-flight messages count as training time
            finish()
        stretch = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(stretch, op=dist.ReduceOp.MAX)
        self.train_s += float(stretch)

    def _averaged(self) -> contextlib.AbstractContextManager[None]:
        if isinstance(self.net, DataParallelModule):
            return self.net.average_for_eval()
        return contextlib.nullcontext()  # torch's DDP: the same parameters on every rank

    def evaluate(self) -> dict[str, float]:
        """Test accuracy of the network-average model, with the clock stopped."""
        t0 = time.perf_counter()
        self.net.eval()
        with self._averaged(), torch.no_grad():
            accuracy = float((self.model(self.x_test).argmax(1) == self.y_test).float().mean())
        self.eval_s += time.perf_counter() - t0
        return {
            "iteration": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
            "train_s": round(self.train_s, 4),
            "accuracy": accuracy,
        }

    def bytes_per_iteration(self) -> tuple[float, bool]:
        """Bytes a rank sends per iteration, and whether they were computed, not measured.

        Gossip: the measured ``bytes_sent``, mean over ranks. DDP: a ring all-reduce of
        the hook's payload, ``2 (n - 1) / n`` times it (PowerSGD's first
        ``POWERSGD_START`` iterations, uncompressed, averaged in).
        """
        sent = getattr(self.net, "bytes_sent", None)
        if sent is not None and self.config.algorithm != "ar":
            total = torch.tensor([float(sent)], dtype=torch.float64)
            dist.all_reduce(total)
            return float(total) / self.world / self.step, False
        ring = 2 * (self.world - 1) / self.world
        payload = float(
            ddp_payload_bytes(self.model, self.config.ddp_hook, self.config.powersgd_rank)
        )
        if self.config.ddp_hook == "powersgd":
            plain = float(ddp_payload_bytes(self.model, "none", 0))
            early = min(self.step, POWERSGD_START)
            payload = (early * plain + (self.step - early) * payload) / self.step
        return ring * payload, True


def eval_points(steps_per_epoch: int, evals_per_epoch: int, total: int) -> list[int]:
    """The iterations after which to evaluate: every ``1 / evals_per_epoch`` of an epoch
    (rounded to whole iterations), and the last."""
    per = steps_per_epoch / evals_per_epoch
    count = math.ceil(total / per)
    return sorted({min(total, round(k * per)) for k in range(1, count + 1)})


def run(config: RunConfig) -> dict[str, Any]:
    """Train ``config`` to its end, evaluating along the way; the record (every rank)."""
    with AccuracyRun(config) as r:
        curve = [r.evaluate()]
        for stop in eval_points(r.steps_per_epoch, config.evals_per_epoch, r.total_steps):
            r.train(stop - r.step)
            curve.append(r.evaluate())
        per_iter, computed = r.bytes_per_iteration()
        params = sum(p.numel() for p in r.model.parameters())
        return {
            "config": asdict(config),
            "world_size": r.world,
            "rate_bps": int(os.environ.get("CLUSTER_RATE_BPS", "0")),
            "model_params": params,
            "model_bytes": 4 * params,
            "test_images": len(r.y_test),
            "steps_per_epoch": r.steps_per_epoch,
            "iterations": r.step,
            "train_s": r.train_s,
            "s_per_iter": r.train_s / r.step,
            "eval_s": r.eval_s,
            "bytes_per_iter": per_iter,
            "bytes_computed": computed,
            "curve": curve,
        }


def parse(argv: Sequence[str] | None = None) -> tuple[RunConfig, Path]:
    """The run's configuration and the JSON path to write."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--algorithm", choices=ALGORITHMS, required=True)
    p.add_argument(
        "--ddp-hook", choices=DDP_HOOKS, default=RunConfig.ddp_hook, help="--algorithm ar only"
    )
    p.add_argument("--powersgd-rank", type=int, default=RunConfig.powersgd_rank)
    p.add_argument("--compression", default=None, help="sgp, osgp: a compressor spec")
    p.add_argument(
        "--synch-freq", type=int, default=RunConfig.synch_freq, help="OSGP's staleness bound"
    )
    p.add_argument("--epochs", type=float, default=RunConfig.epochs)
    p.add_argument("--batch", type=int, default=RunConfig.batch, help="per rank")
    p.add_argument("--lr", type=float, default=RunConfig.lr, help="the cosine schedule's peak")
    p.add_argument("--hidden", type=int, default=RunConfig.hidden)
    p.add_argument("--evals-per-epoch", type=int, default=RunConfig.evals_per_epoch)
    p.add_argument("--seed", type=int, default=RunConfig.seed)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.ddp_hook != "none" and args.algorithm != "ar":
        p.error(f"--ddp-hook applies to --algorithm ar; got --algorithm {args.algorithm}")
    if args.compression is not None and args.algorithm == "ar":
        p.error("--compression applies to sgp and osgp (DDP compresses with --ddp-hook)")
    options = {k: v for k, v in vars(args).items() if k != "out"}
    return RunConfig(**options), args.out


def main(argv: Sequence[str] | None = None) -> int:
    config, out = parse(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        record = run(config)
        if dist.get_rank() == 0:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record))
            last = record["curve"][-1]
            print(
                f"[rank 0] {config.algorithm} {config.ddp_hook} {config.compression}: "
                f"{last['accuracy']:.4f} after {record['train_s']:.1f} s "
                f"({record['s_per_iter']:.3f} s/iter)",
                flush=True,
            )
        dist.barrier()  # nobody tears down while rank 0 is still writing
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
