r"""PushPull: weight-free gossip with a doubly-stochastic mixing matrix (D-PSGD).

Each step rank $i$ sends its tensor to its out-peers, receives from its in-peers and sets
$x_i \leftarrow \sum_j W_{ij}(t)\, x_j$. Because $W$ is doubly stochastic the average is
preserved and no weight is needed (Lian et al., NeurIPS 2017,
[arXiv:1705.09056](https://arxiv.org/abs/1705.09056)). All sends and receives of a step
go in one ``batch_isend_irecv``, so no ordering can deadlock, at any world size.
"""

from __future__ import annotations

import torch
from torch.distributed import ProcessGroup

from gossip_comm.exchange import ExchangeEngine, GossipConfig
from gossip_comm.handle import GossipHandle
from gossip_topology import Mixing, Topology, UniformMixing, mixing_matrix

__all__ = ["PushPull"]

_MAX_CHECKED_PHASES = 64


def _check_doubly_stochastic(topology: Topology, mixing: Mixing) -> None:
    phases = min(topology.period * mixing.period, _MAX_CHECKED_PHASES)
    for t in range(phases):
        W = mixing_matrix(topology, t, mixing)
        rows = W.sum(axis=1)
        bad = [int(i) for i in (abs(rows - 1.0) > 1e-9).nonzero()[0]]
        if bad:
            raise ValueError(
                f"PushPull needs a doubly-stochastic mixing matrix, but at step {t} the rows of "
                f"ranks {bad[:8]} of {topology!r} under {mixing!r} sum to "
                f"{[round(float(rows[i]), 6) for i in bad[:8]]}; use PushSum, a regular "
                "graph, or MetropolisHastings on an undirected graph"
            )


class PushPull:
    """Doubly-stochastic gossip of one tensor shape, on gloo (CPU) or NCCL (CUDA).

    Args:
        topology: The graph; with uniform mixing it must be regular.
        like: A tensor with the shape, dtype and device of what will be gossiped.
        mixing: Mixing rule; uniform by default.
        process_group: Group to gossip in; WORLD when ``None``.
        comm_device: Device of the communication buffers.
        wire_dtype: ``None``, ``torch.bfloat16`` or ``torch.float16``.
        timeout: Seconds to wait for one step's messages.
        check_finite: Raise [`NonFiniteError`][gossip_comm.NonFiniteError] on NaN/Inf.

    Raises:
        ValueError: If ``W(t)`` is not doubly stochastic, or on any mismatch across ranks.
    """

    def __init__(
        self,
        topology: Topology,
        like: torch.Tensor,
        *,
        mixing: Mixing | None = None,
        process_group: ProcessGroup | None = None,
        comm_device: torch.device | str | None = None,
        wire_dtype: torch.dtype | None = None,
        timeout: float = 300.0,
        check_finite: bool = False,
    ) -> None:
        mixing = UniformMixing() if mixing is None else mixing
        _check_doubly_stochastic(topology, mixing)
        config = GossipConfig(mixing, process_group, comm_device, wire_dtype, timeout, check_finite)
        self._engine = ExchangeEngine(
            topology, like, config, carries_weight=False, owner="PushPull"
        )

    @property
    def step(self) -> int:
        """Number of steps posted so far."""
        return self._engine.step

    def mix(self, tensor: torch.Tensor) -> torch.Tensor:
        """One blocking push-pull step; ``tensor`` is updated in place and returned."""
        return self._engine.mix(tensor, 1.0)[0]

    def start(self, tensor: torch.Tensor) -> GossipHandle[tuple[torch.Tensor, float]]:
        """Post one step; ``handle.wait()[0]`` is the mixed tensor (updated in place)."""
        return self._engine.start(tensor, 1.0)

    def state_dict(self) -> dict[str, int]:
        """The step counter."""
        return self._engine.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the step counter."""
        self._engine.load_state_dict(state)

    def close(self) -> None:
        """Release the background thread used by ``start`` on CPU."""
        self._engine.close()
