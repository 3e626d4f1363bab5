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


def _restored_worker(rank: int, n: int, config: GossipConfig, cut: int, lag: int) -> Any:
    """Run 8 overlapped steps, saving at ``cut``; then rerun from the save in a new gossiper."""
    steps = 8
    x0 = np.random.default_rng(11).normal(size=(n, 5000)).astype(np.float32)
    topo = Star(n)  # irregular: the weights travel and the hub has 3 in-peers

    def run(ps: PushSum, x: torch.Tensor, w: float, rounds: list[Any], start: int) -> Any:
        saved = None
        for t in range(start, steps):
            if t == cut and saved is None:
                states = [ps.round_state(r) for r in rounds]  # leaves them live
                saved = (ps.state_dict(), states, x.clone(), w)
            rounds.append(ps.send(x.clone(), w))
            x.mul_(rounds[-1].self_weight)
            w *= rounds[-1].self_weight
            x.add_(0.01 * (t + 1))  # a local "update" between send and receive
            if len(rounds) > lag:
                w += ps.receive(rounds.pop(0), x)
        for r in rounds:
            w += ps.receive(r, x)
        return x.numpy().copy(), w, saved

    ps = PushSum(topo, torch.from_numpy(x0[rank]), config=config)
    first_x, first_w, saved = run(ps, torch.from_numpy(x0[rank].copy()), 1.0, [], 0)
    ps.close()
    assert saved is not None
    counter, states, x, w = saved
    fresh = PushSum(topo, x, config=config)  # as after a restart
    fresh.load_state_dict(counter)
    rounds = [fresh.restore_round(s) for s in states]
    again_x, again_w, _ = run(fresh, x, w, rounds, cut)
    errors = {}
    s0 = states[0]
    assert s0["messages"], "every rank of a star has in-peers at every step"
    cases = {
        "unposted": {**s0, "step": 10**6},
        "size": {**s0, "messages": [m[:10] for m in s0["messages"]]},
        "dtype": {**s0, "messages": [m.double() for m in s0["messages"]]},
        "weights": {**s0, "weights": [*s0["weights"], 1.0]},
    }
    for key, bad in cases.items():
        try:
            fresh.restore_round(bad)
        except ValueError as exc:
            errors[key] = str(exc)
    fresh.close()
    return first_x, first_w, again_x, again_w, len(states), errors


@pytest.mark.parametrize(
    "config",
    [
        GossipConfig(timeout=60, chunk_bytes=4096),  # 5 chunks, the last one ragged
        GossipConfig(timeout=60, chunk_bytes=4096, wire_dtype=torch.bfloat16),
    ],
    ids=["chunked", "bf16-wire"],
)
def test_rounds_saved_in_flight_and_restored_continue_bit_for_bit(config: GossipConfig) -> None:
    # OSGP's checkpoint: rounds in flight are saved as the messages they delivered, and a
    # new gossiper (a restarted job) folds them in at the same steps as the original run
    n, lag, cut = 4, 2, 5
    for first_x, first_w, again_x, again_w, saved, errors in run_distributed(
        _restored_worker, n, (config, cut, lag)
    ):
        assert saved == lag  # rounds really were in flight at the cut
        np.testing.assert_array_equal(first_x, again_x)
        assert first_w == again_w
        assert "load the step counter first" in errors["unposted"]
        assert "5000 elements" in errors["size"]
        assert "wire dtype" in errors["dtype"]
        assert "weights; expected" in errors["weights"]
