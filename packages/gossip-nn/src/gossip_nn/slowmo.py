r"""SlowMo: a slow momentum step on top of any gossip algorithm.

Wang, Tantia, Ballas, Rabbat, *SlowMo: Improving Communication-Efficient Distributed SGD
with Slow Momentum*, ICLR 2020 ([arXiv:1910.00643](https://arxiv.org/abs/1910.00643)).
Every ``every`` iterations the ranks average their models exactly, giving $\bar x$, and
then take one outer step from the model $x_0$ of the previous outer step:

$$u \leftarrow \beta u + \frac{1}{\gamma}(x_0 - \bar x), \qquad
x_0 \leftarrow x_0 - \alpha \gamma u,$$

with $\gamma$ the base optimizer's current learning rate (its first parameter group's)
and $\alpha$ the slow learning rate. Every rank then continues from $x_0$. With
$\beta = 0$ and $\alpha = 1$ this is plain periodic exact averaging. The step itself is
the outer-step policy shared with local SGD and DiLoCo (``OuterStep``), configured as a
heavy ball scaled by $\gamma$.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gossip_nn._outer import OuterStep
from gossip_topology import OuterOptimizer
from gossip_topology._checks import check_int

__all__ = ["SlowMoOptions", "slowmo_step"]


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

    def outer_optimizer(self) -> OuterOptimizer:
        """The outer optimizer these settings are: a heavy ball scaled by the inner
        learning rate ([`OuterOptimizer.slowmo`][gossip_topology.OuterOptimizer.slowmo])."""
        return OuterOptimizer.slowmo(beta=self.beta, lr=self.lr)


def slowmo_step(options: SlowMoOptions, params: list[torch.Tensor]) -> OuterStep:
    """SlowMo's outer step over the flat ``params``: the shared policy, configured."""
    return OuterStep(options.outer_optimizer(), options.every, params, name="SlowMo")
