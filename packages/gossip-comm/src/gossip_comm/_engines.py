"""Which engine a gossiper runs (compressed differences, or the value itself), and the
members that PushSum and PushPull forward to it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from gossip_comm._channel import open_channel
from gossip_comm._compressed import CompressedEngine
from gossip_comm._engine import Engine
from gossip_comm._exchange import ExchangeEngine
from gossip_comm._public import compression_setup
from gossip_comm.config import GossipConfig
from gossip_comm.handle import GossipHandle
from gossip_comm.settled import Settled
from gossip_topology import RankSchedule, Topology

__all__ = ["EngineGossiper", "build_engine"]


def build_engine(
    topology: Topology,
    like: torch.Tensor,
    *,
    config: GossipConfig,
    carries_weight: bool,
    owner: str,
    force_weight: bool = False,
    layout: Sequence[torch.Size] | None = None,
    reference: torch.Tensor | None = None,
) -> Engine[Any]:
    """The engine for ``config``: compressed differences, or the value itself.

    Construction runs one small ``all_gather`` so that every rank learns whether all
    ranks agree on the buffer size, dtype and topology (and the compression);
    afterwards only point-to-point messages are sent.

    Args:
        topology: The graph.
        like: A tensor shaped like what will be gossiped.
        config: The gossiper's configuration.
        carries_weight: Whether this is push-sum (``False``: push-pull, no weights).
        owner: The gossiper's class name, for errors.
        force_weight: Send the weight even where it provably stays equal.
        layout: With compression: shapes of the tensors ``like`` concatenates.
        reference: With compression: a value every rank holds identically (the common
            initial model); public copies start there instead of at zero.

    Raises:
        TypeError: If ``like`` is not a floating-point tensor.
        ValueError: On any inconsistency, on every rank at once; if ``layout`` or
            ``reference`` is given without compression.
        RuntimeError: If ``torch.distributed`` is not initialised.
    """
    setup = compression_setup(config, like, layout, reference, owner=owner)
    extra = [("fault_tolerant", int(config.fault_tolerant))]
    extra += [] if setup is None else setup.agreement
    channel = open_channel(topology, like, config, owner=owner, extra=extra)
    schedule = RankSchedule(topology, config.mixing, rank=channel.rank)
    # a fault-tolerant step may return shares to their senders, which unbalances the
    # weights even on a graph that keeps them equal: the weight always travels
    force = force_weight or config.fault_tolerant
    weighted = carries_weight and (force or not schedule.weight_is_constant)
    if setup is None:
        return ExchangeEngine(channel, schedule, carries_weight=weighted)
    return CompressedEngine(channel, schedule, setup, carries_weight=weighted)


class EngineGossiper:
    """What [`PushSum`][gossip_comm.PushSum] and [`PushPull`][gossip_comm.PushPull]
    share: each member forwards to the engine ``build_engine`` chose."""

    _engine: Engine[Any]

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank has sent so far (messages and weights, on the wire)."""
        return self._engine.bytes_sent

    @property
    def step(self) -> int:
        """Number of steps posted so far (the schedule position)."""
        return self._engine.step

    def mix(self, tensor: torch.Tensor, weight: float = 1.0) -> tuple[torch.Tensor, float]:
        """One blocking gossip step; ``tensor`` is updated in place and returned.

        Returns:
            ``(tensor, weight)``: with push-sum the new weight, ``tensor / weight``
            estimating the average; with push-pull the weight unchanged.

        Raises:
            GossipTimeoutError: If a peer's message does not arrive within the timeout.
            PeerLostError: If a peer's process died.
            NonFiniteError: With ``check_finite``, if a peer sent NaN or Inf.
        """
        return self._engine.mix(tensor, float(weight))

    @property
    def interrupted(self) -> bool:
        """Fault tolerance: whether a blocking step failed and awaits `settle`."""
        return self._engine.interrupted is not None

    def settle(self, posted: Callable[[int, int], bool | None]) -> Settled:
        """Fault tolerance: finish the blocking step that failed, with what was delivered.

        Call it once the job knows which peers are lost and how far each live peer got:
        operations that both ends posted are waited for, the others abandoned; the part
        of the tensor not mixed yet keeps this rank's share, takes back the shares whose
        sends did not complete and adds the messages that arrived.

        Args:
            posted: ``posted(peer, step)``: ``True`` if live ``peer`` posted gossip step
                ``step``, ``False`` if it did not, ``None`` if it is lost.

        Returns:
            A [`Settled`][gossip_comm.Settled]: the tensor (updated in place), the weight,
            and which peers' messages came back, arrived, or went through in part.

        Raises:
            RuntimeError: If no step failed, or the gossip is compressed.
        """
        return self._engine.settle(posted)

    def start(
        self, tensor: torch.Tensor, weight: float = 1.0
    ) -> GossipHandle[tuple[torch.Tensor, float]]:
        """Post one step and return at once; ``handle.wait()`` gives ``(tensor, weight)``.

        ``tensor`` is updated in place when the step finishes; do not modify it before.
        """
        return self._engine.start(tensor, float(weight))

    def state_dict(self) -> dict[str, Any]:
        """The step counter; with compression also the public copies and codec states."""
        return self._engine.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output.

        Raises:
            ValueError: If the step is not an int >= 0, or the state does not fit (saved
                without the compression this gossiper uses, or for another buffer size).
        """
        self._engine.load_state_dict(state)

    def close(self, *, wait: bool = True) -> None:
        """Release the background thread used by ``start`` on CPU.

        Args:
            wait: Wait for the thread to finish what it runs; ``False`` (a peer is
                lost and the job ends): a step in flight is abandoned, and the thread
                (a daemon) is told to stop but not waited for.
        """
        self._engine.close(wait=wait)
