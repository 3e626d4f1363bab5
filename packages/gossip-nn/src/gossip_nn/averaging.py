"""When to average exactly instead of gossiping: all-reduce warm-up and Gossip-PGA.

A small policy with a step counter that survives ``state_dict``; the step objects decide
*how* an exact step mixes, this decides *when*:

- **All-reduce warm-up.** The first ``warmup_steps`` iterations average exactly (AR-SGD),
  as PostLocalSGD's warm-up does, before gossip takes over.
- **Gossip-PGA** (Chen et al., *Accelerating Gossip SGD with Periodic Global Averaging*,
  ICML 2021, [arXiv:2105.09080](https://arxiv.org/abs/2105.09080)): every ``every``-th
  iteration (iterations ``every - 1, 2 every - 1, ...``, counting from 0) averages
  exactly instead of gossiping.
"""

from __future__ import annotations

from typing import Any

from gossip_topology._checks import check_int

__all__ = ["ExactAveragingSchedule"]


class ExactAveragingSchedule:
    """Decides, iteration by iteration, whether to average exactly.

    Args:
        every: Average exactly on every ``every``-th iteration; 0 never.
        warmup_steps: Average exactly on the first ``warmup_steps`` iterations.

    Attributes:
        every: Average exactly on every ``every``-th iteration; 0 never.
        warmup_steps: Average exactly on the first ``warmup_steps`` iterations.
        step: The current iteration, counting from 0; saved by ``state_dict``.

    Raises:
        ValueError: If either argument is negative.
        TypeError: If either argument is not an int.

    Example:
        ```python
        s = ExactAveragingSchedule(every=3, warmup_steps=1)
        [s.advance() for _ in range(7)]  # True, False, True, False, False, True, False
        ```
    """

    def __init__(self, *, every: int = 0, warmup_steps: int = 0) -> None:
        self.every = check_int("every", every, minimum=0)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        self.step = 0

    @property
    def active(self) -> bool:
        """Whether any iteration can be exact."""
        return bool(self.every or self.warmup_steps)

    def is_exact(self, step: int) -> bool:
        """Whether iteration ``step`` (from 0) averages exactly."""
        return step < self.warmup_steps or (self.every > 0 and (step + 1) % self.every == 0)

    def peek(self) -> bool:
        """Whether the current iteration averages exactly (without advancing)."""
        return self.is_exact(self.step)

    def advance(self) -> bool:
        """Whether the current iteration averages exactly; then move to the next one."""
        exact = self.is_exact(self.step)
        self.step += 1
        return exact

    def state_dict(self) -> dict[str, Any]:
        """The iteration counter."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the iteration counter.

        Raises:
            ValueError: If ``state`` has no valid ``step``.
        """
        step = state.get("step") if isinstance(state, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"state must hold a non-negative int 'step'; got {state!r}")
        self.step = step
