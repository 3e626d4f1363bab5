r"""The outer step, in torch: one policy for SlowMo, local SGD and DiLoCo.

Every ``every`` inner steps the wrapper averages the model (exactly, or by gossip) and
hands the average to `OuterStep.apply`, which moves the outer model $x_0$ with the
[`OuterOptimizer`][gossip_topology.OuterOptimizer] (SGD with heavy-ball or Nesterov
momentum on the pseudo-gradient $(x_0 - \bar x)/s$) and writes it back into the
parameters. The numpy oracle of the same step is
[`outer_step`][gossip_topology.outer_step]; the two are tested against each other.
"""

from __future__ import annotations

from typing import Any

import torch

from gossip_topology import OuterOptimizer
from gossip_topology._checks import check_int

__all__ = ["OuterStep"]


class OuterStep:
    """The outer step's state: the outer model, its momentum and a step counter.

    Args:
        optimizer: The outer optimizer's settings.
        every: Inner steps between two outer steps, at least 1.
        params: The flat parameter buffers, equal on every rank at construction.
        name: What the outer step is called in errors (``"SlowMo"``, ``"DiLoCo"``).

    Attributes:
        optimizer: As given.
        every: As given.
        outer: The outer model: a copy of the parameters at the last outer step.
        momentum: The outer momentum buffers, one per parameter buffer.
        step: Inner steps counted so far.

    Raises:
        ValueError: If ``every`` is below 1.
    """

    def __init__(
        self,
        optimizer: OuterOptimizer,
        every: int,
        params: list[torch.Tensor],
        *,
        name: str = "the outer step",
    ) -> None:
        self.optimizer = optimizer
        self.every = check_int("every", every, minimum=1)
        self.name = name
        self.outer = [p.detach().clone() for p in params]
        self.momentum = [torch.zeros_like(p) for p in params]
        self.step = 0

    def advance(self) -> bool:
        """Count one inner step; whether an outer step is due now."""
        self.step += 1
        return self.step % self.every == 0

    @torch.no_grad()
    def apply(self, params: list[torch.Tensor], inner_lr: float = 1.0) -> None:
        r"""``params`` hold the average $\bar x$: take the outer step and write the new
        outer model into them.

        Args:
            params: The averaged flat buffers (in the order given at construction).
            inner_lr: The inner optimizer's current learning rate $\gamma$, used when
                the optimizer scales by it (SlowMo).

        Raises:
            ValueError: If the optimizer scales by ``inner_lr`` and it is not positive.
        """
        opt = self.optimizer
        scale = 1.0
        if opt.scale_by_inner_lr:
            if not inner_lr > 0.0:
                raise ValueError(f"{self.name} needs a positive base learning rate; got {inner_lr}")
            scale = float(inner_lr)
        mu = opt.momentum
        for x, x0, u in zip(params, self.outer, self.momentum, strict=True):
            g = x0 - x
            u.mul_(mu).add_(g, alpha=1.0 / scale)
            if opt.nesterov:  # d = g / s + mu u
                x0.sub_(g.div_(scale).add_(u, alpha=mu), alpha=opt.lr * scale)
            else:  # d = u
                x0.sub_(u, alpha=opt.lr * scale)
            x.copy_(x0)

    def state_dict(self) -> dict[str, Any]:
        """The counter, the outer model and the momentum (tensors)."""
        return {"step": self.step, "outer": self.outer, "momentum": self.momentum}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``'s output.

        Raises:
            ValueError: If the shapes do not match this model's.
        """
        outer, momentum = state["outer"], state["momentum"]
        if len(outer) != len(self.outer) or any(
            a.shape != b.shape for a, b in zip(outer, self.outer, strict=False)
        ):
            raise ValueError(f"{self.name} state is for a model of another shape")
        for dst, src in zip(self.outer + self.momentum, list(outer) + list(momentum), strict=True):
            dst.copy_(src)
        self.step = int(state["step"])
