r"""BilateralPushPull: pairwise averaging between active and passive ranks (AD-PSGD).

At its ``t``-th exchange an active rank ``a`` sends its tensor to its single out-peer
``p = out_peers(a, t)[0]``, a passive rank, and receives ``p``'s tensor back; both end
with :math:`(x_a + x_p) / 2`. Passive ranks never initiate: they answer the actives that
chose them at their ``t``-th exchange, one at a time in increasing rank order, which makes
each pairwise average atomic and rules out deadlock (Lian et al., *Asynchronous
Decentralized Parallel Stochastic Gradient Descent*, ICML 2018,
[arXiv:1710.06952](https://arxiv.org/abs/1710.06952)).

Actives use ``start``/``wait`` (or ``mix``); passives call ``poll`` between their own
computations: it never blocks, and answers a waiting request when there is one.
"""

from __future__ import annotations

from concurrent.futures import Future

import torch

from gossip_comm._background import Worker
from gossip_comm._channel import (
    Channel,
    check_arguments,
    check_finite,
    check_pairwise,
    checked_step,
    open_channel,
)
from gossip_comm._transport import Message, PendingExchange, post
from gossip_comm.config import GossipConfig
from gossip_comm.handle import GossipHandle
from gossip_topology import Topology

__all__ = ["BilateralPushPull"]


