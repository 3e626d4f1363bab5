"""``make_data_parallel``: one entry point for the training algorithms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gossip_nn._base import DataParallelModule
from gossip_nn.adpsgd import ADPSGD_TOPOLOGY, BilateralGossipDataParallel
from gossip_nn.allreduce import AllReduceDataParallel
from gossip_nn.gossip import GossipDataParallel
from gossip_nn.localsgd import OUTER_ALGORITHMS, LocalSGDDataParallel
from gossip_nn.options import GossipOptions

__all__ = ["ALGORITHMS", "SET_TOPOLOGY_ALGORITHMS", "gossip_options", "make_data_parallel"]

ALGORITHMS: tuple[str, ...] = ("ar", "sgp", "osgp", "dpsgd", "adpsgd")
"""The five algorithms of the SGP paper, which `make_data_parallel` builds; it builds
[`OUTER_ALGORITHMS`][gossip_nn.OUTER_ALGORITHMS] (local SGD, DiLoCo) too."""

SET_TOPOLOGY_ALGORITHMS: tuple[str, ...] = ("sgp", "osgp", "dpsgd")
"""The algorithms whose wrapper can change its graph or peer count while training
([`set_topology`][gossip_nn.DataParallelModule.set_topology]); the others raise."""


def gossip_options(algorithm: str, **options: Any) -> GossipOptions:
    """The [`GossipOptions`][gossip_nn.GossipOptions] `make_data_parallel` builds for
    ``algorithm``: ``options`` with the algorithm's own defaults (AD-PSGD's
    [`ADPSGD_TOPOLOGY`][gossip_nn.ADPSGD_TOPOLOGY]).

    A launcher that checks its flags before any process exists asks here, then
    [`check_world_size`][gossip_nn.GossipOptions.check_world_size] and
    [`ignored_by`][gossip_nn.GossipOptions.ignored_by] on the result.

    Args:
        algorithm: One of `ALGORITHMS` or
            [`OUTER_ALGORITHMS`][gossip_nn.OUTER_ALGORITHMS] (any case).
        **options: Fields of [`GossipOptions`][gossip_nn.GossipOptions].

    Returns:
        The checked options.

    Raises:
        TypeError: If ``algorithm`` is not a str, or for an unknown option name or a
            value of the wrong type.
        ValueError: For an unknown algorithm or an out-of-range value.
    """
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a str; got {type(algorithm).__name__} {algorithm!r}")
    if algorithm.lower() not in (*ALGORITHMS, *OUTER_ALGORITHMS):
        known = ", ".join((*ALGORITHMS, *OUTER_ALGORITHMS))
        raise ValueError(f"algorithm must be one of {known}; got {algorithm!r}")
    if algorithm.lower() == "adpsgd":
        return GossipOptions(**{"topology": ADPSGD_TOPOLOGY, **options})
    return GossipOptions(**options)


def make_data_parallel(
    algorithm: str,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    ddp_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> DataParallelModule:
    """Wrap ``module`` for data-parallel training with ``algorithm``.

    The training loop stays the plain PyTorch loop: forward, ``backward()``,
    ``optimizer.step()``, ``optimizer.zero_grad()``.

    Args:
        algorithm: ``"ar"`` (all-reduce), ``"sgp"``, ``"osgp"``, ``"dpsgd"``,
            ``"adpsgd"`` (whose topology defaults to
            [`ADPSGD_TOPOLOGY`][gossip_nn.ADPSGD_TOPOLOGY]), ``"localsgd"`` or
            ``"diloco"`` (an exact average every ``average_every`` steps; see
            [`LocalSGDDataParallel`][gossip_nn.LocalSGDDataParallel]).
        module: The model, identical on every rank.
        optimizer: The optimizer over ``module``'s parameters.
        ddp_options: ``"ar"`` only: keywords passed on to `DistributedDataParallel`
            (see [`AllReduceDataParallel`][gossip_nn.AllReduceDataParallel] for the
            ones accepted).
        **options: Fields of [`GossipOptions`][gossip_nn.GossipOptions].

    Returns:
        The wrapped module: a [`DataParallelModule`][gossip_nn.DataParallelModule].

    Raises:
        ValueError: For an unknown algorithm or invalid options, or ``ddp_options``
            with an algorithm other than ``"ar"``.
        TypeError: For a non-str algorithm, an unknown option name or a value of the
            wrong type.
    """
    opts = gossip_options(algorithm, **options)
    key = algorithm.lower()
    if ddp_options is not None and key != "ar":
        raise ValueError(
            f"ddp_options applies only to algorithm 'ar', which runs DistributedDataParallel; "
            f"{algorithm!r} does not: leave ddp_options unset"
        )
    if key == "adpsgd":
        return BilateralGossipDataParallel(module, optimizer, options=opts)
    if key == "ar":
        return AllReduceDataParallel(module, optimizer, options=opts, ddp_options=ddp_options)
    if key in OUTER_ALGORITHMS:
        return LocalSGDDataParallel(module, optimizer, algorithm=key, options=opts)
    return GossipDataParallel(module, optimizer, algorithm=key, options=opts)
