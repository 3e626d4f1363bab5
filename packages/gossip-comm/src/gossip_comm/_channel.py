"""What every gossiper validates once at construction, and checks on every message.

A `Channel` is the validated context of one gossiper: its group, rank, device, wire dtype
and the shape of what it gossips. The checks are free functions, so gossipers with
different protocols share them without sharing an engine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from gossip_comm._backend import (
    comm_device_for,
    group_rank,
    group_size,
    host_key,
    resolve_group,
)
from gossip_comm.config import DEFAULT_CHUNK_BYTES, GossipConfig
from gossip_comm.errors import NonFiniteError
from gossip_topology import Topology

__all__ = [
    "Channel",
    "agree_across_ranks",
    "check_finite",
    "check_pairwise",
    "check_tensor",
    "checked_step",
    "chunk_numel_for",
    "open_channel",
    "parse_saved_round",
]

_DTYPE_CODES = {
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float32: 3,
    torch.float64: 4,
}


@dataclass(frozen=True, kw_only=True)
class Channel:
    """A validated gossip context: where messages go and what they look like."""

    owner: str
    group: ProcessGroup
    rank: int
    size: int
    device: torch.device
    wire_dtype: torch.dtype
    shape: torch.Size
    dtype: torch.dtype
    timeout: float
    check_finite: bool
    chunk_numel: int = 0  # elements per chunk of a message; 0: one piece
    chunk_everywhere: bool = False  # chunk_bytes was given: chunk every pair's messages
    remote: tuple[bool, ...] = ()  # per rank of the group: on another host than this one
    fault_tolerant: bool = False  # post operations one by one; keep a failed step
    batched: bool = False  # post a step's operations in one group call (NCCL)

    @property
    def numel(self) -> int:
        """Elements per message."""
        return math.prod(self.shape)

    def check(self, tensor: torch.Tensor) -> None:
        """``check_tensor`` against this channel."""
        check_tensor(tensor, self)

    def chunk_to(self, peer: int) -> int:
        """Elements per chunk of the messages to and from ``peer``; 0: one piece.

        By default only pairs on different hosts split their messages: chunks cure a
        network link's half-duplex behaviour, and between processes of one host they
        only cost. ``peer`` decides the same for this rank as this rank does for it.
        """
        if self.chunk_everywhere or (self.remote and self.remote[peer]):
            return self.chunk_numel
        return 0

    def empty(self) -> torch.Tensor:
        """A receive buffer: one flat message in the wire dtype, on the comm device."""
        return torch.empty(self.numel, dtype=self.wire_dtype, device=self.device)


def check_arguments(topology: object, like: object, config: object) -> None:
    """The types every gossiper's constructor checks first, before any process group.

    Raises:
        TypeError: Naming ``topology``, ``like`` or ``config``.
    """
    if not isinstance(topology, Topology):
        raise TypeError(
            f"topology must be a gossip_topology.Topology; got {type(topology).__name__}"
        )
    if not isinstance(like, torch.Tensor) or not like.is_floating_point():
        raise TypeError(f"like must be a floating-point torch.Tensor; got {like!r:.80}")
    if like.dtype not in _DTYPE_CODES:
        raise TypeError(f"like has unsupported dtype {like.dtype}")
    if not isinstance(config, GossipConfig):
        raise TypeError(f"config must be a GossipConfig or None; got {type(config).__name__}")


def open_channel(
    topology: Topology,
    like: torch.Tensor,
    config: GossipConfig,
    *,
    owner: str,
    extra: Sequence[tuple[str, int]] = (),
) -> Channel:
    """Validate a gossiper's arguments and agree on them across ranks (one ``all_gather``).

    ``extra`` adds ``(name, value)`` pairs that every rank must also agree on.

    Raises:
        TypeError: If ``topology`` or ``like`` has the wrong type.
        ValueError: On any inconsistency, on every rank at once.
        RuntimeError: If ``torch.distributed`` is not initialised.
    """
    check_arguments(topology, like, config)
    group = resolve_group(config.process_group)
    device = comm_device_for(group, config.comm_device)
    wire_dtype = like.dtype if config.wire_dtype is None else config.wire_dtype
    channel = Channel(
        owner=owner,
        group=group,
        rank=group_rank(group),
        size=group_size(group),
        device=device,
        wire_dtype=wire_dtype,
        shape=like.shape,
        dtype=like.dtype,
        timeout=float(config.timeout),
        check_finite=config.check_finite,
        chunk_numel=chunk_numel_for(config.chunk_bytes, device, wire_dtype, like.numel()),
        chunk_everywhere=config.chunk_bytes is not None,
        fault_tolerant=config.fault_tolerant,
        batched=dist.get_backend(group) == "nccl",
    )
    if config.fault_tolerant and dist.get_backend(group) != "gloo":
        raise ValueError(
            f"{owner}: fault_tolerant gossip runs on gloo (a lost NCCL peer poisons the "
            f"whole communicator); this group's backend is {dist.get_backend(group)}"
        )
    hosts = agree_across_ranks(channel, topology, extra)
    mine = hosts[channel.rank]
    return dataclasses.replace(channel, remote=tuple(h != mine for h in hosts))


def chunk_numel_for(
    chunk_bytes: int | None, device: torch.device, wire_dtype: torch.dtype, numel: int
) -> int:
    """Elements per chunk for ``GossipConfig.chunk_bytes``; 0 means one piece.

    ``None`` picks the backend's default: chunks on CPU (gloo), one message on CUDA
    (NCCL). Chunks are a multiple of 1024 elements, so every chunk but the last starts
    and ends on the same vector boundaries as the whole buffer.
    """
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES if device.type == "cpu" else 0
    if chunk_bytes == 0:
        return 0
    itemsize = torch.empty((), dtype=wire_dtype).element_size()
    elems = max(1024, -(-chunk_bytes // itemsize // 1024) * 1024)
    return 0 if elems >= numel else elems


def agree_across_ranks(
    channel: Channel, topology: Topology, extra: Sequence[tuple[str, int]] = ()
) -> list[int]:
    """Raise on every rank unless all ranks gossip the same buffer over the same topology.

    Returns:
        Every rank's [`host_key`][gossip_comm._backend.host_key], gathered in the same
        ``all_gather``.

    Raises:
        ValueError: Naming the field and each rank's value.
    """
    mine = [
        channel.numel,
        _DTYPE_CODES[channel.dtype],
        topology.world_size,
        topology.peers_per_itr,
        topology.period,
        _DTYPE_CODES[channel.wire_dtype],
        channel.chunk_numel,
        int(channel.chunk_everywhere),
        *(value for _, value in extra),
        host_key(),  # gathered, not agreed on: the last column
    ]
    local = torch.tensor(mine, dtype=torch.int64, device=channel.device)
    gathered = [torch.empty_like(local) for _ in range(channel.size)]
    dist.all_gather(gathered, local, group=channel.group)
    table = [g.tolist() for g in gathered]
    if topology.world_size != channel.size:
        raise ValueError(
            f"topology has world_size={topology.world_size} but the process group has "
            f"{channel.size} ranks; build the topology for the group's size"
        )
    names = [
        "buffer numel",
        "dtype",
        "topology world_size",
        "peers_per_itr",
        "period",
        "wire dtype",
        "chunk size (elements)",
        "chunk_bytes (set on some ranks, None on others)",
        *(name for name, _ in extra),
    ]
    for field, name in enumerate(names):
        values = {r: row[field] for r, row in enumerate(table)}
        if len(set(values.values())) > 1:
            raise ValueError(
                f"{channel.owner}: ranks disagree on the {name}: {values} (rank: value); "
                "every rank must gossip the same buffer over the same topology"
            )
    return [row[-1] for row in table]


def check_tensor(tensor: torch.Tensor, channel: Channel) -> None:
    """Raise unless ``tensor`` has the shape, dtype and layout the channel was built for.

    A CUDA tensor on a CPU channel is allowed: it is staged through host memory.

    Raises:
        TypeError: If ``tensor`` is not a tensor.
        ValueError: On a shape, dtype, layout or device mismatch.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.shape != channel.shape or tensor.dtype != channel.dtype:
        raise ValueError(
            f"tensor must have shape {tuple(channel.shape)} and dtype {channel.dtype} as given "
            f"at construction; got {tuple(tensor.shape)} {tensor.dtype}"
        )
    if not tensor.is_contiguous():
        raise ValueError("tensor must be contiguous; call .contiguous() first")
    if tensor.device != channel.device and not (
        tensor.device.type == "cuda" and channel.device.type == "cpu"
    ):
        raise ValueError(
            f"tensor is on {tensor.device} but this {channel.owner} gossips on "
            f"{channel.device}; move it there or pass comm_device (with NCCL, call "
            "torch.cuda.set_device(local_rank) before building the model and the wrapper)"
        )


