"""``make_data_parallel``: one entry point for the training algorithms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gossip_nn.allreduce import AllReduceDataParallel
from gossip_nn.bilateral import BilateralGossipDataParallel
from gossip_nn.gossip import GossipDataParallel
from gossip_nn.options import GossipOptions

__all__ = ["ALGORITHMS", "make_data_parallel"]

ALGORITHMS: tuple[str, ...] = ("ar", "sgp", "osgp", "dpsgd", "adpsgd")
"""The algorithms `make_data_parallel` builds."""


def make_data_parallel(
    algorithm: str, module: nn.Module, optimizer: torch.optim.Optimizer, **options: Any
) -> AllReduceDataParallel | GossipDataParallel | BilateralGossipDataParallel:
    """Wrap ``module`` for data-parallel training with ``algorithm``.

    The training loop stays the plain PyTorch loop: forward, ``backward()``,
    ``optimizer.step()``, ``optimizer.zero_grad()``.

    Args:
        algorithm: ``"ar"`` (all-reduce), ``"sgp"``, ``"osgp"``, ``"dpsgd"`` or
            ``"adpsgd"`` (whose topology defaults to ``"dynamic-bipartite-exponential"``).
        module: The model, identical on every rank.
        optimizer: The optimizer over ``module``'s parameters.
        **options: Fields of [`GossipOptions`][gossip_nn.GossipOptions]; ``"osgp"``
            sets ``overlap=True`` itself.

    Returns:
        The wrapped module.

    Raises:
        ValueError: For an unknown algorithm or invalid options.
        TypeError: For an unknown option name.
    """
    key = algorithm.lower() if isinstance(algorithm, str) else algorithm
    if key not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}")
    if key == "osgp":
        if options.get("overlap") is False:
            raise ValueError("algorithm='osgp' is SGP with overlap=True; drop overlap=False")
        options = {**options, "overlap": True}
    if key == "adpsgd":
        options = {"topology": "dynamic-bipartite-exponential", **options}
    opts = GossipOptions(**options)
    if key == "adpsgd":
        return BilateralGossipDataParallel(module, optimizer, options=opts)
    if key == "ar":
        return AllReduceDataParallel(module, optimizer, options=opts)
    if key != "osgp" and opts.overlap:
        raise ValueError(f"overlap=True is OSGP: use algorithm='osgp', not {algorithm!r}")
    return GossipDataParallel(module, optimizer, push_sum=key != "dpsgd", options=opts)
