"""Hierarchical gossip: processes of one node average gradients, nodes gossip.

With ``nprocs_per_node = L`` and ``N`` nodes (``N * L`` processes, node ``k`` holding
ranks ``k L .. k L + L - 1``), every rank joins two groups:

- its **node group**, where gradients are all-reduced (NVLink, or shared memory on CPU);
- its **plane**, the ranks with the same local index on every node, where it gossips.

All processes of a node start from the same model and apply the same averaged gradients,
so the ``L`` planes gossip identical values and every local rank ends each step with the
same node-level model, without any extra broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

__all__ = ["Hierarchy", "build_hierarchy"]


@dataclass(frozen=True)
class Hierarchy:
    """This rank's place in a node/plane layout.

    Attributes:
        nodes: Number of nodes ``N``.
        procs_per_node: Processes per node ``L``.
        node_group: The ranks of this rank's node.
        plane_group: The ranks with this rank's local index, one per node.
    """

    nodes: int
    procs_per_node: int
    node_group: ProcessGroup
    plane_group: ProcessGroup

    def average_gradients(self, grads: list[torch.Tensor]) -> None:
        """All-reduce ``grads`` (flat buffers) over the node and divide by ``L``."""
        for g in grads:
            dist.all_reduce(g, group=self.node_group)
            g.div_(self.procs_per_node)


def build_hierarchy(group: ProcessGroup, procs_per_node: int) -> Hierarchy:
    """Create the node and plane groups of ``group`` (a collective over ``group``).

    Raises:
        ValueError: If the group's size is not a multiple of ``procs_per_node``.
    """
    size = dist.get_world_size(group)
    if size % procs_per_node:
        raise ValueError(
            f"nprocs_per_node={procs_per_node} must divide the process group's size {size}"
        )
    nodes = size // procs_per_node
    me = dist.get_rank(group)
    glob = dist.get_process_group_ranks(group)
    node_group = plane_group = None
    # every rank creates every group, in the same order, as new_group requires
    for k in range(nodes):
        members = [glob[k * procs_per_node + i] for i in range(procs_per_node)]
        g = dist.new_group(members)
        if me // procs_per_node == k and isinstance(g, ProcessGroup):
            node_group = g
    for i in range(procs_per_node):
        members = [glob[k * procs_per_node + i] for k in range(nodes)]
        g = dist.new_group(members)
        if me % procs_per_node == i and isinstance(g, ProcessGroup):
            plane_group = g
    assert node_group is not None and plane_group is not None
    return Hierarchy(nodes, procs_per_node, node_group, plane_group)
