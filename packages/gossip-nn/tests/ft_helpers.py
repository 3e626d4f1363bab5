"""Shared pieces of the fault-tolerance tests: the store address, the run length, data."""

from __future__ import annotations

import torch

HOST = "127.0.0.1"
STEPS, KILL_AT = 30, 8


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    w_true = torch.arange(1.0, 7.0, dtype=torch.float64)
    return x, x @ w_true + 0.01 * torch.randn(64, generator=g, dtype=torch.float64)
