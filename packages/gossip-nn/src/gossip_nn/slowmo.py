r"""SlowMo: a slow momentum step on top of any gossip algorithm.

Wang, Tantia, Ballas, Rabbat, *SlowMo: Improving Communication-Efficient Distributed SGD
with Slow Momentum*, ICLR 2020 ([arXiv:1910.00643](https://arxiv.org/abs/1910.00643)).
Every ``every`` iterations the ranks average their models exactly, giving $\bar x$, and
then take one outer step from the model $x_0$ of the previous outer step:

$$u \leftarrow \beta u + \frac{1}{\gamma}(x_0 - \bar x), \qquad
x_0 \leftarrow x_0 - \alpha \gamma u,$$

with $\gamma$ the base optimizer's current learning rate (its first parameter group's)
and $\alpha$ the slow learning rate. Every rank then continues from $x_0$. With
$\beta = 0$ and $\alpha = 1$ this is plain periodic exact averaging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gossip_topology._checks import check_int

__all__ = ["SlowMo", "SlowMoOptions"]


@dataclass(frozen=True, kw_only=True)
class SlowMoOptions:
    r"""The slow momentum's settings, passed as ``make_data_parallel(..., slowmo=...)``.

    Attributes:
        beta: Slow momentum $\beta$, in ``[0, 1)``.
        lr: Slow learning rate $\alpha$, positive.
        every: Inner iterations between two outer steps, at least 1.

    Raises:
        ValueError: If a value is out of range.
        TypeError: If ``every`` is not an int or ``beta``/``lr`` not a number.
    """

    beta: float = 0.5
    lr: float = 1.0
    every: int = 48

    def __post_init__(self) -> None:
        check_int("every", self.every, minimum=1)
        for name in ("beta", "lr"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number; got {type(value).__name__}")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"beta must be in [0, 1); got {self.beta}")
        if not self.lr > 0.0:
            raise ValueError(f"lr must be positive; got {self.lr}")


class SlowMo:
    """The outer step's state: the last outer model, the slow momentum, a step counter.

    Args:
        options: The settings.
        params: The flat parameter buffers, equal on every rank at construction.

    Attributes:
        options: The settings.
        outer: The outer model: a copy of the parameters at the last outer step.
        momentum: The slow momentum buffers, one per parameter buffer.
        step: Inner iterations counted so far.
    """

    def __init__(self, options: SlowMoOptions, params: list[torch.Tensor]) -> None:
        self.options = options
        self.outer = [p.detach().clone() for p in params]
        self.momentum = [torch.zeros_like(p) for p in params]
        self.step = 0

    def advance(self) -> bool:
        """Count one inner iteration; whether an outer step is due now."""
        self.step += 1
        return self.step % self.options.every == 0

    @torch.no_grad()
    def apply(self, params: list[torch.Tensor], base_lr: float) -> None:
        """``params`` hold the exact average: take the outer step and write it back.

        Raises:
            ValueError: If ``base_lr`` is not positive.
        """
        if not base_lr > 0.0:
            raise ValueError(f"SlowMo needs a positive base learning rate; got {base_lr}")
        beta, alpha = self.options.beta, self.options.lr
        for x, x0, u in zip(params, self.outer, self.momentum, strict=True):
            u.mul_(beta).add_(x0 - x, alpha=1.0 / base_lr)
            x0.sub_(u, alpha=alpha * base_lr)
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
            raise ValueError("SlowMo state is for a model of another shape")
        for dst, src in zip(self.outer + self.momentum, list(outer) + list(momentum), strict=True):
            dst.copy_(src)
        self.step = int(state["step"])
