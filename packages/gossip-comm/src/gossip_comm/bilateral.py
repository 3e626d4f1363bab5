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
from typing import TypeVar

import torch
from torch.distributed import ProcessGroup

from gossip_comm.errors import NonFiniteError
from gossip_comm.exchange import ExchangeEngine, GossipConfig
from gossip_comm.handle import GossipHandle, in_daemon_thread
from gossip_comm.transport import Message, PendingExchange, post
from gossip_topology import Topology

__all__ = ["BilateralPushPull"]

T = TypeVar("T")


class BilateralPushPull:
    """Pairwise gossip on a bipartite graph; the passive side polls without blocking.

    Args:
        topology: A bipartite graph with ``peers_per_itr == 1``, such as
            ``make_topology("dynamic-bipartite-exponential", n)``.
        like: A tensor with the shape, dtype and device of what will be gossiped.
        process_group: Group to gossip in; WORLD when ``None``.
        comm_device: Device of the communication buffers.
        wire_dtype: ``None``, ``torch.bfloat16`` or ``torch.float16``.
        timeout: Seconds an active waits for its reply, or a blocking passive ``mix``
            waits for its requests.
        check_finite: Raise [`NonFiniteError`][gossip_comm.NonFiniteError] on NaN/Inf.

    Raises:
        ValueError: If the graph is not bipartite or has more than one peer per step.
    """

    def __init__(
        self,
        topology: Topology,
        like: torch.Tensor,
        *,
        process_group: ProcessGroup | None = None,
        comm_device: torch.device | str | None = None,
        wire_dtype: torch.dtype | None = None,
        timeout: float = 300.0,
        check_finite: bool = False,
    ) -> None:
        if not topology.is_bipartite:
            raise ValueError(
                f"BilateralPushPull needs a bipartite topology (active and passive ranks); "
                f"{topology!r} is not: try dynamic-bipartite-exponential"
            )
        if topology.peers_per_itr != 1:
            raise ValueError(
                f"BilateralPushPull averages with one peer at a time: peers_per_itr must be 1; "
                f"got {topology.peers_per_itr}"
            )
        config = GossipConfig(None, process_group, comm_device, wire_dtype, timeout, check_finite)
        self._engine = ExchangeEngine(
            topology, like, config, carries_weight=False, owner="BilateralPushPull"
        )
        self._topology = topology
        self.is_passive = topology.is_passive(self._engine.rank)
        self._armed: tuple[list[int], list[torch.Tensor], Future[None]] | None = None

    @property
    def step(self) -> int:
        """Number of exchanges this rank has started (active) or served (passive)."""
        return self._engine.step

    def partners(self, step: int) -> list[int]:
        """The ranks this rank averages with at its ``step``-th exchange."""
        rank = self._engine.rank
        if self.is_passive:
            return self._topology.in_peers(rank, step)
        return self._topology.out_peers(rank, step)

    # ----------------------------------------------------------------- helpers
    def _encode(self, tensor: torch.Tensor) -> torch.Tensor:
        eng = self._engine
        eng._check_tensor(tensor)
        flat = tensor.view(-1)
        if eng.wire_dtype == eng.dtype and flat.device == eng.device:
            return flat
        return flat.to(device=eng.device, dtype=eng.wire_dtype)

    def _average(self, tensor: torch.Tensor, recv: torch.Tensor, peer: int, step: int) -> None:
        eng = self._engine
        if eng.check_finite and not bool(torch.isfinite(recv).all()):
            raise NonFiniteError(
                f"rank {eng.rank} received NaN or Inf from rank {peer} at gossip step {step}",
                rank=eng.rank,
                peer=peer,
                step=step,
            )
        flat = tensor.view(-1)
        flat.lerp_(recv.to(device=flat.device, dtype=flat.dtype), 0.5)

    def _wait(self, pending: PendingExchange) -> None:
        pending.wait(self._engine.timeout)

    # ------------------------------------------------------------------ active
    def start(self, tensor: torch.Tensor) -> GossipHandle[torch.Tensor]:
        """Active ranks: send ``tensor`` to this step's partner; ``wait()`` gives the average.

        ``tensor`` is averaged in place when the reply is in; do not modify it before.

        Raises:
            RuntimeError: On a passive rank (passives answer with ``poll`` or ``mix``).
        """
        if self.is_passive:
            raise RuntimeError(
                f"rank {self._engine.rank} is passive in this bipartite graph: it answers "
                "requests with poll() or mix(), it never starts an exchange"
            )
        eng = self._engine
        step = eng.step
        eng.step += 1
        (peer,) = self.partners(step)
        send = self._encode(tensor)
        recv = torch.empty(eng.numel, dtype=eng.wire_dtype, device=eng.device)
        pending = post(
            [Message(peer, send, True), Message(peer, recv, False)], eng.group, eng.rank, step
        )

        def finish() -> torch.Tensor:
            self._wait(pending)
            self._average(tensor, recv, peer, step)
            return tensor

        return GossipHandle(future=in_daemon_thread(finish))

    # ----------------------------------------------------------------- passive
    def _arm(self) -> tuple[list[int], list[torch.Tensor], Future[None]]:
        if self._armed is None:
            eng = self._engine
            step = eng.step
            peers = self.partners(step)
            recvs = [torch.empty(eng.numel, dtype=eng.wire_dtype, device=eng.device) for _ in peers]
            pending = post(
                [Message(q, r, False) for q, r in zip(peers, recvs, strict=True)],
                eng.group,
                eng.rank,
                step,
            )
            self._armed = (peers, recvs, in_daemon_thread(lambda: self._wait(pending)))
        return self._armed

    def _serve(self, tensor: torch.Tensor) -> None:
        assert self._armed is not None
        peers, recvs, future = self._armed
        future.result()  # re-raise a timeout or a lost peer
        eng = self._engine
        step = eng.step
        for peer, recv in zip(peers, recvs, strict=True):
            reply = self._encode(tensor)  # the send completes before the average below
            self._wait(post([Message(peer, reply, True)], eng.group, eng.rank, step))
            self._average(tensor, recv, peer, step)
        self._armed = None
        eng.step += 1

    def poll(self, tensor: torch.Tensor) -> bool:
        """Passive ranks: answer this step's requests if they have all arrived; never blocks.

        Returns:
            ``True`` if an exchange step was completed (``tensor`` was averaged in place).

        Raises:
            RuntimeError: On an active rank.
            GossipTimeoutError: If the requests did not arrive within the timeout.
        """
        if not self.is_passive:
            raise RuntimeError(f"rank {self._engine.rank} is active: use start()/wait() or mix()")
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
        return self._engine.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the exchange counter.

        Raises:
            RuntimeError: If a passive rank has requests armed (restore before polling).
        """
        if self._armed is not None:
            raise RuntimeError("load_state_dict must be called before the first poll()")
        self._engine.load_state_dict(state)
