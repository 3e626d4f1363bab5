"""Where a run stands (`Position`), and the random state a checkpoint carries with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Position", "rng_state", "set_rng_state"]


@dataclass
class Position:
    """Where a run stands: the next iteration to run.

    Attributes:
        epoch: The epoch, from 0.
        itr: Iterations of ``epoch`` already run.
        global_itr: Iterations run since the job began (over every epoch and restart).
    """

    epoch: int = 0
    itr: int = 0
    global_itr: int = 0

    def state_dict(self) -> dict[str, int]:
        """The checkpoint's ``progress`` entry."""
        return {"epoch": self.epoch, "itr": self.itr, "global_itr": self.global_itr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.epoch, self.itr = int(state["epoch"]), int(state["itr"])
        self.global_itr = int(state["global_itr"])


def rng_state() -> dict[str, Any]:
    """torch's random state (and CUDA's, where present), for a rank's checkpoint."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
