"""Construction-time checks, each one cheap collective."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup

from gossip_comm import comm_device_for, resolve_group

__all__ = ["check_optimizer_owns", "check_same_model", "checked_parameters"]


def _fingerprint(t: torch.Tensor) -> tuple[float, float]:
    flat = t.detach().reshape(-1).to(torch.float64)
    ramp = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device) % 97 + 1
    return float(flat.sum()), float((flat * ramp).sum())


def check_same_model(module: nn.Module, group: ProcessGroup, device: torch.device) -> None:
    """Raise unless every rank holds the same parameters and buffers (one all-reduce).

    Raises:
        ValueError: Naming the first parameter or buffer that differs across ranks.
    """
    named = list(module.named_parameters()) + list(module.named_buffers())
    if not named:
        return
    prints = torch.tensor([v for _, t in named for v in _fingerprint(t)], dtype=torch.float64)
    both = torch.cat([prints, -prints]).to(device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    high, low = both[: len(prints)].cpu(), -both[len(prints) :].cpu()
    for i, (name, _) in enumerate(named):
        if not torch.equal(high[2 * i : 2 * i + 2], low[2 * i : 2 * i + 2]):
            raise ValueError(
                f"module: '{name}' differs across ranks; every rank must start from the same "
                "model (seed identically, or load the same checkpoint, before wrapping)"
            )


def check_optimizer_owns(params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    """Raise unless ``optimizer`` updates exactly the module's trainable parameters."""
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [i for i, p in enumerate(params) if id(p) not in owned]
    if missing or len(owned) != len(params):
        raise ValueError(
            "optimizer must hold exactly the module's trainable parameters "
            f"({len(params)}); it holds {len(owned)}, missing {len(missing)}"
        )


def checked_parameters(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    process_group: ProcessGroup | None,
    *,
    same_model: bool = True,
) -> tuple[ProcessGroup, list[nn.Parameter]]:
    """The checks every wrapper runs at construction; returns the group and trainable params.

    ``same_model=False`` skips the cross-rank comparison (a collective): a process that
    joins a running job receives its model from a member instead.

    Raises:
        RuntimeError: If ``torch.distributed`` is not initialised.
        ValueError: If the model differs across ranks, has no trainable parameters, or the
            optimizer does not own exactly them.
    """
    group = resolve_group(process_group)
    if same_model:
        check_same_model(module, group, comm_device_for(group, None))
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("module has no trainable parameters")
    check_optimizer_owns(params, optimizer)
    return group, params
