"""Hierarchical gossip: the processes of a node share one model, nodes gossip it.

With ``nprocs_per_node = L`` and ``N`` nodes (``N * L`` processes, node ``k`` holding
ranks ``k L .. k L + L - 1``), every rank joins two groups:

- its **node group**, where DDP all-reduces gradients during backward (NVLink, or shared
  memory on CPU);
- its **plane**, the ranks with the same local index on every node, where it gossips.

All processes of a node hold the same model and apply the same averaged gradients. So
each local rank gossips only its ``1/L`` share of every flat buffer on its plane, and
the node puts one model's worth of bytes on the network per step, spread over ``L``
processes (and NICs, where a node has several), instead of ``L`` copies. After each
gossip round the node reassembles the model: each local rank broadcasts its share to
the others (one broadcast per share, inside the node).
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

__all__ = ["Hierarchy", "Shards", "build_hierarchy"]


@dataclass(frozen=True)
class Hierarchy:
    """This rank's place in a node/plane layout.

    Attributes:
        nodes: Number of nodes ``N``.
        procs_per_node: Processes per node ``L``.
        node_group: The ranks of this rank's node.
        plane_group: The ranks with this rank's local index, one per node.
        node_ranks: Global ranks of this node's processes, by local index.
        local_rank: This rank's index in its node.
    """

    nodes: int
    procs_per_node: int
    node_group: ProcessGroup
    plane_group: ProcessGroup
    node_ranks: tuple[int, ...]
    local_rank: int


class Shards:
    """The share of each flat buffer that this rank gossips, and how a node reassembles.

    Without a hierarchy, or for a buffer with fewer elements than ``L``, the share is the
    whole buffer (every plane then gossips the same values). Otherwise local rank ``i``
    gossips elements ``[i m // L, (i + 1) m // L)`` of a buffer of ``m`` elements.

    Args:
        buffers: The flat buffers, identical on the node's processes.
        hierarchy: This rank's node layout, or ``None`` for flat gossip.

    Attributes:
        full: The whole flat buffers, as given.
        views: This rank's share of each buffer: a view into it (the whole buffer when
            there is no hierarchy or the buffer is too small to split).
        ranges: Each view's ``(start, end)`` element range in its buffer.
    """

    def __init__(self, buffers: list[torch.Tensor], hierarchy: Hierarchy | None) -> None:
        self.full = buffers
        self.views: list[torch.Tensor] = []
        self.ranges: list[tuple[int, int]] = []
        self._plan: list[tuple[torch.Tensor, list[tuple[int, int, int]]]] = []
        L = hierarchy.procs_per_node if hierarchy is not None else 1
        for buf in buffers:
            m = buf.numel()
            if hierarchy is None or m < L:
                self.views.append(buf)
                self.ranges.append((0, m))
                continue
            ranges = [(i * m // L, (i + 1) * m // L, hierarchy.node_ranks[i]) for i in range(L)]
            start, end, _ = ranges[hierarchy.local_rank]
            self.views.append(buf[start:end])
            self.ranges.append((start, end))
            self._plan.append((buf, ranges))
        self._group = hierarchy.node_group if hierarchy is not None else None

    def layouts(self, shapes: list[list[torch.Size]]) -> list[list[torch.Size]]:
        """The shapes each view concatenates, given the shapes each buffer concatenates.

        A tensor cut by a view's boundary is described by the 1-D piece that falls in
        the view (a per-tensor compressor then sends that piece as it is).
        """
        out = []
        for (start, end), buffer_shapes in zip(self.ranges, shapes, strict=True):
            layout, offset = [], 0
            for shape in buffer_shapes:
                n = math.prod(shape)
                lo, hi = max(offset, start), min(offset + n, end)
                if lo < hi:
                    whole = lo == offset and hi == offset + n
                    layout.append(torch.Size(shape) if whole else torch.Size([hi - lo]))
                offset += n
            out.append(layout)
        return out

    def reassemble(self) -> None:
        """Copy every local rank's share to the node's other processes (a node collective)."""
        for buf, ranges in self._plan:
            for start, end, src in ranges:
                dist.broadcast(buf[start:end], src=src, group=self._group)


def _host() -> str:
    return socket.gethostname()


def _check_layout(group: ProcessGroup, procs_per_node: int, glob: list[int]) -> None:
    """Each block of ``procs_per_node`` consecutive ranks must run on one host."""
    hosts: list[object] = [None] * len(glob)
    dist.all_gather_object(hosts, _host(), group=group)
    for k in range(len(glob) // procs_per_node):
        block = range(k * procs_per_node, (k + 1) * procs_per_node)
        seen = {str(hosts[i]) for i in block}
        if len(seen) > 1:
            where = ", ".join(f"rank {glob[i]} on {hosts[i]}" for i in block)
            raise ValueError(
                f"nprocs_per_node={procs_per_node} assumes ranks {glob[block[0]]}.."
                f"{glob[block[-1]]} share a node, but {where}; launch consecutive ranks on "
                "each node (torchrun does; with srun use --distribution=block)"
            )


def build_hierarchy(group: ProcessGroup, procs_per_node: int) -> Hierarchy:
    """Create the node and plane groups of ``group`` (a collective over ``group``).

    Raises:
        ValueError: If the group's size is not a multiple of ``procs_per_node``, or if a
            block of ``procs_per_node`` consecutive ranks does not run on one host.
    """
    size = dist.get_world_size(group)
    if size % procs_per_node:
        raise ValueError(
            f"nprocs_per_node={procs_per_node} must divide the process group's size {size}"
        )
    nodes = size // procs_per_node
    me = dist.get_rank(group)
    glob = dist.get_process_group_ranks(group)
    _check_layout(group, procs_per_node, glob)
    node_group = plane_group = None
    node_ranks: tuple[int, ...] = ()
    # every rank creates every group, in the same order, as new_group requires
    for k in range(nodes):
        members = [glob[k * procs_per_node + i] for i in range(procs_per_node)]
        g = dist.new_group(members)
        if me // procs_per_node == k and isinstance(g, ProcessGroup):
            node_group, node_ranks = g, tuple(members)
    for i in range(procs_per_node):
        members = [glob[k * procs_per_node + i] for k in range(nodes)]
        g = dist.new_group(members)
        if me % procs_per_node == i and isinstance(g, ProcessGroup):
            plane_group = g
    assert node_group is not None and plane_group is not None
    return Hierarchy(
        nodes, procs_per_node, node_group, plane_group, node_ranks, me % procs_per_node
    )
