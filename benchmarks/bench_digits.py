"""Accuracy on real data for gossip-nn's options: buffer modes, exact averaging, SlowMo,
compressed gossip.

scikit-learn's bundled digits (8x8 images), a small CNN with BatchNorm, 4 ranks on gloo.
Two ways to split the training set: ``iid`` (rank r takes every 4th sample) and
``skewed`` (sorted by label, so each rank sees about 2-3 classes, where local BatchNorm
statistics differ most). Reports test accuracy of

- the network-average model (``average_for_eval``: parameters and buffers averaged), and
- the ranks' own models (each with its own parameters and buffers), averaged over ranks,

as the mean over seeds. Four sections, each its own results file:

- ``buffers``: the ``buffers=`` modes under SGP, which chose the default
  (``results/buffers.*``);
- ``options``: Gossip-PGA, all-reduce warm-up and SlowMo against plain SGP
  (``results/gossip_options.*``);
- ``consensus_steps``: the compressed configurations that miss the 0.5-point target
  (``lowrank:2`` everywhere, AD-PSGD with ``topk:0.01``) at several consensus steps
  (``results/compression_digits_steps.*``).
- ``compression``: SGP, OSGP, D-PSGD and AD-PSGD with ``compression=`` none, ``int8``,
  ``topk:0.01`` and ``lowrank:2`` at the default consensus steps, against AR-SGD, torch
  DDP, DDP with the PowerSGD hook (rank 2) and DDP with the bf16 hook, with the bytes
  each rank sends per iteration (``results/compression_digits.*``; iid split only).

Run: ``nox -s bench`` or ``python benchmarks/bench_digits.py [--quick]
[--only {buffers,options,compression,consensus_steps}]`` from any directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from _results import write_results
from gossip_comm import make_compressor
from gossip_comm.testing import run_distributed
from gossip_nn import ALGORITHMS, DataParallelModule, SlowMoOptions, make_data_parallel

WORLD = 4
EPOCHS, QUICK_EPOCHS = 12, 2
COMPRESSION_EPOCHS = EPOCHS  # the compression section's own count (see its notes)
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
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


BUFFER_CASES = [
    Case(label="average", options={"buffers": "average"}),
    Case(label="local", options={"buffers": "local"}),
    Case(label="broadcast", options={"buffers": "broadcast"}),
]
OPTION_CASES = [
    Case(label="SGP"),
    Case(label="SGP + Gossip-PGA (every 8)", options={"global_average_every": 8}),
    Case(label="SGP + all-reduce warm-up (1 epoch)", options={"allreduce_warmup_steps": -1}),
    Case(
        label="SGP + SlowMo (beta 0.5, every 8)",
        options={"slowmo": SlowMoOptions(beta=0.5, lr=1.0, every=8)},
    ),
]
POWERSGD_LABEL = f"DDP + PowerSGD r{POWERSGD_RANK}"


def _compression_cases() -> list[Case]:
    """AR-SGD and DDP references, then each gossip algorithm with each compressor."""
    cases = [
        Case(label="ar", algorithm="ar"),
        Case(label="DDP", algorithm="ddp"),
        Case(label=POWERSGD_LABEL, algorithm="ddp", hook="powersgd", baseline="DDP"),
        Case(label="DDP + bf16 hook", algorithm="ddp", hook="bf16", baseline="DDP"),
    ]
    for algorithm in GOSSIP_ALGORITHMS:
        for spec in COMPRESSIONS:
            cases.append(
                Case(
                    label=f"{algorithm} {spec or 'none'}",
                    algorithm=algorithm,
                    options={"compression": spec},
                    baseline=None if spec is None else f"{algorithm} none",
                )
            )
    return cases


COMPRESSION_CASES = _compression_cases()


def _net() -> nn.Module:
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


def _data(rank: int, n: int, split: str) -> tuple[torch.Tensor, ...]:
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


def _accuracy(
    model: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, y: torch.Tensor
) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


class _HookedDDP:
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


def _wrap(
    case: Case, net: nn.Module, opt: torch.optim.Optimizer, steps_per_epoch: int
) -> DataParallelModule | _HookedDDP:
    if case.algorithm == "ddp":
        return _HookedDDP(net, case.hook)
    opts = dict(case.options)
    if opts.get("allreduce_warmup_steps") == -1:
        opts["allreduce_warmup_steps"] = steps_per_epoch
    return make_data_parallel(case.algorithm, net, opt, **opts)


def _traffic(model: DataParallelModule | _HookedDDP, net: nn.Module, steps: int) -> dict:
    """Bytes per rank per iteration: gossip's measured ``bytes_sent`` (mean over ranks),
    or the input of the gradient all-reduces (AR-SGD, DDP), which is not what a rank
    sends (a ring all-reduce sends about 2(n-1)/n times it)."""
    import torch.distributed as dist

    if isinstance(model, _HookedDDP):
        return {"bytes_sent": None, "allreduce_payload": model.allreduce_payload(steps)}
    if model.algorithm == "ar":
        return {
            "bytes_sent": None,
            "allreduce_payload": 4.0 * sum(p.numel() for p in net.parameters()),
        }
    sent = torch.tensor([float(model.bytes_sent)], dtype=torch.float64)  # type: ignore[attr-defined]
    dist.all_reduce(sent)
    return {"bytes_sent": float(sent) / dist.get_world_size() / steps, "allreduce_payload": None}


def _run(
    rank: int, n: int, case: Case, data: tuple[torch.Tensor, ...], epochs: int, seed: int
) -> dict[str, Any]:
    """Train ``case`` from ``seed``; test accuracy of the average and own models, traffic."""
    import torch.distributed as dist

    Xs, ys, Xt, yt = data
    steps_per_epoch = len(Xs) // BATCH
    torch.manual_seed(seed)
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    model = _wrap(case, net, opt, steps_per_epoch)
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
    own = torch.tensor([_accuracy(model, Xt, yt)])
    dist.all_reduce(own)
    with model.average_for_eval():
        avg = _accuracy(model, Xt, yt)
    model.close()
    return {"average": avg, "own": float(own) / n, **_traffic(model, net, epochs * steps_per_epoch)}


def _train(
    rank: int, n: int, cases: list[Case], splits: Sequence[str], epochs: int, seeds: list[int]
) -> dict[str, list[dict[str, Any]]]:
    torch.set_num_threads(1)
    out: dict[str, list[dict[str, Any]]] = {}
    for split in splits:
        data = _data(rank, n, split)
        for case in cases:
            for seed in seeds:
                start = time.perf_counter()
                result = _run(rank, n, case, data, epochs, seed)
                out.setdefault(f"{split}|{case.label}", []).append(result)
                if rank == 0:
                    took = time.perf_counter() - start
                    print(
                        f"  {split} {case.label} seed {seed}: {result} ({took:.1f} s)", flush=True
                    )
    return out


def _values(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in runs]


def _summarise(
    res: dict[str, list[dict[str, Any]]], cases: list[Case], splits: Sequence[str]
) -> list[dict]:
    rows = []
    for split in splits:
        for case in cases:
            runs = res[f"{split}|{case.label}"]
            avg, own = _values(runs, "average"), _values(runs, "own")
            rows.append(
                {
                    "split": split,
                    "case": case.label,
                    "average_model_acc": round(statistics.mean(avg), 4),
                    "own_models_acc": round(statistics.mean(own), 4),
                    "average_model_runs": avg,
                    "own_models_runs": own,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _pm(runs: list[float], scale: float = 1.0, digits: int = 3, sign: str = "") -> str:
    """Mean ± sample standard deviation over seeds (just the mean for one seed)."""
    mean = round(statistics.mean(runs) * scale, digits) + 0.0  # + 0.0: no "-0.00"
    if len(runs) < 2:
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} ± {statistics.stdev(runs) * scale:.{digits}f}"


def _bench_sgp_options(name: str, quick: bool, epochs: int, seeds: list[int]) -> None:
    """The ``buffers`` and ``options`` sections: SGP settings on both splits."""
    stem, cases, title = {
        "buffers": (
            "buffers",
            BUFFER_CASES,
            "BatchNorm buffers under SGP: test accuracy by buffers= mode",
        ),
        "options": (
            "gossip_options",
            OPTION_CASES,
            "Exact averaging and SlowMo against plain SGP",
        ),
    }[name]
    res = run_distributed(_train, WORLD, (cases, SPLITS, epochs, seeds), timeout=3600)
    rows = _summarise(res[0], cases, SPLITS)
    write_results(
        stem,
        {"rows": rows},
        header=["split", "setting", "network-average model", "ranks' own models (mean)"],
        rows=[
            [r["split"], r["case"], _pm(r["average_model_runs"]), _pm(r["own_models_runs"])]
            for r in rows
        ],
        title=title,
        quick=quick,
        notes=(
            f"digits, small CNN with BatchNorm, {WORLD} ranks, SGP, {epochs} epochs, "
            f"batch {BATCH}; mean ± standard deviation over seeds {seeds}. BatchNorm "
            "uses batch statistics in training, so the buffer mode changes only what "
            "evaluation sees."
        ),
        meta={"world_size": WORLD, "epochs": epochs, "seeds": seeds, "batch": BATCH},
    )


def _delta(runs: list[dict[str, Any]], ref: list[dict[str, Any]]) -> list[float]:
    """Per-seed difference of network-average accuracy, in points (same seed, paired)."""
    return [100.0 * (r["average"] - b["average"]) for r, b in zip(runs, ref, strict=True)]


def _compression_rows(res: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per case: accuracies, traffic, differences to uncompressed and PowerSGD."""
    runs_of = {c.label: res[f"iid|{c.label}"] for c in COMPRESSION_CASES}
    rows = []
    for case in COMPRESSION_CASES:
        runs = runs_of[case.label]
        row: dict[str, Any] = {
            "case": case.label,
            "algorithm": "DDP" if case.algorithm == "ddp" else case.algorithm,
            "compression": case.compression,
            "average_model_acc": round(statistics.mean(_values(runs, "average")), 4),
            "own_models_acc": round(statistics.mean(_values(runs, "own")), 4),
            "average_model_runs": _values(runs, "average"),
            "own_models_runs": _values(runs, "own"),
        }
        for key in ("bytes_sent", "allreduce_payload"):
            values = _values(runs, key)
            row[f"{key}_per_iter"] = None if values[0] is None else statistics.mean(values)
        for name, ref in (("uncompressed", case.baseline), ("powersgd", POWERSGD_LABEL)):
            deltas = None if ref in (None, case.label) else _delta(runs, runs_of[ref])
            row[f"delta_vs_{name}_points_runs"] = deltas
            row[f"delta_vs_{name}_points"] = None if deltas is None else statistics.mean(deltas)
            row[f"within_{TARGET_POINTS}_of_{name}"] = (
                None if deltas is None else statistics.mean(deltas) >= -TARGET_POINTS
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _compression_cells(row: dict[str, Any]) -> list[str]:
    def delta(name: str) -> str:
        runs = row[f"delta_vs_{name}_points_runs"]
        return "—" if runs is None else _pm(runs, digits=2, sign="+")

    def within(name: str) -> str:
        value = row[f"within_{TARGET_POINTS}_of_{name}"]
        return "—" if value is None else ("yes" if value else "no")

    if row["bytes_sent_per_iter"] is not None:
        traffic = f"{row['bytes_sent_per_iter']:,.0f}"
    else:
        traffic = f"({row['allreduce_payload_per_iter']:,.0f} all-reduced)"
    return [
        row["algorithm"],
        row["compression"],
        _pm(row["average_model_runs"], scale=100.0, digits=2),
        _pm(row["own_models_runs"], scale=100.0, digits=2),
        delta("uncompressed"),
        within("uncompressed"),
        delta("powersgd"),
        within("powersgd"),
        traffic,
    ]


def _bench_compression(quick: bool, epochs: int, seeds: list[int]) -> None:
    """The ``compression`` section: compressed gossip against DDP's compression hooks."""
    start = time.perf_counter()
    res = run_distributed(
        _train, WORLD, (COMPRESSION_CASES, ("iid",), epochs, seeds), timeout=4 * 3600
    )
    wall = time.perf_counter() - start
    rows = _compression_rows(res[0])
    steps = {spec: make_compressor(spec).default_consensus_step for spec in COMPRESSIONS if spec}
    reduced = "" if quick or epochs == EPOCHS else f" (reduced from {EPOCHS} to fit the time)"
    write_results(
        "compression_digits",
        {"rows": rows},
        header=[
            "algorithm",
            "compression",
            "network-average top-1 (%)",
            "ranks' own top-1 (%, mean)",
            "Δ vs uncompressed (points)",
            f"within {TARGET_POINTS} of uncompressed",
            f"Δ vs DDP + PowerSGD r{POWERSGD_RANK} (points)",
            f"within {TARGET_POINTS} of PowerSGD",
            "bytes sent / rank / iter",
        ],
        rows=[_compression_cells(r) for r in rows],
        title="Compressed gossip on digits: accuracy against uncompressed and DDP + PowerSGD",
        quick=quick,
        notes=(
            f"digits, small CNN with BatchNorm, {WORLD} ranks on gloo, iid split, "
            f"{epochs} epochs{reduced}, batch {BATCH}, SGD lr 0.05 momentum 0.9; mean ± "
            f"standard deviation over seeds {seeds}. Compression at the default consensus "
            f"steps ({', '.join(f'{s}: {g:g}' for s, g in steps.items())}). "
            "Δ is the network-average model's top-1 minus that of the same algorithm "
            "uncompressed (for the DDP hooks: plain DDP), or of DDP + PowerSGD, per seed "
            f"(same initial model and batches), mean ± spread. 'within {TARGET_POINTS}' "
            f"is yes when the mean Δ is at least -{TARGET_POINTS} (no more than "
            f"{TARGET_POINTS} points below). DDP: torch's DistributedDataParallel, one "
            f"bucket (bucket_cap_mb={DDP_BUCKET_MB:g}); PowerSGD hook with "
            f"matrix_approximation_rank={POWERSGD_RANK}, start_powerSGD_iter="
            f"{POWERSGD_START} (vanilla all-reduce before; torch requires at least 2), "
            "error feedback and warm start on. Bytes: gossip's measured bytes_sent per "
            "iteration, mean over ranks (payload and push-sum weights; BatchNorm buffers "
            "travel with the parameters); in parentheses, the bytes entering the gradient "
            "all-reduces per iteration (PowerSGD's averaged over the run, its first "
            f"{POWERSGD_START} iterations uncompressed): a ring all-reduce sends about "
            f"2(n-1)/n = {2 * (WORLD - 1) / WORLD:g} times that per rank. The test set "
            "has 360 images: one image is 0.28 points."
        ),
        meta={
            "world_size": WORLD,
            "epochs": epochs,
            "epochs_default": EPOCHS,
            "seeds": seeds,
            "batch": BATCH,
            "split": "iid",
            "consensus_steps": steps,
            "powersgd": {
                "matrix_approximation_rank": POWERSGD_RANK,
                "start_powerSGD_iter": POWERSGD_START,
                "bucket_cap_mb": DDP_BUCKET_MB,
            },
            "target_points": TARGET_POINTS,
            "wall_s": round(wall, 1),
        },
    )


#: (algorithm, compressor, consensus steps) the ``consensus_steps`` section sweeps: the
#: configurations that miss the 0.5-point target at their default step.
STEP_SWEEP: tuple[tuple[str, str, tuple[float, ...]], ...] = (
    *((algorithm, "lowrank:2", (0.05, 0.1, 0.2, 0.3)) for algorithm in GOSSIP_ALGORITHMS),
    ("adpsgd", "topk:0.01", (0.02, 0.05, 0.1)),
)


def _step_cases() -> list[Case]:
    """Each swept configuration at each step, after its algorithm uncompressed."""
    cases = [Case(label=f"{a} none", algorithm=a) for a in GOSSIP_ALGORITHMS]
    for algorithm, spec, steps in STEP_SWEEP:
        for gamma in steps:
            cases.append(
                Case(
                    label=f"{algorithm} {spec} {gamma:g}",
                    algorithm=algorithm,
                    options={"compression": spec, "consensus_step": gamma},
                    baseline=f"{algorithm} none",
                )
            )
    return cases


def _bench_consensus_steps(quick: bool, epochs: int, seeds: list[int]) -> None:
    """The ``consensus_steps`` section: does a larger consensus step close the gap?"""
    cases = _step_cases()
    start = time.perf_counter()
    res = run_distributed(_train, WORLD, (cases, ("iid",), epochs, seeds), timeout=4 * 3600)
    wall = time.perf_counter() - start
    runs_of = {c.label: res[0][f"iid|{c.label}"] for c in cases}
    rows = []
    for case in cases:
        if case.baseline is None:
            continue
        runs = runs_of[case.label]
        deltas = _delta(runs, runs_of[case.baseline])
        rows.append(
            {
                "algorithm": case.algorithm,
                "compression": case.compression,
                "consensus_step": case.options["consensus_step"],
                "default_step": make_compressor(case.compression).default_consensus_step,
                "average_model_runs": _values(runs, "average"),
                "own_models_runs": _values(runs, "own"),
                "uncompressed_runs": _values(runs_of[case.baseline], "average"),
                "delta_points_runs": deltas,
                f"within_{TARGET_POINTS}": statistics.mean(deltas) >= -TARGET_POINTS,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    write_results(
        "compression_digits_steps",
        {"rows": rows},
        header=[
            "algorithm",
            "compression",
            "consensus step",
            "network-average top-1 (%)",
            "ranks' own top-1 (%, mean)",
            "uncompressed top-1 (%)",
            "Δ vs uncompressed (points)",
            f"within {TARGET_POINTS}",
        ],
        rows=[
            [
                r["algorithm"],
                r["compression"],
                f"{r['consensus_step']:g}"
                + (" (default)" if r["consensus_step"] == r["default_step"] else ""),
                _pm(r["average_model_runs"], scale=100.0, digits=2),
                _pm(r["own_models_runs"], scale=100.0, digits=2),
                _pm(r["uncompressed_runs"], scale=100.0, digits=2),
                _pm(r["delta_points_runs"], digits=2, sign="+"),
                "yes" if r[f"within_{TARGET_POINTS}"] else "no",
            ]
            for r in rows
        ],
        title="Compressed gossip on digits: the consensus step of the configurations that "
        "miss the target",
        quick=quick,
        notes=(
            f"Same setting as compression_digits ({WORLD} ranks, iid split, {epochs} "
            f"epochs, batch {BATCH}, seeds {seeds}), with the consensus step swept for "
            "lowrank:2 (every gossip algorithm) and AD-PSGD with topk:0.01. Δ is the "
            "network-average top-1 minus that of the same algorithm uncompressed in this "
            "run, per seed, mean ± spread. AD-PSGD is asynchronous: its runs, the "
            "uncompressed one included, differ from run to run with the same seed."
        ),
        meta={
            "world_size": WORLD,
            "epochs": epochs,
            "seeds": seeds,
            "batch": BATCH,
            "sweep": [list(x) for x in STEP_SWEEP],
            "target_points": TARGET_POINTS,
            "wall_s": round(wall, 1),
        },
    )


SECTIONS = ("buffers", "options", "compression", "consensus_steps")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed")
    parser.add_argument(
        "--only", choices=SECTIONS, default=None, help="run one section (default: all)"
    )
    args = parser.parse_args(argv)
    seeds = list(QUICK_SEEDS if args.quick else SEEDS)
    for name in SECTIONS if args.only is None else (args.only,):
        if name == "compression":
            _bench_compression(
                args.quick, QUICK_EPOCHS if args.quick else COMPRESSION_EPOCHS, seeds
            )
        elif name == "consensus_steps":
            _bench_consensus_steps(
                args.quick, QUICK_EPOCHS if args.quick else COMPRESSION_EPOCHS, seeds
            )
        else:
            _bench_sgp_options(name, args.quick, QUICK_EPOCHS if args.quick else EPOCHS, seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
