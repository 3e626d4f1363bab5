"""Local SGD and DiLoCo (``make_data_parallel("localsgd" | "diloco")``) against oracles.

On 3 gloo processes, a linear least-squares model in float64 (the quadratic objectives
of ``nn_oracles``): local SGD averaging every step is all-reduce SGD (with momentum,
which is linear), DiLoCo with an outer learning rate of 1 and no momentum is local SGD,
and DiLoCo follows gossip-topology's ``simulate_local_sgd`` step by step. The outer
state survives a checkpoint exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm.testing import run_distributed
from gossip_nn import GossipOptions, LocalSGDDataParallel, make_data_parallel
from gossip_topology import OuterOptimizer, Ring, Star, simulate_local_sgd
from nn_oracles import loss, model, problem, quadratic

N, LR = 3, 0.05


def _train(
    rank: int,
    n: int,
    algorithm: str,
    options: dict[str, Any],
    steps: int,
    momentum: float = 0.0,
) -> dict[str, Any]:
    X, y, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=momentum)
    dp = make_data_parallel(algorithm, net, opt, **options)
    path = []
    for _ in range(steps):
        loss(dp, X[rank], y[rank]).backward()
        opt.step()
        opt.zero_grad()
        path.append(net.weight.detach()[0].numpy().copy())
    with dp.average_for_eval():
        average = net.weight.detach()[0].numpy().copy()
    out = {
        "path": np.array(path),
        "average": average,
        "sent": dp.bytes_sent,
        "weight": dp.ps_weight,
    }
    dp.close()
    return out


def test_local_sgd_averaging_every_step_is_all_reduce_sgd() -> None:
    # with heavy-ball momentum too: the mean of the ranks' momentum buffers evolves as
    # AR-SGD's buffer, since both are linear in the gradients
    local = run_distributed(_train, N, ("localsgd", {"average_every": 1}, 8, 0.9))
    ar = run_distributed(_train, N, ("ar", {}, 8, 0.9))
    for r in range(N):
        np.testing.assert_allclose(local[r]["path"], ar[r]["path"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(local[r]["path"][-1], local[0]["path"][-1], atol=1e-12)


def test_diloco_with_outer_lr_1_and_no_momentum_is_local_sgd() -> None:
    plain = OuterOptimizer.diloco(lr=1.0, momentum=0.0)
    diloco = run_distributed(_train, N, ("diloco", {"average_every": 4, "outer": plain}, 12))
    local = run_distributed(_train, N, ("localsgd", {"average_every": 4}, 12))
    for r in range(N):
        np.testing.assert_allclose(diloco[r]["path"], local[r]["path"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("outer", [None, OuterOptimizer(lr=0.5, momentum=0.8, nesterov=False)])
def test_diloco_follows_the_numpy_oracle_step_by_step(outer: OuterOptimizer | None) -> None:
    steps, every = 14, 4
    got = run_distributed(_train, N, ("diloco", {"average_every": every, "outer": outer}, steps))
    X, y, theta0 = problem(N)
    trace = simulate_local_sgd(
        quadratic(X, y), theta0, steps, inner_lr=LR, every=every,
        optimizer=OuterOptimizer.diloco() if outer is None else outer,
    )  # fmt: skip
    for r in range(N):
        np.testing.assert_allclose(got[r]["path"], trace.models[1:, r], rtol=0, atol=1e-10)
        # the average the evaluation holds is the mean of the ranks' models
        mean = np.mean([g["path"][-1] for g in got], axis=0)
        np.testing.assert_allclose(got[r]["average"], mean, rtol=0, atol=1e-12)
    # the ranks differ between averages and agree right after one
    assert np.abs(got[0]["path"][every - 2] - got[1]["path"][every - 2]).max() > 1e-4
    np.testing.assert_allclose(got[0]["path"][every - 1], got[1]["path"][every - 1], atol=1e-12)
    # three averages of 4 float64 parameters, each a ring all-reduce: 2 (n-1)/n of them
    assert got[0]["sent"] == 3 * (2 * (N - 1) * 4 * 8 // N)


@pytest.mark.parametrize(
    ("average_by", "graph", "gossip"),
    [("sgp", Star(N), "push_sum"), ("dpsgd", Ring(N), "push_pull")],
)
def test_gossip_averaging_follows_the_numpy_oracle(
    average_by: str, graph: Any, gossip: str
) -> None:
    # the star's mixing is not doubly stochastic: push-sum weights become unequal
    steps, every = 13, 3
    options = {"average_every": every, "average_by": average_by, "topology": graph}
    got = run_distributed(_train, N, ("diloco", options, steps))
    X, y, theta0 = problem(N)
    trace = simulate_local_sgd(
        quadratic(X, y), theta0, steps, inner_lr=LR, every=every,
        optimizer=OuterOptimizer.diloco(), topology=graph, gossip=gossip,
    )  # fmt: skip
    weights = np.array([g["weight"] for g in got])
    np.testing.assert_allclose(weights, trace.weights[:, 0], rtol=0, atol=1e-12)
    finals = np.array([g["path"][-1] for g in got])
    for r in range(N):
        np.testing.assert_allclose(got[r]["path"], trace.models[1:, r], rtol=0, atol=1e-10)
        # the evaluation holds the push-sum average sum(w z) / sum(w)
        np.testing.assert_allclose(got[r]["average"], weights @ finals / weights.sum(), atol=1e-12)
    assert np.abs(finals[0] - finals[1]).max() > 1e-6  # one round does not agree exactly
    if average_by == "sgp":
        assert np.abs(weights - 1).max() > 0.1
        assert got[0]["sent"] > 0


def _resume(rank: int, n: int, tmp: str) -> dict[str, Any]:
    X, y, theta0 = problem(n)
    options = {"average_every": 4}

    def build() -> tuple[Any, Any, Any]:
        net = model(theta0)
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
        return net, opt, make_data_parallel("diloco", net, opt, **options)

    def steps(net: Any, opt: Any, dp: Any, count: int) -> None:
        for _ in range(count):
            loss(dp, X[rank], y[rank]).backward()
            opt.step()
            opt.zero_grad()

    net, opt, dp = build()
    steps(net, opt, dp, 14)
    whole = net.weight.detach().clone()
    dp.close()
    net, opt, dp = build()
    steps(net, opt, dp, 6)  # mid-period, after one outer step (momentum set)
    torch.save({"model": dp.state_dict(), "opt": opt.state_dict()}, f"{tmp}/r{rank}.pt")
    dp.close()
    net, opt, dp = build()
    saved = torch.load(f"{tmp}/r{rank}.pt", weights_only=False)
    dp.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    steps(net, opt, dp, 8)
    resumed = net.weight.detach().clone()
    dp.close()
    net, opt, dp = build()  # without the outer state the run differs
    state = dict(saved["model"])
    state["_extra_state"] = {**state["_extra_state"], "outer": None}
    try:
        dp.load_state_dict(state)
        refused = None
    except (TypeError, ValueError) as err:
        refused = str(err)
    dp.close()
    return {"diff": (whole - resumed).abs().max().item(), "refused": refused}


def test_a_checkpoint_resumes_the_outer_state_exactly(tmp_path: Any) -> None:
    for r in run_distributed(_resume, N, (str(tmp_path),)):
        assert r["diff"] == 0.0
        assert r["refused"] is not None


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="average_every must be >= 1; got 0"):
        GossipOptions(average_every=0)
    with pytest.raises(TypeError, match=r"outer must be a gossip_topology\.OuterOptimizer"):
        GossipOptions(outer=0.7)  # type: ignore[arg-type]
    assert GossipOptions().ignored_by("localsgd") == []
    assert GossipOptions(outer=OuterOptimizer()).ignored_by("localsgd") == ["outer"]
    assert GossipOptions(average_every=8).ignored_by("sgp") == ["average_every"]
    with pytest.raises(ValueError, match="average_by must be one of 'allreduce', 'sgp', 'dpsgd'"):
        GossipOptions(average_by="gossip")
    with pytest.raises(ValueError, match="algorithm must be one of localsgd, diloco"):
        LocalSGDDataParallel(torch.nn.Linear(2, 1), None, algorithm="sgp")  # type: ignore[arg-type]
