"""Hierarchical gossip: 2 nodes x 2 processes equal 2-rank gossip on averaged gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossip_comm.testing import run_distributed
from gossip_nn import make_data_parallel
from nn_oracles import loss, model, problem

STEPS = 6


def _hierarchical(rank: int, n: int, algorithm: str) -> np.ndarray:
    X, y, theta0 = problem(4)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.5)
    dp = make_data_parallel(algorithm, net, opt, topology="ring", nprocs_per_node=2)
    out = []
    for _ in range(STEPS):
        loss(dp, X[rank], y[rank]).backward()
        opt.step()
        opt.zero_grad()
        out.append(net.weight.detach()[0].clone().numpy())
    return np.array(out)


def _flat(rank: int, n: int, algorithm: str) -> np.ndarray:
    X, y, theta0 = problem(4)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.5)
    dp = make_data_parallel(algorithm, net, opt, topology="ring")
    out = []
    for _ in range(STEPS):
        # node `rank` holds processes 2 rank and 2 rank + 1: the mean of their losses
        both = 0.5 * (
            loss(dp, X[2 * rank], y[2 * rank]) + loss(dp, X[2 * rank + 1], y[2 * rank + 1])
        )
        both.backward()
        opt.step()
        opt.zero_grad()
        out.append(net.weight.detach()[0].clone().numpy())
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["sgp", "dpsgd"])
def test_two_nodes_of_two_match_two_ranks_on_averaged_gradients(algorithm: str) -> None:
    hier = run_distributed(_hierarchical, 4, (algorithm,))
    flat = run_distributed(_flat, 2, (algorithm,))
    for rank in range(4):
        np.testing.assert_allclose(hier[rank], flat[rank // 2], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(hier[0], hier[1])  # local ranks hold the same model
    if algorithm == "dpsgd":  # each node subtracts its own gradient after averaging
        assert not np.allclose(hier[0], hier[2])
