r"""PushPull: weight-free gossip with a doubly-stochastic mixing matrix (D-PSGD).

Each step rank $i$ sends its tensor to its out-peers, receives from its in-peers and sets
$x_i \leftarrow \sum_j W_{ij}(t)\, x_j$. Because $W$ is doubly stochastic the average is
preserved and no weight is needed (Lian et al., NeurIPS 2017,
[arXiv:1705.09056](https://arxiv.org/abs/1705.09056)). All sends and receives of a step
go in one ``batch_isend_irecv``, so no ordering can deadlock, at any world size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gossip_comm._channel import check_arguments
from gossip_comm._engines import EngineGossiper, build_engine
from gossip_comm.config import GossipConfig
from gossip_topology import Topology, check_doubly_stochastic

__all__ = ["PushPull"]


class PushPull(EngineGossiper):
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
        check_arguments(topology, like, config)
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
