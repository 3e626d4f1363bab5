"""Construction-time checks, each one cheap collective."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup

from gossip_comm import comm_device_for, resolve_group

__all__ = [
    "check_optimizer_owns",
    "check_same_model",
    "check_same_setup",
    "check_wrapper_arguments",
    "checked_parameters",
    "setup_of",
]

#: The packages whose versions every rank must share.
VERSIONED = ("gossip-topology", "gossip-comm", "gossip-nn", "torch")


def _describe(value: Any) -> str:
    """A value as words that are equal on two ranks exactly when the values are."""
    text = repr(value)
    if " at 0x" not in text:
        return text
    name = getattr(value, "name", None)  # a default repr holds an address: not that
    return f"{type(value).__name__} {name!r}" if isinstance(name, str) else type(value).__name__


def _structure(module: nn.Module) -> list[str]:
    """Each parameter's and buffer's name, shape and dtype."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return [f"{n} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for n, t in named]


def setup_of(algorithm: str, options: Any, module: nn.Module) -> dict[str, str]:
    """What every rank of a job must agree on: the algorithm, every gossip option (bar the
    process group and the fault-tolerance handle), the packages' versions and the
    model's structure (a digest of its parameters' and buffers' names, shapes and
    dtypes)."""
    setup = {"algorithm": algorithm}
    for f in dataclasses.fields(options):
        if f.name not in ("process_group", "fault_tolerance"):
            setup[f"option {f.name}"] = _describe(getattr(options, f.name))
    for package in VERSIONED:
        setup[f"{package} version"] = importlib.metadata.version(package)
    digest = hashlib.sha256("\n".join(_structure(module)).encode()).hexdigest()[:16]
    setup["model structure"] = digest
    return setup


def _who(values: list[str]) -> str:
    """``rank 0, 1, 3: 'sgp'; rank 2: 'osgp'``."""
    ranks: dict[str, list[int]] = {}
    for r, v in enumerate(values):
        ranks.setdefault(v, []).append(r)
    return "; ".join(f"rank {', '.join(map(str, rs))}: {v!r}" for v, rs in ranks.items())


def check_same_setup(
    group: ProcessGroup, setup: Mapping[str, str], module: nn.Module | None = None
) -> None:
    """Raise on every rank unless every rank of ``group`` has the same ``setup``.

    One ``all_gather_object`` of the small mapping. When the ``"model structure"`` entries
    differ and ``module`` is given, a second one finds the first parameter or buffer that
    differs, to name it.

    Args:
        group: The ranks that must agree.
        setup: Names and values, e.g. `setup_of`'s; an application may add its own.
        module: The model, to name the difference when the structures differ.

    Raises:
        TypeError: If ``group`` is not a ``ProcessGroup``, ``setup`` not a mapping of
            str to str, or ``module`` neither a module nor ``None``.
        ValueError: Naming the first entry the ranks disagree on, with each rank's value.
    """
    if not isinstance(setup, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in setup.items()
    ):
        raise TypeError(f"setup must be a mapping of str to str; got {setup!r:.80}")
    if module is not None and not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module or None; got {type(module).__name__}")
    if not isinstance(group, ProcessGroup):
        raise TypeError(
            f"group must be a torch.distributed.ProcessGroup; got {type(group).__name__}"
        )
    world = dist.get_world_size(group)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, dict(setup), group=group)
    keys = sorted({k for g in gathered for k in g})
    for key in keys:
        values = [str(g.get(key, "(none)")) for g in gathered]
        if len(set(values)) == 1:
            continue
        if key == "model structure" and module is not None:
            raise ValueError(_structure_difference(group, module, world))
        raise ValueError(
            f"ranks disagree on the {key}: {_who(values)}; start every rank with the same setup"
        )


def _structure_difference(group: ProcessGroup, module: nn.Module, world: int) -> str:
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, _structure(module), group=group)
    for i in range(max(len(s) for s in everyone)):
        entries = [s[i] if i < len(s) else "(none)" for s in everyone]
        if len(set(entries)) > 1:
            return (
                f"ranks disagree on the model structure: parameter or buffer {i} is "
                f"{_who(entries)}; every rank must build the same model"
            )
    return "ranks disagree on the model structure; every rank must build the same model"


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


def check_wrapper_arguments(module: object, optimizer: object, options: object) -> None:
    """The types every wrapper checks first, before any process group.

    Raises:
        TypeError: Naming ``module``, ``optimizer`` or ``options``.
    """
    from gossip_nn.options import GossipOptions

    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}"
        )
    if options is not None and not isinstance(options, GossipOptions):
        raise TypeError(
            f"options must be a gossip_nn.GossipOptions or None; got {type(options).__name__}"
        )


def checked_parameters(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    algorithm: str,
    options: Any,
    *,
    same_model: bool = True,
) -> tuple[ProcessGroup, list[nn.Parameter]]:
    """The checks every wrapper runs at construction; returns the group and trainable params.

    ``same_model=False`` skips the cross-rank comparisons (collectives): a process that
    joins a running job receives its model from a member instead.

    Raises:
        RuntimeError: If ``torch.distributed`` is not initialised.
        ValueError: If the ranks disagree on the algorithm, an option, a package version
            or the model's structure or values; if the model has no trainable
            parameters, or the optimizer does not own exactly them.
    """
    group = resolve_group(options.process_group)
    if same_model:
        check_same_setup(group, setup_of(algorithm, options, module), module)
        check_same_model(module, group, comm_device_for(group, None))
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("module has no trainable parameters")
    check_optimizer_owns(params, optimizer)
    return group, params
