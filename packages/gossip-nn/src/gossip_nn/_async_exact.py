"""Exact averaging for AD-PSGD: bring every pairwise exchange home, then all-reduce.

AD-PSGD has no global step, so an exact average (Gossip-PGA's, the all-reduce warm-up's,
SlowMo's) happens at an agreed *local* iteration of every rank. By then an active has
adopted its last exchange, but its passive partner's responder thread may still be adding
that exchange into the passive's shared copy. So each active counts the requests it sent
to each passive; one all-reduce of those counts tells every passive how many exchanges it
must have applied, and it waits for them before anyone averages.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from gossip_comm import AsyncBilateral, GossipTimeoutError, comm_device_for
from gossip_topology import Topology

__all__ = ["ExchangeLedger"]


class ExchangeLedger:
    """Counts an active's requests by partner; lets a passive wait until all are applied.

    Args:
        pairs: This rank's AD-PSGD gossiper.
        topology: Its bipartite topology.
        group: The training group.
        timeout: Seconds a passive waits for its responder before raising.
    """

    def __init__(
        self, pairs: AsyncBilateral, topology: Topology, group: ProcessGroup, timeout: float
    ) -> None:
        self.pairs, self.topology, self.group, self.timeout = pairs, topology, group, timeout
        self.rank = dist.get_rank(group)
        self.sent = torch.zeros(dist.get_world_size(group), dtype=torch.int64)
        self._device = comm_device_for(group, None)

    def note_request(self) -> int:
        """An active is about to send its next request: count it against its partner
        (returned)."""
        (peer,) = self.topology.out_peers(self.rank, self.pairs.step)
        self.sent[peer] += 1
        return peer

    def drain(self) -> None:
        """A collective: return once every request sent to this rank has been applied.

        Raises:
            GossipTimeoutError: If a passive's responder has not applied them all within
                the timeout (naming this rank and the count).
        """
        total = self.sent.to(self._device, copy=True)
        dist.all_reduce(total, group=self.group)
        expected = int(total[self.rank].item())
        if not self.pairs.is_passive:
            return
        deadline = time.monotonic() + self.timeout
        while self.pairs.served < expected:
            self.pairs.check()  # a responder that failed raises its own error here
            if time.monotonic() > deadline:
                raise GossipTimeoutError(
                    f"rank {self.rank}: AD-PSGD exact average waited {self.timeout:g}s for "
                    f"its responder, which applied {self.pairs.served} of {expected} "
                    "exchanges",
                    rank=self.rank,
                    peer=-1,
                    step=self.pairs.served,
                )
            time.sleep(0.0005)

    def hold(self) -> None:
        """A collective: return once every rank has arrived. Called after each rank has
        taken its state, so that no active sends its next request (which its passive
        might apply before taking its own state) until every rank has taken its own."""
        zero = torch.zeros(1, dtype=torch.int64, device=self._device)
        dist.all_reduce(zero, group=self.group)
