"""Every rank's model as one: rank 0's broadcast, the network average outside a fit."""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gossip_nn._base import network_average

__all__ = ["average_module", "broadcast_from_rank0"]


def _state_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The module's floating parameters and buffers, each once."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return [t.data for t in tensors if t.is_floating_point()]


@torch.no_grad()
def broadcast_from_rank0(module: nn.Module) -> None:
    """Start every rank from global rank 0's parameters and buffers, as DDP does.

    One broadcast per dtype and device: the tensors of each kind travel flattened.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    kinds: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        kinds.setdefault((tensor.dtype, tensor.device), []).append(tensor.data)
    for tensors in kinds.values():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def average_module(module: nn.Module, weight: float) -> Any:
    """The network average of ``module`` (push-sum ``weight``) held until exit."""
    group = dist.group.WORLD
    assert group is not None
    return network_average(_state_tensors(module), weight, group)
