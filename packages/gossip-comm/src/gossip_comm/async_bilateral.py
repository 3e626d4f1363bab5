r"""AsyncBilateral: AD-PSGD's pairwise averaging with no global step.

Active ranks ask; passive ranks answer *whoever asks first*, from a responder thread, so a
slow rank delays only the exchanges it takes part in (Lian et al., *Asynchronous
Decentralized Parallel SGD*, ICML 2018, [arXiv:1710.06952](https://arxiv.org/abs/1710.06952)).

Protocol, on a dedicated gloo group (so the responder thread never interleaves with the
caller's collectives; CUDA tensors are staged through host memory):

1. an active rank ``a`` sends a header ``[a, 1]`` (tag 1) and its snapshot (tag 0) to the
   passive ``p = out_peers(a, t)[0]`` of its ``t``-th exchange, and receives ``p``'s reply;
2. ``p``'s responder receives headers from *any* source, takes the active's snapshot, and
   under a lock copies its shared value ``S`` as the reply and sets
   $S \leftarrow (S + x_a) / 2$, then sends the reply;
3. the active sets its value to $(x_a + S_\text{reply}) / 2$: the pair's average is exact;
4. at the end every active sends a header ``[a, 0]`` to each passive it may contact; a
   passive's responder stops once every possible active has said so.

Both ends of an exchange apply the same average, so the sum over ranks is conserved.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from gossip_comm.backend import group_rank, group_size, resolve_group, to_global_rank
from gossip_comm.errors import GossipError
from gossip_comm.exchange import ExchangeEngine, GossipConfig
from gossip_comm.handle import GossipHandle, in_daemon_thread
from gossip_comm.transport import Message, post
from gossip_topology import Topology

__all__ = ["AsyncBilateral"]

_HEADER, _DATA = 1, 0


class AsyncBilateral:
    """Asynchronous pairwise averaging between active and passive ranks (gloo).

    Every rank of ``process_group`` must construct it (it creates a gloo group).

    Args:
        topology: Bipartite, ``peers_per_itr == 1``; actives pick partners from it.
        like: A tensor with the shape and dtype to average (any device).
        process_group: The ranks taking part; WORLD when ``None``.
        timeout: Seconds an active waits for a reply.

    Raises:
        ValueError: If the topology is not bipartite with one peer per step.
    """

    def __init__(
        self,
        topology: Topology,
        like: torch.Tensor,
        *,
        process_group: ProcessGroup | None = None,
        timeout: float = 300.0,
    ) -> None:
        if not topology.is_bipartite or topology.peers_per_itr != 1:
            raise ValueError(
                "AsyncBilateral needs a bipartite topology with peers_per_itr=1 (active ranks "
                f"pair with passive ones); got {topology!r}: try dynamic-bipartite-exponential"
            )
        group = resolve_group(process_group)
        n = group_size(group)
        gossip_group = dist.new_group([to_global_rank(group, r) for r in range(n)], backend="gloo")
        assert isinstance(gossip_group, ProcessGroup)  # every rank is a member
        self._group: ProcessGroup = gossip_group
        cpu_like = torch.empty(like.shape, dtype=like.dtype)
        self._engine = ExchangeEngine(
            topology,
            cpu_like,
            GossipConfig(process_group=self._group, timeout=timeout),
            carries_weight=False,
            owner="AsyncBilateral",
        )
        self.rank = group_rank(group)
        self.is_passive = topology.is_passive(self.rank)
        self.topology = topology
        self.timeout = float(timeout)
        period = range(topology.period)
        if self.is_passive:
            self._partners = sorted({a for t in period for a in topology.in_peers(self.rank, t)})
        else:
            self._partners = sorted({p for t in period for p in topology.out_peers(self.rank, t)})
        self.step = 0
        self.served = 0
        self._lock = threading.Lock()
        self._shared: torch.Tensor | None = None
        self._responder: Future[None] | None = None
        self._finished = False

    @property
    def partners(self) -> list[int]:
        """Ranks this rank may average with."""
        return list(self._partners)

    @property
    def lock(self) -> threading.Lock:
        """Held by the responder while it reads or averages the shared value."""
        return self._lock

    # ------------------------------------------------------------------ active
    def request(self, snapshot: torch.Tensor) -> GossipHandle[torch.Tensor]:
        """Active: average ``snapshot`` with this exchange's partner; returns at once.

        ``handle.wait()`` returns ``snapshot``, averaged in place with the partner's value.

        Raises:
            RuntimeError: On a passive rank, or after ``finish``.
        """
        if self.is_passive or self._finished:
            raise RuntimeError(f"rank {self.rank} cannot request: passive or finished")
        (peer,) = self.topology.out_peers(self.rank, self.step)
        step = self.step
        self.step += 1
        host = snapshot.detach().reshape(-1).to("cpu", copy=True)
        header = torch.tensor([self.rank, 1], dtype=torch.int64)
        reply = torch.empty_like(host)
        pending = post(
            [Message(peer, header, True), Message(peer, host, True), Message(peer, reply, False)],
            self._group,
            self.rank,
            step,
            tags=[_HEADER, _DATA, _DATA],
        )

        def finish() -> torch.Tensor:
            pending.wait(self.timeout)
            host.lerp_(reply, 0.5)
            snapshot.copy_(host.view(snapshot.shape))
            return snapshot

        return GossipHandle(future=in_daemon_thread(finish, f"gossip-adpsgd{self.rank}"))

    # ----------------------------------------------------------------- passive
    def serve(self, shared: torch.Tensor) -> None:
        """Passive: answer requests from a background thread, averaging into ``shared``.

        ``shared`` (CPU, contiguous) is read and written only under
        [`lock`][gossip_comm.AsyncBilateral.lock].
        """
        if not self.is_passive:
            raise RuntimeError(f"rank {self.rank} is active: it requests, it does not serve")
        if self._responder is not None:
            raise RuntimeError("serve() was already called")
        self._shared = shared
        self._responder = in_daemon_thread(self._serve_loop, f"gossip-adpsgd-responder{self.rank}")

    def _serve_loop(self) -> None:
        assert self._shared is not None
        flat = self._shared.view(-1)
        remaining = len(self._partners)
        header = torch.empty(2, dtype=torch.int64)
        incoming = torch.empty_like(flat)
        while remaining:
            work = dist.irecv(header, group=self._group, tag=_HEADER)  # from any active
            assert work is not None
            work.wait()
            active, kind = int(header[0]), int(header[1])
            if kind == 0:
                remaining -= 1
                continue
            src = to_global_rank(self._group, active)
            dist.recv(incoming, src, group=self._group, tag=_DATA)
            if not bool(torch.isfinite(incoming).all()) and bool(torch.isfinite(flat).all()):
                raise GossipError(f"rank {self.rank} received NaN or Inf from rank {active}")
            with self._lock:
                reply = flat.clone()
                flat.lerp_(incoming, 0.5)
                self.served += 1
            dist.send(reply, src, group=self._group, tag=_DATA)

    # -------------------------------------------------------------------- both
    def finish(self, timeout: float | None = None) -> None:
        """End this rank's part: actives tell their passives; passives wait for all actives.

        Call after an active's last request has completed.

        Raises:
            GossipError: If a passive's responder failed, or did not end within ``timeout``.
        """
        if self._finished:
            return
        self._finished = True
        if not self.is_passive:
            header = torch.tensor([self.rank, 0], dtype=torch.int64)
            pending = post(
                [Message(p, header, True) for p in self._partners],
                self._group,
                self.rank,
                self.step,
                tags=[_HEADER] * len(self._partners),
            )
            pending.wait(self.timeout)
            return
        if self._responder is not None:
            wait = self.timeout if timeout is None else timeout
            try:
                self._responder.result(timeout=wait if math.isfinite(wait) else None)
            except TimeoutError:
                raise GossipError(
                    f"rank {self.rank}: actives {self._partners} did not all finish within "
                    f"{wait:g}s"
                ) from None
