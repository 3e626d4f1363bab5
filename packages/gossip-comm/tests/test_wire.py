"""Low-precision wire dtypes: a derived error bound, and push-sum weights stay exact.

Bound. bf16 keeps 8 significant bits, so rounding a sent value ``x_q`` gives
``|fl(x_q) - x_q| <= u |x_q|`` with unit roundoff ``u = 2**-8`` (``2**-11`` for fp16). The
receiver accumulates in the buffer's dtype (fp32 here), so after one step

    |x_i' - sum_j W_ij x_j| <= u * sum_{q != i} W_iq |x_q| + c * eps32 * sum_j W_ij |x_j|

with ``eps32 = 2**-24`` and a small constant ``c`` for the fp32 additions (``c = 8`` is
ample for in-degree <= 3). Over ``s`` steps of a doubly-stochastic ``W``, which does not
expand the max-norm, the errors add up: ``max |x(s) - x_exact(s)| <= s * (u + c eps32) *
max |x(0)|``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm import GossipConfig, PushSum
from gossip_comm.testing import run_distributed
from gossip_topology import Star, make_topology, mixing_matrix, simulate_push_sum

UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
EPS32 = 2.0**-24


def _wire_worker(
    rank: int, n: int, x0: np.ndarray, name: str, wire: torch.dtype, steps: int
) -> Any:
    topo = Star(n) if name == "star" else make_topology(name, n)
    x = torch.from_numpy(x0[rank].astype(np.float32))
    ps = PushSum(topo, x, config=GossipConfig(wire_dtype=wire))
    history, w, weights = [x.clone().numpy()], 1.0, [1.0]
    for _ in range(steps):
        x, w = ps.mix(x, w)
        history.append(x.clone().numpy())
        weights.append(w)
    return np.array(history), np.array(weights), ps.sends_weight


@pytest.mark.parametrize("wire", [torch.bfloat16, torch.float16])
def test_one_step_error_is_within_the_derived_bound(wire: torch.dtype) -> None:
    n, d = 4, 2000
    x0 = np.random.default_rng(7).normal(size=(n, d)) * 3.0
    name = "npeer-dynamic-directed-exponential"
    results = run_distributed(_wire_worker, n, (x0, name, wire, 1))
    W = mixing_matrix(make_topology(name, n), 0)
    x32 = x0.astype(np.float32).astype(np.float64)
    exact = W @ x32
    got = np.stack([results[r][0][1] for r in range(n)])
    off = W - np.diag(np.diag(W))
    bound = UNIT[wire] * (off @ np.abs(x32)) + 8 * EPS32 * (W @ np.abs(x32))
    assert np.all(np.abs(got - exact) <= bound)
    assert np.abs(got - exact).max() > 0  # the wire really was lower precision


def test_multi_step_error_bound_on_a_doubly_stochastic_graph() -> None:
    n, d, steps = 8, 500, 6
    x0 = np.random.default_rng(8).normal(size=(n, d))
    name = "dynamic-directed-exponential"
    results = run_distributed(_wire_worker, n, (x0, name, torch.bfloat16, steps))
    sim = simulate_push_sum(make_topology(name, n), x0.astype(np.float32), steps)
    got = np.stack([results[r][0][-1] for r in range(n)])
    bound = steps * (UNIT[torch.bfloat16] + 8 * EPS32) * np.abs(x0).max()
    assert np.abs(got - sim.numerators[-1]).max() <= bound


def test_weights_stay_exact_on_a_lower_precision_wire() -> None:
    n, steps = 5, 6
    x0 = np.random.default_rng(9).normal(size=(n, 10))
    results = run_distributed(_wire_worker, n, (x0, "star", torch.bfloat16, steps))
    sim = simulate_push_sum(Star(n), x0, steps)
    assert all(results[r][2] for r in range(n))  # a star is irregular: weights travel
    got_w = np.stack([results[r][1] for r in range(n)], axis=1)
    np.testing.assert_allclose(got_w, sim.weights, rtol=1e-15, atol=1e-15)
