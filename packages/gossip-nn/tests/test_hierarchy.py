"""Hierarchical gossip: N nodes x 2 processes equal N-rank gossip on averaged gradients,
while each node puts one model's worth of bytes on the network per step, not two."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm.testing import run_distributed
from gossip_nn import make_data_parallel
from gossip_topology import Star, make_topology
from nn_oracles import D, loss, model, problem

STEPS, L = 6, 2


def _topology(name: str, nodes: int) -> Any:
    return Star(nodes) if name == "star" else make_topology(name, nodes)


def _hierarchical(rank: int, n: int, algorithm: str, name: str) -> tuple[np.ndarray, int]:
    X, y, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.5)
    extra = {"synch_freq": 1} if algorithm == "osgp" else {}
    dp = make_data_parallel(
        algorithm, net, opt, topology=_topology(name, n // L), nprocs_per_node=L, **extra
    )
    out = []
    for _ in range(STEPS):
        loss(dp, X[rank], y[rank]).backward()
        opt.step()
        opt.zero_grad()
        out.append(net.weight.detach()[0].clone().numpy())
    dp.close()
    return np.array(out), dp.bytes_sent


def _flat(rank: int, n: int, algorithm: str, name: str) -> tuple[np.ndarray, int]:
    X, y, theta0 = problem(n * L)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.5)
    extra = {"synch_freq": 1} if algorithm == "osgp" else {}
    dp = make_data_parallel(algorithm, net, opt, topology=_topology(name, n), **extra)
    out = []
    for _ in range(STEPS):
        # node `rank` holds processes L rank .. L rank + L - 1: the mean of their losses
        both = sum(loss(dp, X[L * rank + i], y[L * rank + i]) for i in range(L)) / L
        both.backward()
        opt.step()
        opt.zero_grad()
        out.append(net.weight.detach()[0].clone().numpy())
    dp.close()
    return np.array(out), dp.bytes_sent


CASES = [("sgp", "ring"), ("osgp", "ring"), ("dpsgd", "ring"), ("sgp", "star")]
NODES = 3


def _all_hierarchical(rank: int, n: int) -> list[tuple[np.ndarray, int]]:
    return [_hierarchical(rank, n, algorithm, name) for algorithm, name in CASES]


def _all_flat(rank: int, n: int) -> list[tuple[np.ndarray, int]]:
    return [_flat(rank, n, algorithm, name) for algorithm, name in CASES]


@pytest.fixture(scope="module")
def runs() -> tuple[list[Any], list[Any]]:
    hier = run_distributed(_all_hierarchical, NODES * L, timeout=300)
    flat = run_distributed(_all_flat, NODES, timeout=300)
    return hier, flat


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(CASES)))
def test_nodes_of_two_match_flat_gossip_and_send_one_model(
    case: int, runs: tuple[list[Any], list[Any]]
) -> None:
    algorithm, name = CASES[case]
    hier = [r[case] for r in runs[0]]
    flat = [r[case] for r in runs[1]]
    nodes = NODES
    for rank in range(nodes * L):
        np.testing.assert_allclose(hier[rank][0], flat[rank // L][0], rtol=1e-12, atol=1e-12)
    for node in range(nodes):  # the node's processes hold the same model, bit for bit
        np.testing.assert_array_equal(hier[L * node][0], hier[L * node + 1][0])
    if algorithm == "dpsgd":  # each node subtracts its own gradient after averaging
        assert not np.allclose(hier[0][0], hier[2][0])
    # bytes: a node sends what one flat rank sends, split over its processes; only the
    # 8-byte push-sum weight (on a non-regular graph) goes with every process's share
    model_bytes, weight_bytes = D * 8, 8 if name == "star" else 0
    for node in range(nodes):
        node_bytes = sum(hier[L * node + i][1] for i in range(L))
        messages = flat[node][1] // (model_bytes + weight_bytes)
        assert messages >= STEPS  # at least one peer a step
        assert flat[node][1] == messages * (model_bytes + weight_bytes)
        assert node_bytes == messages * (model_bytes + L * weight_bytes), (node_bytes, messages)
        assert hier[L * node][1] == node_bytes // L  # an even split: M / L each


def _interleaved_hosts(rank: int, n: int) -> str:
    import gossip_nn.hierarchy as hierarchy

    hierarchy._host = lambda: f"node{rank % 2}"  # type: ignore[attr-defined]  # cyclic layout
    _, _, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    try:
        make_data_parallel("sgp", net, opt, topology="ring", nprocs_per_node=2)
    except ValueError as exc:
        return str(exc)
    return ""


def test_a_node_block_spread_over_hosts_is_refused() -> None:
    for message in run_distributed(_interleaved_hosts, 4):
        assert message.startswith("nprocs_per_node=2 assumes ranks 0..1 share a node, but "), (
            message
        )
        assert "rank 0 on node0, rank 1 on node1" in message
        assert "--distribution=block" in message
