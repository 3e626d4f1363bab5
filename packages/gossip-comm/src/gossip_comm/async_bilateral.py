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

With ``fault_tolerant=True`` (a job that survives lost ranks) a passive listens to each
partner on its own thread instead of to any source, so that a partner whose process dies
is noticed at once, even between exchanges; it applies an exchange only once the whole
of it has arrived and its reply has gone, so an exchange interrupted by a loss moves
neither end; and a lost partner is recorded (``check`` raises it once) while the
responder goes on serving the others.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from gossip_comm._backend import group_rank, group_size, resolve_group, to_global_rank
from gossip_comm._bilateral_active import Active
from gossip_comm._bilateral_listening import ListeningPassive
from gossip_comm._bilateral_passive import Passive
from gossip_comm._channel import check_arguments, check_pairwise, checked_step, open_channel
from gossip_comm._pair_wire import PairCodec
from gossip_comm._public import PublicCopies, compression_setup
from gossip_comm.compression import MessageSpec
from gossip_comm.config import GossipConfig
from gossip_comm.handle import GossipHandle
from gossip_topology import Topology

__all__ = ["AsyncBilateral"]


class AsyncBilateral:
    """Asynchronous pairwise averaging between active and passive ranks (gloo).

    Every rank of ``config.process_group`` must construct it (it creates a gloo group).
    A rank's role, active or passive, is fixed by the bipartite topology and chosen at
    construction.

    Args:
        topology: Bipartite, ``peers_per_itr == 1``; actives pick partners from it.
        like: A tensor with the shape and dtype to average (any device).
        config: ``process_group``, ``timeout`` (how long an active waits for a reply),
            ``check_finite``, ``compression`` and ``consensus_step`` apply; messages
            travel in ``like``'s dtype on CPU, so ``mixing``, ``wire_dtype`` and
            ``comm_device`` must stay unset. With ``compression`` each exchange sends
            compressed differences from per-partner public copies both ways, and each
            end moves by ``consensus_step / 2`` times the difference of its copies, so
            the pair's sum is conserved exactly whatever the compressor.
        layout: With compression, the shapes ``like`` concatenates (see
            [`PushSum`][gossip_comm.PushSum]).
        reference: With compression, the common starting value of the public copies.

    With ``config.fault_tolerant`` (a job that goes on without lost ranks), a passive
    listens to each partner separately, so a partner that dies is noticed at once; it
    applies each exchange whole or not at all; and it records a lost partner (``check``
    raises it, once) and serves the others on. ``finish`` skips lost partners and, after
    its timeout, stops waiting for the others.

    Attributes:
        rank: This rank, in ``config.process_group``.
        topology: The bipartite graph partners are drawn from.
        timeout: Seconds an active rank waits for its partner's reply.
        is_passive: Whether this rank is passive: it only answers requests.
        fault_tolerant: ``config.fault_tolerant``.

    Raises:
        TypeError: If ``topology`` is not a ``Topology``.
        ValueError: If the topology is not bipartite with one peer per step, or an
            option that does not apply is set.
    """

    def __init__(
        self,
        topology: Topology,
        like: torch.Tensor,
        *,
        config: GossipConfig | None = None,
        layout: Sequence[torch.Size] | None = None,
        reference: torch.Tensor | None = None,
    ) -> None:
        config = GossipConfig() if config is None else config
        check_arguments(topology, like, config)
        check_pairwise(
            topology,
            config,
            owner="AsyncBilateral",
            unsupported=("mixing", "wire_dtype", "comm_device"),  # CPU, like's dtype
        )
        setup = compression_setup(config, like, layout, reference, owner="AsyncBilateral")
        group = resolve_group(config.process_group)
        n = group_size(group)
        gossip_group = dist.new_group([to_global_rank(group, r) for r in range(n)], backend="gloo")
        assert isinstance(gossip_group, ProcessGroup)  # every rank is a member
        cpu_like = torch.empty(like.shape, dtype=like.dtype)
        channel = open_channel(
            topology,
            cpu_like,
            GossipConfig(
                process_group=gossip_group,
                timeout=config.timeout,
                check_finite=config.check_finite,
                fault_tolerant=config.fault_tolerant,
            ),
            owner="AsyncBilateral",
            extra=[] if setup is None else setup.agreement,
        )
        self._codec = None
        if setup is not None:
            spec = MessageSpec(
                numel=channel.numel, dtype=channel.dtype, device=channel.device, layout=setup.layout
            )
            copies = PublicCopies(
                setup.compressor, spec, channel.rank, setup.reference, "AsyncBilateral"
            )
            self._codec = PairCodec(copies, setup.gamma)
        self.rank = group_rank(group)
        self.topology = topology
        self.timeout = channel.timeout
        self.is_passive = topology.is_passive(self.rank)
        self.fault_tolerant = config.fault_tolerant
        passive = ListeningPassive if self.fault_tolerant else Passive
        self._role: Active | Passive = (
            passive(channel, topology, self._codec)
            if self.is_passive
            else Active(channel, topology, self._codec, self.fault_tolerant)
        )
        self._finished = False

    @property
    def partners(self) -> list[int]:
        """Ranks this rank may average with."""
        return list(self._role.partners)

    @property
    def step(self) -> int:
        """Requests made so far (actives); 0 on passive ranks."""
        return self._role.step if isinstance(self._role, Active) else 0

    @property
    def served(self) -> int:
        """Requests answered so far (passives); 0 on active ranks."""
        return self._role.served if isinstance(self._role, Passive) else 0

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank has sent so far: requests and headers, or replies."""
        return self._role.bytes_sent

    @property
    def lost(self) -> list[int]:
        """Fault tolerant, passive: partners found gone so far (an active's own losses
        reach ``handle.wait()``); empty otherwise."""
        return [e.peer for e in self._role.lost] if isinstance(self._role, Passive) else []

    @property
    def ended(self) -> dict[str, int]:
        """Fault tolerant, passive: how its partners and exchanges ended, beyond the
        exchanges applied (``served``): ``goodbye`` (partners that said goodbye),
        ``lost`` (partners whose connection failed), ``interrupted`` (exchanges a loss
        cut short, left unapplied) and ``unserved`` (requests left unanswered once
        ``finish``'s timeout stopped the server); empty otherwise."""
        if not isinstance(self._role, ListeningPassive):
            return {}
        with self._role.lock:
            return dict(self._role.ended)

    def moved_with(self, peer: int) -> float:
        """Fault tolerant, passive: the sum over elements of what the exchanges with
        ``peer`` applied so far moved this rank's shared value by (0.0 otherwise)."""
        if not isinstance(self._role, Passive):
            return 0.0
        with self._role.lock:
            return self._role.moved.get(peer, 0.0)

    def state_dict(self) -> dict[str, Any]:
        """The request counter (an active's position in its schedule).

        With compression the public copies are *not* saved: no global step exists at which
        both ends of every pair have applied the same exchanges, so saved copies could
        disagree. `load_state_dict` starts every pair afresh instead, from the common
        reference (or zero) on both ends, which keeps each pair's copies equal.
        """
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the request counter (passives have none); restart the public copies.

        Raises:
            ValueError: If ``state["step"]`` is not an int >= 0.
        """
        step = checked_step(dict(state))
        if self._codec is not None:
            guard = self._role.codec_lock if isinstance(self._role, Passive) else nullcontext()
            with guard:
                self._codec.public.reset()
        if isinstance(self._role, Active):
            self._role.step = step

    def _passive(self, what: str) -> Passive:
        if not isinstance(self._role, Passive):
            raise RuntimeError(f"rank {self.rank} is active: it requests, it does not {what}")
        return self._role

    @property
    def lock(self) -> threading.Lock:
        """Passive: held by the responder while it reads or averages the shared value.

        Raises:
            RuntimeError: On an active rank.
        """
        return self._passive("hold a shared value").lock

    def check(self) -> None:
        """Re-raise, in the calling thread, an error the responder thread met.

        Call it at every training step; [`finish`][gossip_comm.AsyncBilateral.finish]
        re-raises such an error too. A no-op on active ranks, whose errors reach
        ``handle.wait()``. Fault tolerant: raises each lost partner once, while the
        responder serves the others on.

        Raises:
            GossipPeerError: Naming this rank, the active it was serving and the exchange.
        """
        self._role.check()

    # ------------------------------------------------------------------ active
    def request(self, snapshot: torch.Tensor) -> GossipHandle[torch.Tensor]:
        """Active: average ``snapshot`` with this exchange's partner; returns at once.

        ``handle.wait()`` returns ``snapshot``, averaged in place with the partner's value;
        a contiguous CPU ``snapshot`` is sent and averaged without a copy, so do not
        modify it before then.

        Raises:
            RuntimeError: On a passive rank, or after ``finish``.
        """
        if not isinstance(self._role, Active) or self._finished:
            raise RuntimeError(f"rank {self.rank} cannot request: passive or finished")
        return self._role.request(snapshot)

    # ----------------------------------------------------------------- passive
    def serve(self, shared: torch.Tensor) -> None:
        """Passive: answer requests from a background thread, averaging into ``shared``.

        ``shared`` (CPU, contiguous) is read and written only under
        [`lock`][gossip_comm.AsyncBilateral.lock].

        Raises:
            RuntimeError: On an active rank, or if called twice.
        """
        self._passive("serve").serve(shared)

    # -------------------------------------------------------------------- both
    def finish(self, timeout: float | None = None) -> None:
        """End this rank's part: actives tell their passives; passives wait for all actives.

        Call after an active's last request has completed. Fault tolerant: lost partners
        are skipped, and a passive stops waiting after ``timeout`` (see
        ``fault_tolerant``) instead of raising.

        Raises:
            GossipError: If a passive's responder failed, or did not end within ``timeout``.
        """
        if self._finished:
            return
        self._finished = True
        self._role.finish(self.timeout if timeout is None else timeout)
