"""What gossip does, as metrics for a Lightning trainer's loggers.

Which numbers are logged (``step_metrics``), the one that needs a collective
(``consensus_distance``) and how they reach the loggers (``log_to_loggers``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from gossip_nn._base import DataParallelModule

__all__ = ["PREFIX", "consensus_distance", "log_to_loggers", "step_metrics"]

PREFIX = "gossip/"
"""Every metric's name starts with it, so loggers group them."""

_PUSH_SUM = ("sgp", "osgp")


def step_metrics(wrapper: DataParallelModule) -> dict[str, float]:
    """This rank's counters after an optimizer step: bytes sent so far (and the
    push-sum weight for SGP and OSGP)."""
    metrics = {f"{PREFIX}bytes_sent": float(wrapper.bytes_sent)}
    if wrapper.algorithm in _PUSH_SUM:
        metrics[f"{PREFIX}ps_weight"] = wrapper.ps_weight
    return metrics


@torch.no_grad()
def consensus_distance(own: Sequence[torch.Tensor], average: Sequence[torch.Tensor]) -> float:
    r"""The root-mean-square distance of the ranks' parameters from their average.

    $\sqrt{\frac1n \sum_i \lVert z_i - \bar z \rVert^2}$, with ``own`` this rank's $z_i$
    and ``average`` $\bar z$ (the same on every rank): one all-reduce of a scalar over
    the default group, a collective every rank must enter.
    """
    squares = torch.zeros((), dtype=torch.float64, device=own[0].device if own else "cpu")
    for mine, mean in zip(own, average, strict=True):
        squares += (mine.double() - mean.double()).pow(2).sum()
    ranks = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(squares)
        ranks = dist.get_world_size()
    return math.sqrt(float(squares.item()) / ranks)


def log_to_loggers(loggers: Sequence[Any], metrics: dict[str, float], step: int) -> None:
    """Send ``metrics`` at ``step`` to every logger (call on global rank 0 only)."""
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
