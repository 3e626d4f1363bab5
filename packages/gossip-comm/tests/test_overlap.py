"""PushSum.send/receive (the overlap mode OSGP stands on) against a numpy oracle."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm import GossipConfig, PushSum
from gossip_comm.testing import run_distributed
from gossip_topology import Star, Topology, make_topology, mixing_matrix

STEPS = 5


def _topology(name: str, n: int) -> Topology:
    return Star(n) if name == "star" else make_topology(name, n)


def _oracle(topo: Topology, x0: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Send x(t) at step t, keep W_ii x(t); add step t's messages at step t + lag."""
    n = x0.shape[0]
    x, w = x0.copy(), np.ones(n)
    inflight: list[tuple[np.ndarray, np.ndarray]] = []
    for t in range(STEPS):
        W = mixing_matrix(topo, t)
        off = W - np.diag(np.diag(W))
        inflight.append((off @ x, off @ w))
        x, w = np.diag(W)[:, None] * x, np.diag(W) * w
        if len(inflight) > lag:
            dx, dw = inflight.pop(0)
            x, w = x + dx, w + dw
    for dx, dw in inflight:
        x, w = x + dx, w + dw
    return x, w


def _worker(
    rank: int, n: int, name: str, x0: np.ndarray, lag: int, wire: torch.dtype | None = None
) -> Any:
    config = GossipConfig(wire_dtype=wire)
    ps = PushSum(_topology(name, n), torch.from_numpy(x0[rank].copy()), config=config)
    x, w = torch.from_numpy(x0[rank].copy()), 1.0
    rounds = []
    for _ in range(STEPS):
        rounds.append(ps.send(x.clone(), w))
        x.mul_(rounds[-1].self_weight)
        w *= rounds[-1].self_weight
        if len(rounds) > lag:
            w += ps.receive(rounds.pop(0), x)
    for r in rounds:
        w += ps.receive(r, x)
    return x.numpy(), w


@pytest.mark.parametrize(("name", "lag"), [("star", 0), ("star", 1), ("ring", 2)])
def test_overlapped_rounds_match_the_delayed_oracle(name: str, lag: int) -> None:
    n = 4
    x0 = np.random.default_rng(lag).normal(size=(n, 6))
    results = run_distributed(_worker, n, (name, x0, lag))
    ex, ew = _oracle(_topology(name, n), x0, lag)
    np.testing.assert_allclose(np.stack([r[0] for r in results]), ex, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose([r[1] for r in results], ew, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sum(r[1] for r in results), n, rtol=1e-12)


def test_rounds_in_flight_together_keep_their_own_wire_buffers() -> None:
    # Two rounds in flight at once, each cast to bfloat16 for the wire: a send buffer
    # shared between them would ship the later round's values in the earlier message.
    n, lag = 4, 2
    x0 = np.random.default_rng(7).normal(size=(n, 1 << 18)) + 4.0  # large: sends take time
    results = run_distributed(_worker, n, ("ring", x0, lag, torch.bfloat16))
    ex, ew = _oracle(_topology("ring", n), x0, lag)
    # every message is rounded to bfloat16 once (relative error <= 2^-8), then mixed
    np.testing.assert_allclose(np.stack([r[0] for r in results]), ex, rtol=2**-7, atol=0)
    np.testing.assert_allclose([r[1] for r in results], ew, rtol=1e-12, atol=1e-12)