def check_finite(value: torch.Tensor | float, *, rank: int, peer: int, step: int) -> None:
    """Raise [`NonFiniteError`][gossip_comm.NonFiniteError] if ``value`` holds NaN or Inf.

    The one place that builds this error: ``value`` is what ``rank`` received from
    ``peer`` at gossip ``step``, a tensor or a push-sum weight.
    """
    if isinstance(value, torch.Tensor):
        # A finite sum means every element is finite (a NaN or an Inf anywhere makes the
        # sum NaN or Inf), and a sum is one vectorised pass with no temporary. Finite
        # elements can still sum past the dtype's range: the exact element-wise check
        # settles that case.
        if not value.is_floating_point() or bool(torch.isfinite(value.sum())):
            return
        if bool(torch.isfinite(value).all()):
            return
        what = "NaN or Inf"
    else:
        if math.isfinite(value):
            return
        what = "a non-finite push-sum weight"
    raise NonFiniteError(
        f"rank {rank} received {what} from rank {peer} at gossip step {step}",
        rank=rank,
        peer=peer,
        step=step,
    )


def check_pairwise(
    topology: Topology, config: GossipConfig, *, owner: str, unsupported: tuple[str, ...]
) -> None:
    """Raise unless ``topology`` pairs active with passive ranks, one partner per step.

    Pairwise gossip averages with weight 1/2 whatever the mixing rule, so the options in
    ``unsupported`` must stay unset.

    Raises:
        TypeError: If ``topology`` is not a ``Topology``.
        ValueError: If the graph is not bipartite, has more than one peer per step, or an
            unsupported option is set.
    """
    if not isinstance(topology, Topology):
        raise TypeError(f"topology must be a gossip_topology.Topology; got {type(topology)}")
    if not topology.is_bipartite:
        raise ValueError(
            f"{owner} needs a bipartite topology (active and passive ranks); {topology!r} is "
            "not: try dynamic-bipartite-exponential"
        )
    if topology.peers_per_itr != 1:
        raise ValueError(
            f"{owner} averages with one peer at a time: peers_per_itr must be 1; got "
            f"{topology.peers_per_itr}"
        )
    for name in unsupported:
        if getattr(config, name) is not None:
            raise ValueError(
                f"{owner} averages pairs with weight 1/2: config.{name} does not apply; "
                "leave it None"
            )


def checked_step(state: Mapping[str, Any]) -> int:
    """The step counter in a gossiper's ``state_dict``, checked.

    Raises:
        ValueError: If ``state["step"]`` is missing or not an int >= 0.
    """
    step = state.get("step") if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"state['step'] must be an int >= 0; got {step!r}")
    return step


def parse_saved_round(
    state: Mapping[str, Any], key: str, posted: int
) -> tuple[int, float, list[Any], list[float]]:
    """``(step, weight, state[key], weights)`` of a saved round in flight, checked.

    Raises:
        ValueError: If a field is missing or malformed, or the round's step is not one of
            the ``posted`` steps (``0 .. posted - 1``).
    """
    try:
        step, weight = state["step"], float(state["weight"])
        items, weights = list(state[key]), [float(w) for w in state["weights"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed in-flight gossip state: {exc!r}") from None
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < posted:
        raise ValueError(
            f"in-flight gossip state is for step {step!r}, but this rank has posted "
            f"steps 0..{posted - 1}; load the step counter first"
        )
    return step, weight, items, weights
