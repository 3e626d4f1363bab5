r"""PushSum: push-sum gossip of a tensor and its weight over a directed, time-varying graph.

Each step, rank $i$ computes
$x_i \leftarrow \sum_j W_{ij}(t)\, x_j$ and $w_i \leftarrow \sum_j W_{ij}(t)\, w_j$
with a column-stochastic $W(t)$ from gossip-topology; $x_i / w_i$ converges to the
average (Kempe et al. 2003; Assran et al., ICML 2019,
[arXiv:1811.10792](https://arxiv.org/abs/1811.10792)).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from gossip_comm._channel import check_arguments
from gossip_comm._compressed import CompressedFlight
from gossip_comm._engines import EngineGossiper, build_engine
from gossip_comm._exchange import InFlight
from gossip_comm.config import GossipConfig
from gossip_comm.settled import Settled
from gossip_topology import Topology

__all__ = ["OverlapRound", "PushSum"]


class OverlapRound:
    """One step of overlapped push-sum in flight; see [`PushSum.send`][gossip_comm.PushSum.send]."""

    def __init__(self, flight: InFlight | CompressedFlight) -> None:
        self._flight = flight

    @property
    def step(self) -> int:
        """The gossip step this round belongs to."""
        return self._flight.step

    @property
    def self_weight(self) -> float:
        """The share of its push-sum weight a rank keeps at this step.

        ``W[rank, rank]``; with compression, ``1 - gamma (1 - W[rank, rank])``.
        """
        return self._flight.kept_weight

    def keep(self, snapshot: torch.Tensor, out: torch.Tensor) -> None:
        """Write into ``out`` the numerator the sender keeps from the ``snapshot`` it sent.

        ``W[rank, rank] * snapshot`` without compression; with it, the snapshot minus the
        public copies it sends, scaled. Call it right after
        [`send`][gossip_comm.PushSum.send], once, before the next ``send`` or
        ``receive`` (with compression both refuse otherwise); ``out`` may be any tensor
        of the snapshot's shape, the snapshot included.
        """
        self._flight.keep(snapshot, out)


class PushSum(EngineGossiper):
    """Push-sum gossip of one tensor shape, on gloo (CPU) or NCCL (CUDA).

    All traffic is point-to-point (``batch_isend_irecv``) on ``process_group``. When the
    graph is regular and the mixing uniform, every weight provably stays equal, so the
    weight is not sent (the 2019 "regular" fast path); otherwise it travels in float64.

    Args:
        topology: The graph; its ``world_size`` must equal the group's size.
        like: A tensor with the shape, dtype and device of what will be gossiped.
        config: Mixing rule, process group and communication options; defaults when
            ``None``.
        always_send_weight: Send the weight even where the graph would keep every
            weight equal. Needed when the weights are already unequal, for example after
            switching from a non-regular graph to a regular one. Every rank must agree.
        layout: With ``config.compression``: the shapes of the tensors the gossiped
            buffer concatenates, in order (a model's parameters), for compressors that
            work per tensor such as [`LowRank`][gossip_comm.LowRank]. Default: the
            buffer's own shape.
        reference: With ``config.compression``: a value every rank holds identically,
            such as the common initial model. Public copies start there, so the first
            messages carry only what changed since; without it they start at zero.

    Raises:
        ValueError: If ranks disagree on the buffer, topology, compression or reference,
            or an option is invalid.
        RuntimeError: If ``torch.distributed`` is not initialised.

    With ``config.compression`` each message is the compressed difference between the
    rank's value and the public copy its receiver holds (CHOCO-SGD, Koloskova et al.,
    ICML 2019, [arXiv:1902.00340](https://arxiv.org/abs/1902.00340), with one public copy
    per edge so that it works on directed, time-varying graphs): the sums of the
    numerators and of the weights over the network are conserved exactly whatever the
    compressor, and the compression error stays with the sender until it is sent.

    Example:
        ```python
        x = torch.randn(1000)
        ps = PushSum(make_topology("npeer-dynamic-directed-exponential", world_size), x)
        w = 1.0
        for _ in range(10):
            x, w = ps.mix(x, w)
        average_estimate = x / w
        ```
    """

    def __init__(
        self,
        topology: Topology,
        like: torch.Tensor,
        *,
        config: GossipConfig | None = None,
        always_send_weight: bool = False,
        layout: Sequence[torch.Size] | None = None,
        reference: torch.Tensor | None = None,
    ) -> None:
        config = GossipConfig() if config is None else config
        check_arguments(topology, like, config)
        if not isinstance(always_send_weight, bool):
            raise TypeError(
                "always_send_weight must be a bool; got "
                f"{type(always_send_weight).__name__} {always_send_weight!r}"
            )
        self._engine = build_engine(
            topology,
            like,
            config=config,
            carries_weight=True,
            owner="PushSum",
            force_weight=always_send_weight,
            layout=layout,
            reference=reference,
        )

    @property
    def sends_weight(self) -> bool:
        """Whether the push-sum weight travels with each message."""
        return self._engine.carries_weight

    def send(self, tensor: torch.Tensor, weight: float) -> OverlapRound:
        """Overlap mode: post one step's messages carrying ``tensor`` and return at once.

        The caller keeps only its own share: after ``send`` it sets its numerator with
        ``round.keep(tensor, out=numerator)``, scales its weight by ``round.self_weight``
        and may keep updating them; ``tensor`` must be a snapshot that stays untouched
        until [`receive`][gossip_comm.PushSum.receive] (with compression it is encoded
        at once and free after ``keep``).
        """
        return OverlapRound(self._engine.post(tensor, float(weight)))

    def receive(
        self, round_: OverlapRound, into: torch.Tensor, base: torch.Tensor | None = None
    ) -> float:
        """Overlap mode: wait for ``round_``'s messages and add their numerators into ``into``.

        With ``base``, ``into`` is overwritten with ``base`` plus the messages instead:
        one pass that leaves ``base`` alone. ``into`` may be the snapshot ``round_`` sent
        (each chunk is written only after it has gone), so a caller can fold a round and
        take the next round's snapshot in the same buffer.

        Returns:
            The push-sum weight received, to add to the local weight.

        Raises:
            GossipTimeoutError: If a peer's message does not arrive within the timeout.
        """
        if base is not None:
            self._engine.channel.check(base)
        self._engine.channel.check(into)
        return self._engine.accumulate(round_._flight, into, base)

    def settle_round(
        self,
        round_: OverlapRound,
        into: torch.Tensor,
        posted: Callable[[int, int], bool | None],
    ) -> Settled:
        """Overlap mode, fault tolerance: settle ``round_`` after a failure instead of
        receiving it (whether or not a `receive` of it failed part way).

        Adds into ``into`` the messages that went through and were not added yet, and
        for each send that did not go through, the share of the round's snapshot that
        did not leave; no push-sum mass is created or destroyed. Settle every round in
        flight, oldest first, before the group goes.

        Args:
            round_: A round of this gossiper that was sent and not received.
            into: The numerator the round's messages fold into.
            posted: For a peer rank and a gossip step: ``True`` if the peer posted that
                step, ``False`` if not, ``None`` if it is lost
                ([`Membership.posted`][gossip_comm.Membership.posted]).

        Returns:
            What was delivered; its ``weight`` is the weight to add to the local one.

        Raises:
            RuntimeError: With compression (a lost rank takes public copies with it).
        """
        self._engine.channel.check(into)
        return self._engine.settle_round(round_._flight, into, posted)

    def round_state(self, round_: OverlapRound) -> dict[str, Any]:
        """Overlap mode: wait for ``round_``'s messages and return them without folding.

        For checkpoints taken while rounds are in flight (OSGP): the messages a round
        delivered are saved with the model, and `restore_round` rebuilds the round after
        a restart, so the restored run folds them in at the same step, bit for bit, as
        the uninterrupted one. ``round_`` stays usable: `receive` it as usual.

        Returns:
            CPU tensors and floats (the step, the weight sent, the received messages in
            the wire dtype and the received weights).

        Raises:
            GossipTimeoutError: If a peer's message does not arrive within the timeout.
        """
        return self._engine.delivered(round_._flight)

    def restore_round(self, state: Mapping[str, Any]) -> OverlapRound:
        """Overlap mode: a round whose messages are in, from `round_state`'s output.

        Load the step counter (`load_state_dict`) first; then `receive` the restored
        round exactly when the saved one would have been received.

        Raises:
            ValueError: If ``state`` does not fit this gossiper (another step, rank,
                buffer size or wire dtype).
        """
        return OverlapRound(self._engine.restore(state))
