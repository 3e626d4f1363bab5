"""The one place that knows about process groups, backends and devices."""

from __future__ import annotations

import os
import socket
import zlib

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

__all__ = [
    "comm_device_for",
    "group_rank",
    "group_size",
    "host_key",
    "resolve_group",
    "to_global_rank",
]


def resolve_group(process_group: ProcessGroup | None) -> ProcessGroup:
    """Return ``process_group``, or WORLD when ``None``.

    Raises:
        TypeError: If ``process_group`` is neither a ``ProcessGroup`` nor ``None``.
        RuntimeError: If ``torch.distributed`` is unavailable or not initialised.
    """
    if process_group is not None and not isinstance(process_group, ProcessGroup):
        raise TypeError(
            "process_group must be a torch.distributed.ProcessGroup or None; got "
            f"{type(process_group).__name__} {process_group!r:.80}"
        )
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    if not dist.is_initialized():
        raise RuntimeError(
            "process_group: torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) first (e.g. under torchrun)"
        )
    group = dist.group.WORLD if process_group is None else process_group
    assert group is not None
    return group


def group_rank(group: ProcessGroup) -> int:
    """This process's rank within ``group``."""
    return dist.get_rank(group)


def group_size(group: ProcessGroup) -> int:
    """Number of ranks in ``group``."""
    return dist.get_world_size(group)


def to_global_rank(group: ProcessGroup, rank: int) -> int:
    """Translate a rank of ``group`` to the global rank that ``P2POp`` expects."""
    if group is dist.group.WORLD:
        return rank
    return dist.get_global_rank(group, rank)


def comm_device_for(group: ProcessGroup, requested: torch.device | str | None) -> torch.device:
    """The device that gossip buffers live on.

    NCCL needs CUDA tensors and gloo CPU ones; ``requested`` overrides the choice.

    Raises:
        TypeError: If ``group`` is not a ``ProcessGroup``, or ``requested`` is neither a
            device, a str nor ``None``.
        ValueError: If ``requested`` is not a device name, or a device the group's
            backend cannot send from.
    """
    if requested is not None and not isinstance(requested, torch.device | str):
        raise TypeError(
            "requested must be a torch.device, a device name or None; got "
            f"{type(requested).__name__} {requested!r}"
        )
    if requested is not None:
        try:
            torch.device(requested)
        except RuntimeError as exc:
            raise ValueError(f"requested: {requested!r} is not a device ({exc})") from None
    if not isinstance(group, ProcessGroup):
        raise TypeError(
            f"group must be a torch.distributed.ProcessGroup; got {type(group).__name__}"
        )
    backend = str(dist.get_backend(group)).lower()
    if requested is None:
        if "nccl" in backend:
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(requested)
    if backend == "gloo" and device.type != "cpu":
        raise ValueError(f"comm_device: the gloo backend gossips on CPU tensors; got {device}")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"comm_device: the nccl backend gossips on CUDA tensors; got {device}")
    if str(device) == "cuda":  # no index given: use the current device
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def host_key() -> int:
    """A number that two processes share exactly when they run on the same host.

    The host name, and the local address this process reaches ``MASTER_ADDR`` from (the
    address of its network namespace: emulated hosts on one machine share a host name but
    not an address). Connecting a UDP socket sends nothing; where there is no
    ``MASTER_ADDR`` (a file rendezvous), the host name alone decides.
    """
    address = ""
    master = os.environ.get("MASTER_ADDR")
    if master:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((master, int(os.environ.get("MASTER_PORT", "29500") or 29500)))
                address = str(probe.getsockname()[0])
        except (OSError, ValueError):
            address = ""
    return zlib.crc32(f"{socket.gethostname()}|{address}".encode())
