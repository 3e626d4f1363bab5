r"""PushPull: weight-free gossip with a doubly-stochastic mixing matrix (D-PSGD).

Each step rank $i$ sends its tensor to its out-peers, receives from its in-peers and sets
$x_i \leftarrow \sum_j W_{ij}(t)\, x_j$. Because $W$ is doubly stochastic the average is
preserved and no weight is needed (Lian et al., NeurIPS 2017,
[arXiv:1705.09056](https://arxiv.org/abs/1705.09056)). All sends and receives of a step
go in one ``batch_isend_irecv``, so no ordering can deadlock, at any world size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from gossip_comm._engines import build_engine
from gossip_comm.config import GossipConfig
from gossip_comm.handle import GossipHandle
from gossip_topology import Topology, check_doubly_stochastic

__all__ = ["PushPull"]


class PushPull:
    """Doubly-stochastic gossip of one tensor shape, on gloo (CPU) or NCCL (CUDA).

    It has [`PushSum`][gossip_comm.PushSum]'s signature (the
    [`Gossiper`][gossip_comm.Gossiper] protocol), so code can hold either: the weight is
    handed back unchanged, because a doubly-stochastic ``W`` keeps equal weights equal.

    Args:
        topology: The graph; with uniform mixing it must be regular.
        like: A tensor with the shape, dtype and device of what will be gossiped.
        config: Mixing rule, process group and communication options; defaults when
            ``None``. With ``config.compression``, each step is CHOCO-SGD's compressed
            gossip on per-edge public copies (see [`PushSum`][gossip_comm.PushSum]), which
            keeps the average exact.
        layout: With compression: the shapes the buffer concatenates (see `PushSum`).
        reference: With compression: the common starting value of the public copies.

    Raises:
        ValueError: If ``W(t)`` is not doubly stochastic at some step, or on any mismatch
            across ranks.

    Example:
        ```python
        pp = PushPull(make_topology("ring", world_size), x)
        for _ in range(10):
            x, _ = pp.mix(x)
        ```
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
        check_doubly_stochastic(topology, config.mixing, owner="PushPull")
        self._engine = build_engine(
            topology,
            like,
            config=config,
            carries_weight=False,
            owner="PushPull",
            layout=layout,
            reference=reference,
        )

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank has sent so far (messages and weights, on the wire)."""
        return self._engine.bytes_sent

    @property
    def step(self) -> int:
        """Number of steps posted so far."""
        return self._engine.step

    def mix(self, tensor: torch.Tensor, weight: float = 1.0) -> tuple[torch.Tensor, float]:
        """One blocking push-pull step; ``tensor`` is updated in place.

        Returns:
            ``(tensor, weight)``, the weight unchanged.
        """
        return self._engine.mix(tensor, float(weight))

    def start(
        self, tensor: torch.Tensor, weight: float = 1.0
    ) -> GossipHandle[tuple[torch.Tensor, float]]:
        """Post one step; ``handle.wait()`` gives ``(tensor, weight)``, mixed in place."""
        return self._engine.start(tensor, float(weight))

    def state_dict(self) -> dict[str, Any]:
        """The step counter; with compression also the public copies and codec states."""
        return self._engine.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output.

        Raises:
            ValueError: If the state does not fit this gossiper.
        """
        self._engine.load_state_dict(state)  # type: ignore[arg-type]

    def close(self) -> None:
        """Release the background thread used by ``start`` on CPU."""
        self._engine.close()
