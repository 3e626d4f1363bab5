"""``abandon()``: after a lost peer ends the job, stop without waiting for anyone."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import torch
from torch import nn

from gossip_comm import GossipPeerError
from gossip_comm.testing import run_distributed
from gossip_nn import make_data_parallel


def _lose_a_peer(rank: int, n: int, algorithm: str) -> Any:
    """Rank 1 dies after two steps; rank 0 fails on its next gossip, abandons, and then
    trains alone: the optimizer no longer gossips, and nothing waits on the dead rank."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    options = {"synch_freq": 1} if algorithm == "osgp" else {}
    dp = make_data_parallel(algorithm, model, opt, timeout=20.0, **options)
    x = torch.ones(8, 4, dtype=torch.float64)
    failed = None
    for step in range(6):
        if rank == 1 and step == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        opt.zero_grad()
        dp(x).pow(2).mean().backward()
        try:
            opt.step()
        except GossipPeerError as err:
            failed = (step, err.peer)
            break
    dp.abandon()
    sent = dp.bytes_sent
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    dp(x).pow(2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    opt.step()  # plain SGD from here on: no hook left
    plain = all(
        torch.equal(p.detach(), b - 0.5 * g)
        for p, b, g in zip(model.parameters(), before, grads, strict=True)
    )
    dp.abandon()  # idempotent
    return failed, dp.bytes_sent == sent, plain


@pytest.mark.parametrize("algorithm", ["sgp", "osgp", "dpsgd"])
def test_abandon_after_a_lost_peer_leaves_plain_local_training(algorithm: str) -> None:
    results = run_distributed(_lose_a_peer, 2, (algorithm,), timeout=90, allowed_exits=[1])
    failed, nothing_sent, plain = results[0]
    assert failed is not None and failed[1] == 1, results[0]
    assert failed[0] >= 2
    assert nothing_sent and plain
