"""The digits benchmarks' training machinery: data, model, wrappers, one run per case.

scikit-learn's bundled digits (8x8 images), a small CNN with BatchNorm, ``WORLD`` ranks
on gloo; each `Case` is trained from a seed and reports the test accuracy of the
network-average model and of the ranks' own models, and the bytes each rank sent.
Used by ``bench_digits.py`` (its sections), ``_digits_compression.py`` and
``cluster/train_accuracy.py`` (the data split).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gossip_nn import ALGORITHMS, DataParallelModule, make_data_parallel

WORLD = 4
EPOCHS, QUICK_EPOCHS = 12, 2
COMPRESSION_EPOCHS = EPOCHS  # the compression section's own count (see its notes)
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
# the compression section's: with 3 seeds the mean difference to uncompressed carries
# about 0.6 points of seed noise (one test image is 0.28), as much as the 0.5-point target
COMPRESSION_SEEDS = tuple(range(10))
BATCH = 16
SPLITS = ("iid", "skewed")

GOSSIP_ALGORITHMS = tuple(a for a in ALGORITHMS if a != "ar")
COMPRESSIONS: tuple[str | None, ...] = (None, "int8", "topk:0.01", "lowrank:2")
POWERSGD_RANK = 2
POWERSGD_START = 10  # vanilla all-reduce for the first 10 iterations; torch needs >= 2
DDP_BUCKET_MB = 1024.0  # one bucket: PowerSGD's chained all-reduces must not interleave
TARGET_POINTS = 0.5  # the target: no more than 0.5 points of top-1 below


@dataclass(frozen=True, kw_only=True)
class Case:
    """One configuration to train.

    Attributes:
        label: Its name in the results (unique within a section).
        algorithm: A `gossip_nn.ALGORITHMS` name, or ``"ddp"`` for torch's
            `DistributedDataParallel` itself.
        options: ``make_data_parallel`` options (``allreduce_warmup_steps=-1``: one epoch).
        hook: ``"ddp"`` only: ``None``, ``"bf16"`` or ``"powersgd"``, a DDP comm hook.
        baseline: Label of the same algorithm uncompressed, for a compressed case.
    """

    label: str
    algorithm: str = "sgp"
    options: dict[str, Any] = field(default_factory=dict)
    hook: str | None = None
    baseline: str | None = None

    @property
    def compression(self) -> str:
        """What the case compresses with, for the table."""
        if self.hook == "powersgd":
            return f"PowerSGD rank {POWERSGD_RANK} (hook)"
        if self.hook is not None:
            return f"{self.hook} (hook)"
        return self.options.get("compression") or "none"


def make_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def digits_data(rank: int, n: int, split: str) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X / 16.0, y, test_size=0.2, random_state=0, stratify=y
    )
    if split == "skewed":
        order = y_tr.argsort(kind="stable")
        part = order[rank * len(order) // n : (rank + 1) * len(order) // n]
    else:
        part = list(range(rank, len(y_tr), n))
    as_images = lambda a: torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8)  # noqa: E731
    return as_images(X_tr[part]), torch.tensor(y_tr[part]), as_images(X_te), torch.tensor(y_te)


def accuracy(
    model: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, y: torch.Tensor
) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


class HookedDDP:
    """Torch's DDP, with an optional compression hook, behind the wrappers' eval API.

    DDP keeps the default ``broadcast_buffers=True``. ``average_for_eval`` holds the
    exact mean of parameters (already equal) and floating buffers, like the wrappers.
    """

    def __init__(self, net: nn.Module, hook: str | None) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
        from torch.nn.parallel import DistributedDataParallel

        self.module = net
        self.numel = sum(p.numel() for p in net.parameters())
        self._ddp = DistributedDataParallel(net, bucket_cap_mb=DDP_BUCKET_MB)
        self._powersgd: Any = None
        self._wire_bytes = 2 if hook == "bf16" else 4
        if hook == "bf16":
            self._ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
        elif hook == "powersgd":
            self._powersgd = powerSGD_hook.PowerSGDState(
                process_group=None,
                matrix_approximation_rank=POWERSGD_RANK,
                start_powerSGD_iter=POWERSGD_START,
            )
            self._ddp.register_comm_hook(self._powersgd, powerSGD_hook.powerSGD_hook)
        elif hook is not None:
            raise ValueError(f"hook must be None, 'bf16' or 'powersgd'; got {hook!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._ddp(x)

    def train(self) -> None:
        self._ddp.train()

    def eval(self) -> None:
        self._ddp.eval()

    def finish_gossip(self) -> None:
        """Nothing is in flight between DDP steps."""

    def close(self) -> None:
        """DDP holds nothing to release here."""

    @contextmanager
    def average_for_eval(self) -> Iterator[None]:
        import torch.distributed as dist

        tensors = [*self.module.parameters()]
        tensors += [b for b in self.module.buffers() if b.is_floating_point()]
        saved = [t.detach().clone() for t in tensors]
        with torch.no_grad():
            for t in tensors:
                dist.all_reduce(t)
                t.div_(dist.get_world_size())
        try:
            yield
        finally:
            with torch.no_grad():
                for t, s in zip(tensors, saved, strict=True):
                    t.copy_(s)

    def allreduce_payload(self, steps: int) -> float:
        """Mean bytes per iteration that enter the gradient all-reduces.

        PowerSGD's own counter gives the elements of its compressed iterations (the
        ``P`` and ``Q`` factors plus the tensors it leaves uncompressed).
        """
        if self._powersgd is None:
            return float(self._wire_bytes * self.numel)
        vanilla = min(steps, POWERSGD_START) * self.numel
        return 4.0 * (vanilla + self._powersgd.total_numel_after_compression) / steps


def wrap(
    case: Case, net: nn.Module, opt: torch.optim.Optimizer, steps_per_epoch: int
) -> DataParallelModule | HookedDDP:
    if case.algorithm == "ddp":
        return HookedDDP(net, case.hook)
    opts = dict(case.options)
    if opts.get("allreduce_warmup_steps") == -1:
        opts["allreduce_warmup_steps"] = steps_per_epoch
    return make_data_parallel(case.algorithm, net, opt, **opts)


def traffic(model: DataParallelModule | HookedDDP, net: nn.Module, steps: int) -> dict:
    """Bytes per rank per iteration: gossip's measured ``bytes_sent`` (mean over ranks),
    or the input of the gradient all-reduces (AR-SGD, DDP), which is not what a rank
    sends (a ring all-reduce sends about 2(n-1)/n times it)."""
    import torch.distributed as dist

    if isinstance(model, HookedDDP):
        return {"bytes_sent": None, "allreduce_payload": model.allreduce_payload(steps)}
    if model.algorithm == "ar":
        return {
            "bytes_sent": None,
            "allreduce_payload": 4.0 * sum(p.numel() for p in net.parameters()),
        }
    sent = torch.tensor([float(model.bytes_sent)], dtype=torch.float64)  # type: ignore[attr-defined]
    dist.all_reduce(sent)
    return {"bytes_sent": float(sent) / dist.get_world_size() / steps, "allreduce_payload": None}


def run_case(
    rank: int, n: int, case: Case, data: tuple[torch.Tensor, ...], epochs: int, seed: int
) -> dict[str, Any]:
    """Train ``case`` from ``seed``; test accuracy of the average and own models, traffic."""
    import torch.distributed as dist

    Xs, ys, Xt, yt = data
    steps_per_epoch = len(Xs) // BATCH
    torch.manual_seed(seed)
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    model = wrap(case, net, opt, steps_per_epoch)
    gen = torch.Generator().manual_seed(1000 * seed + rank)
    criterion = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(Xs), generator=gen)
        for i in range(steps_per_epoch):
            batch = order[i * BATCH : (i + 1) * BATCH]
            criterion(model(Xs[batch]), ys[batch]).backward()
            opt.step()
            opt.zero_grad()
    dist.barrier()  # AD-PSGD: every rank has stopped asking before the own models are read
    model.finish_gossip()
    model.eval()
    own = torch.tensor([accuracy(model, Xt, yt)])
    dist.all_reduce(own)
    with model.average_for_eval():
        avg = accuracy(model, Xt, yt)
    model.close()
    return {"average": avg, "own": float(own) / n, **traffic(model, net, epochs * steps_per_epoch)}


def train(
    rank: int, n: int, cases: list[Case], splits: Sequence[str], epochs: int, seeds: list[int]
) -> dict[str, list[dict[str, Any]]]:
    torch.set_num_threads(1)
    out: dict[str, list[dict[str, Any]]] = {}
    for split in splits:
        data = digits_data(rank, n, split)
        for case in cases:
            for seed in seeds:
                start = time.perf_counter()
                result = run_case(rank, n, case, data, epochs, seed)
                out.setdefault(f"{split}|{case.label}", []).append(result)
                if rank == 0:
                    took = time.perf_counter() - start
                    print(
                        f"  {split} {case.label} seed {seed}: {result} ({took:.1f} s)", flush=True
                    )
    return out


def run_values(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in runs]


def mean_pm(runs: list[float], scale: float = 1.0, digits: int = 3, sign: str = "") -> str:
    """Mean ± sample standard deviation over seeds (just the mean for one seed)."""
    mean = round(statistics.mean(runs) * scale, digits) + 0.0  # + 0.0: no "-0.00"
    if len(runs) < 2:
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} ± {statistics.stdev(runs) * scale:.{digits}f}"


def paired_delta(runs: list[dict[str, Any]], ref: list[dict[str, Any]]) -> list[float]:
    """Per-seed difference of network-average accuracy, in points (same seed, paired)."""
    return [100.0 * (r["average"] - b["average"]) for r, b in zip(runs, ref, strict=True)]