class BilateralPushPull:
    """Pairwise gossip on a bipartite graph; the passive side polls without blocking.

    Args:
        topology: A bipartite graph with ``peers_per_itr == 1``, such as
            ``make_topology("dynamic-bipartite-exponential", n)``.
        like: A tensor with the shape, dtype and device of what will be gossiped.
        config: Process group and communication options; ``timeout`` bounds an active's
            wait for its reply and a passive's wait for its requests. Pairs always
            average with weight 1/2, so ``config.mixing`` must be ``None``.

    Attributes:
        is_passive: Whether this rank is on the passive side of the graph: it serves the
            requests of active ranks instead of starting exchanges.

    Raises:
        ValueError: If the graph is not bipartite, has more than one peer per step, or a
            mixing rule is given.
    """

    def __init__(
        self,
        topology: Topology,
        like: torch.Tensor,
        *,
        config: GossipConfig | None = None,
    ) -> None:
        config = GossipConfig() if config is None else config
        check_arguments(topology, like, config)
        check_pairwise(topology, config, owner="BilateralPushPull", unsupported=("mixing",))
        self._channel: Channel = open_channel(topology, like, config, owner="BilateralPushPull")
        self._topology = topology
        self._step = 0
        self._worker = Worker(f"gossip-bilateral{self._channel.rank}")
        self.is_passive = topology.is_passive(self._channel.rank)
        self._armed: tuple[list[int], list[torch.Tensor], Future[None]] | None = None

    @property
    def step(self) -> int:
        """Number of exchanges this rank has started (active) or served (passive)."""
        return self._step

    def partners(self, step: int) -> list[int]:
        """The ranks this rank averages with at its ``step``-th exchange."""
        rank = self._channel.rank
        if self.is_passive:
            return self._topology.in_peers(rank, step)
        return self._topology.out_peers(rank, step)

    # ----------------------------------------------------------------- helpers
    def _encode(self, tensor: torch.Tensor) -> torch.Tensor:
        ch = self._channel
        ch.check(tensor)
        flat = tensor.view(-1)
        if ch.wire_dtype == ch.dtype and flat.device == ch.device:
            return flat
        return flat.to(device=ch.device, dtype=ch.wire_dtype)

    def _average(self, tensor: torch.Tensor, recv: torch.Tensor, peer: int, step: int) -> None:
        if self._channel.check_finite:
            check_finite(recv, rank=self._channel.rank, peer=peer, step=step)
        flat = tensor.view(-1)
        flat.lerp_(recv.to(device=flat.device, dtype=flat.dtype), 0.5)

    def _wait(self, pending: PendingExchange) -> None:
        pending.wait(self._channel.timeout)

    # ------------------------------------------------------------------ active
    def start(self, tensor: torch.Tensor) -> GossipHandle[torch.Tensor]:
        """Active ranks: send ``tensor`` to this step's partner; ``wait()`` gives the average.

        ``tensor`` is averaged in place when the reply is in; do not modify it before.

        Raises:
            RuntimeError: On a passive rank (passives answer with ``poll`` or ``mix``).
        """
        if self.is_passive:
            raise RuntimeError(
                f"rank {self._channel.rank} is passive in this bipartite graph: it answers "
                "requests with poll() or mix(), it never starts an exchange"
            )
        ch, step = self._channel, self._step
        self._step += 1
        (peer,) = self.partners(step)
        send = self._encode(tensor)
        recv = ch.empty()
        pending = post(
            [Message(peer, send, True), Message(peer, recv, False)],
            ch.group,
            ch.rank,
            step,
            chunk_numel=ch.chunk_to(peer),
        )

        def finish() -> torch.Tensor:
            flat = tensor.view(-1)
            for sl in pending.chunks(ch.timeout):  # average each chunk as it arrives
                self._average(flat[sl], recv[sl], peer, step)
            return tensor

        return GossipHandle(future=self._worker.submit(finish))

    # ----------------------------------------------------------------- passive
    def _arm(self) -> tuple[list[int], list[torch.Tensor], Future[None]]:
        if self._armed is None:
            ch = self._channel
            peers = self.partners(self._step)
            recvs = [ch.empty() for _ in peers]
            pending = post(
                [Message(q, r, False) for q, r in zip(peers, recvs, strict=True)],
                ch.group,
                ch.rank,
                self._step,
                chunk_numel=[ch.chunk_to(q) for q in peers],
            )
            self._armed = (peers, recvs, self._worker.submit(lambda: self._wait(pending)))
        return self._armed

    def _serve(self, tensor: torch.Tensor) -> None:
        assert self._armed is not None
        peers, recvs, future = self._armed
        future.result()  # re-raise a timeout or a lost peer
        ch, step = self._channel, self._step
        for peer, recv in zip(peers, recvs, strict=True):
            reply = self._encode(tensor)  # the send completes before the average below
            sent = post(
                [Message(peer, reply, True)], ch.group, ch.rank, step, chunk_numel=ch.chunk_to(peer)
            )
            self._wait(sent)
            self._average(tensor, recv, peer, step)
        self._armed = None
        self._step += 1

    def poll(self, tensor: torch.Tensor) -> bool:
        """Passive ranks: answer this step's requests if they have all arrived; never blocks.

        Returns:
            ``True`` if an exchange step was completed (``tensor`` was averaged in place).

        Raises:
            RuntimeError: On an active rank.
            GossipTimeoutError: If the requests did not arrive within the timeout.
        """
        if not self.is_passive:
            raise RuntimeError(f"rank {self._channel.rank} is active: use start()/wait() or mix()")
        _, _, future = self._arm()
        if not future.done():
            return False
        self._serve(tensor)
        return True

    # ------------------------------------------------------------------- both
    def mix(self, tensor: torch.Tensor) -> torch.Tensor:
        """One blocking exchange, for either role; ``tensor`` is averaged in place."""
        if self.is_passive:
            _, _, future = self._arm()
            future.result()
            self._serve(tensor)
            return tensor
        return self.start(tensor).wait()

    def state_dict(self) -> dict[str, int]:
        """The exchange counter."""
        return {"step": self._step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the exchange counter.

        Raises:
            RuntimeError: If a passive rank has requests armed (restore before polling).
        """
        if self._armed is not None:
            raise RuntimeError("load_state_dict must be called before the first poll()")
        self._step = checked_step(state)

    def close(self, *, wait: bool = True) -> None:
        """Stop the background worker (an exchange still in flight is abandoned, and the
        worker is never waited for, whatever ``wait`` says)."""
        self._worker.close(timeout=0.0)
