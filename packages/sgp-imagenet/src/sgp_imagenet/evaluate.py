"""Validation: the ranks' own models and the exact network average, on sharded data.

Each rank evaluates its shard of the validation set; one all-reduce sums the shards. The
network average is the wrapper's ``average_for_eval`` (a collective). With precise
BatchNorm (``--precise-bn N``), each model's BatchNorm statistics are first re-estimated
for its current weights over N batches of training images (see
`sgp_imagenet.precise_bn`), and put back afterwards, so evaluation never changes what
training goes on with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gossip_nn import DataParallelModule
from sgp_imagenet.precise_bn import recompute_bn_stats

__all__ = ["accuracy", "evaluate_shard", "kept_buffers", "validate"]


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 hits (counts, not fractions) of ``logits`` against labels ``y``."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit = top5 == y[:, None]
    return float(hit[:, 0].float().sum()), float(hit.any(dim=1).float().sum())


@torch.no_grad()
def evaluate_shard(model: nn.Module, loader: Iterable[Any], device: torch.device) -> torch.Tensor:
    """Sums over this rank's validation shard: ``[loss, top-1 hits, top-5 hits, count]``.

    The loss is the plain cross-entropy (no label smoothing), summed over images.
    """
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums = torch.zeros(4, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        t1, t5 = accuracy(out, y)
        sums += torch.tensor([float(criterion(out.float(), y)), t1, t5, len(y)])
    return sums


@contextmanager
def kept_buffers(model: nn.Module) -> Iterator[None]:
    """Inside the block ``model``'s buffers may change; on exit they are as before."""
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, old in zip(model.buffers(), saved, strict=True):
                b.copy_(old)


def _sharded(
    dp: DataParallelModule, loader: Iterable[Any], device: torch.device,
    comm_device: torch.device, stats: tuple[Iterable[Any], int] | None, *, average: bool,
    then: Callable[[], None] | None = None,
) -> torch.Tensor:  # fmt: skip
    """Evaluate the model ``dp`` holds now, summed over every rank (a collective).

    ``dp`` is in evaluation mode already, so every gossip message for this rank's own
    copy has been folded in (an AD-PSGD passive's responder goes on serving, but into its
    shared copy, not these buffers): the buffers put back afterwards are exactly the ones
    training left.
    """
    with kept_buffers(dp.module):
        if stats is not None:
            batches, n = stats
            recompute_bn_stats(dp.module, batches, num_batches=n, distributed=average)
        sums = evaluate_shard(dp, loader, device).to(comm_device)
        if then is not None:
            then()
    dist.all_reduce(sums)
    return sums.cpu()


def validate(
    dp: DataParallelModule, loader: Iterable[Any], *, device: torch.device,
    comm_device: torch.device, stats_loader: Iterable[Any] | None = None,
    stats_batches: int = 0, inside_average: Callable[[], None] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Validate the ranks' own models and the network average (a collective).

    Args:
        dp: The data-parallel wrapper; it is left in evaluation mode.
        loader: This rank's shard of the validation set.
        device: Where the model computes.
        comm_device: Where the all-reduce's tensor lives.
        stats_loader: Training batches for precise BatchNorm, augmented as in training and
            drawn from every class (``None``: keep the running statistics).
        stats_batches: How many of its batches re-estimate the statistics (0: none).
        inside_average: Called while ``dp`` holds the network average (with its
            re-estimated statistics), after its evaluation: for example to save it.

    Returns:
        ``own_top1`` (the ranks' own models, each on its shard), and the network
        average's ``average_top1``, ``average_top5`` and ``average_loss``.
    """
    stats = (stats_loader, stats_batches) if stats_loader is not None and stats_batches else None
    dp.eval()  # folds in whatever gossip is in flight
    own = _sharded(dp, loader, device, comm_device, stats, average=False)
    with dp.average_for_eval():
        avg = _sharded(dp, loader, device, comm_device, stats, average=True, then=inside_average)
    return {
        "own_top1": 100.0 * float(own[1] / own[3]),
        "average_top1": 100.0 * float(avg[1] / avg[3]),
        "average_top5": 100.0 * float(avg[2] / avg[3]),
        "average_loss": float(avg[0] / avg[3]),
    }
