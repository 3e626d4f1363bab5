"""``make_data_parallel``: one entry point for the training algorithms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gossip_nn._base import DataParallelModule
from gossip_nn._steps import GOSSIP_ALGORITHMS
from gossip_nn.adpsgd import ADPSGD_TOPOLOGY, BilateralGossipDataParallel
from gossip_nn.allreduce import AllReduceDataParallel
from gossip_nn.gossip import GossipDataParallel
from gossip_nn.options import GossipOptions

__all__ = ["ALGORITHMS", "SET_TOPOLOGY_ALGORITHMS", "make_data_parallel"]

ALGORITHMS: tuple[str, ...] = ("ar", *GOSSIP_ALGORITHMS, "adpsgd")
"""The algorithms `make_data_parallel` builds."""

SET_TOPOLOGY_ALGORITHMS: tuple[str, ...] = GOSSIP_ALGORITHMS
"""The algorithms whose wrapper can change its graph or peer count while training
([`set_topology`][gossip_nn.DataParallelModule.set_topology]); the others raise."""


def make_data_parallel(
    algorithm: str, module: nn.Module, optimizer: torch.optim.Optimizer, **options: Any
) -> DataParallelModule:
    """Wrap ``module`` for data-parallel training with ``algorithm``.

    The training loop stays the plain PyTorch loop: forward, ``backward()``,
    ``optimizer.step()``, ``optimizer.zero_grad()``.

    Args:
        algorithm: ``"ar"`` (all-reduce), ``"sgp"``, ``"osgp"``, ``"dpsgd"`` or
            ``"adpsgd"`` (whose topology defaults to
            [`ADPSGD_TOPOLOGY`][gossip_nn.ADPSGD_TOPOLOGY]).
        module: The model, identical on every rank.
        optimizer: The optimizer over ``module``'s parameters.
        **options: Fields of [`GossipOptions`][gossip_nn.GossipOptions].

    Returns:
        The wrapped module: a [`DataParallelModule`][gossip_nn.DataParallelModule].

    Raises:
        ValueError: For an unknown algorithm or invalid options.
        TypeError: For an unknown option name.
    """
    key = algorithm.lower() if isinstance(algorithm, str) else algorithm
    if key not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}")
    if key == "adpsgd":
        opts = GossipOptions(**{"topology": ADPSGD_TOPOLOGY, **options})
        return BilateralGossipDataParallel(module, optimizer, options=opts)
    opts = GossipOptions(**options)
    if key == "ar":
        return AllReduceDataParallel(module, optimizer, options=opts)
    return GossipDataParallel(module, optimizer, algorithm=key, options=opts)
