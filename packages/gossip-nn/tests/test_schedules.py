"""Exact averaging (Gossip-PGA, all-reduce warm-up), SlowMo, D-PSGD's update order and
changing the topology mid-run: each run distributed (gloo, CPU) against a numpy oracle.

Every case runs in one set of 4 processes (the ``runs`` fixture); the tests compare.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm.testing import run_distributed
from gossip_nn import ExactAveragingSchedule, SlowMoOptions, make_data_parallel
from gossip_topology import Star, make_topology
from nn_oracles import gossip_oracle, loss, model, problem, quadratic

N, STEPS, LR = 4, 9, 0.05
STAR = Star(N)
RING = make_topology("ring", N)
EXPO = make_topology("npeer-dynamic-directed-exponential", N)
BIPARTITE = make_topology("dynamic-bipartite-exponential", N)
SWITCH_AT = 4  # set_topology is called between iterations 3 and 4

# name: (algorithm, options, oracle keywords, topology before / after the switch or None)
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any], Any]] = {
    "sgp pga": ("sgp", {"global_average_every": 3}, {"exact": lambda t: t % 3 == 2}, None),
    "sgp warm-up + pga": (
        "sgp",
        {"allreduce_warmup_steps": 2, "global_average_every": 4},
        {"exact": lambda t: t < 2 or t % 4 == 3},
        None,
    ),
    "osgp pga": (
        "osgp",
        {"global_average_every": 3, "synch_freq": 1},
        {"exact": lambda t: t % 3 == 2, "tau": 1},
        None,
    ),
    "sgp slowmo": (
        "sgp",
        {"slowmo": SlowMoOptions(beta=0.5, lr=0.8, every=3)},
        {"slowmo": (0.5, 0.8, 3)},
        None,
    ),
    "osgp slowmo": (
        "osgp",
        {"slowmo": SlowMoOptions(beta=0.3, lr=1.0, every=4), "synch_freq": 1},
        {"slowmo": (0.3, 1.0, 4), "tau": 1},
        None,
    ),
    "dpsgd pga": ("dpsgd", {"global_average_every": 3}, {"exact": lambda t: t % 3 == 2}, None),
    "dpsgd update-then-mix": (
        "dpsgd",
        {"dpsgd_order": "update-then-mix"},
        {"order": "update-then-mix"},
        None,
    ),
    "sgp star -> exponential": ("sgp", {}, {}, (STAR, EXPO)),
    "osgp star -> ring": ("osgp", {"synch_freq": 1}, {"tau": 1}, (STAR, RING)),
    "dpsgd ring -> bipartite": ("dpsgd", {}, {}, (RING, BIPARTITE)),
}


def _switching(first: Any, later: Any) -> Any:
    return lambda t: first if t < SWITCH_AT else later


def _default_topology(algorithm: str) -> Any:
    return BIPARTITE if algorithm == "dpsgd" else STAR


def _train(rank: int, n: int, algorithm: str, options: dict[str, Any], switch: Any) -> Any:
    X, y, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    first = switch[0] if switch else _default_topology(algorithm)
    dp = make_data_parallel(algorithm, net, opt, topology=first, **options)
    zs, ws = [], []
    for t in range(STEPS):
        if switch and t == SWITCH_AT:
            dp.set_topology(switch[1])
        loss(dp, X[rank], y[rank]).backward()
        opt.step()
        opt.zero_grad()
        zs.append(net.weight.detach()[0].clone().numpy())
        ws.append(dp.ps_weight)
    dp.close()
    return np.array(zs), np.array(ws)


def _all_cases(rank: int, n: int) -> dict[str, Any]:
    return {
        name: _train(rank, n, algorithm, options, switch)
        for name, (algorithm, options, _, switch) in CASES.items()
    }


@pytest.fixture(scope="module")
def runs() -> list[dict[str, Any]]:
    return run_distributed(_all_cases, N, timeout=300)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_oracle(name: str, runs: list[dict[str, Any]]) -> None:
    algorithm, _, keywords, switch = CASES[name]
    X, y, theta0 = problem(N)
    first = switch[0] if switch else _default_topology(algorithm)
    later = switch[1] if switch else first
    zs, ws = gossip_oracle(
        algorithm,
        _switching(first, later),
        quadratic(X, y),
        theta0,
        STEPS,
        LR,
        flush_at=SWITCH_AT if switch else None,  # set_topology folds messages in flight
        **keywords,
    )
    got_z = np.stack([r[name][0] for r in runs], axis=1)
    got_w = np.stack([r[name][1] for r in runs], axis=1)
    np.testing.assert_allclose(got_z, zs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_w, ws, rtol=1e-12, atol=1e-12)


def test_the_oracles_differ_from_plain_gossip() -> None:
    # each option must change the trajectory, or the comparisons above prove nothing
    X, y, theta0 = problem(N)
    grad = quadratic(X, y)
    for name, (algorithm, _, keywords, switch) in CASES.items():
        first = switch[0] if switch else _default_topology(algorithm)
        later = switch[1] if switch else first
        plain = {"tau": keywords["tau"]} if "tau" in keywords else {}
        a, _ = gossip_oracle(algorithm, _switching(first, first), grad, theta0, STEPS, LR, **plain)
        b, _ = gossip_oracle(
            algorithm,
            _switching(first, later),
            grad,
            theta0,
            STEPS,
            LR,
            **keywords,
        )
        assert np.abs(a - b).max() > 1e-3, name


def test_exact_steps_leave_every_rank_on_the_average(runs: list[dict[str, Any]]) -> None:
    for name, t in (("sgp pga", 2), ("sgp warm-up + pga", 0), ("osgp pga", 5)):
        z = np.stack([r[name][0][t] for r in runs])
        np.testing.assert_allclose(z, np.tile(z[0], (N, 1)), rtol=0, atol=1e-14)


def _complete(rank: int, n: int) -> np.ndarray:
    X, y, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    dp = make_data_parallel("dpsgd", net, opt, topology="complete", dpsgd_order="update-then-mix")
    out = []
    for _ in range(STEPS):
        loss(dp, X[rank], y[rank]).backward()
        opt.step()
        opt.zero_grad()
        out.append(net.weight.detach()[0].clone().numpy())
    return np.array(out)


def test_update_then_mix_on_the_complete_graph_is_all_reduce_sgd() -> None:
    X, y, theta0 = problem(N)
    grad = quadratic(X, y)
    theta, expected = theta0.copy(), []
    for _ in range(STEPS):  # AR-SGD: every rank steps with the mean gradient
        theta = theta - LR * grad.gradient(np.tile(theta, (N, 1))).mean(axis=0)
        expected.append(theta)
    res = run_distributed(_complete, N)
    for r in res:
        np.testing.assert_allclose(r, np.array(expected), rtol=1e-12, atol=1e-12)


def test_exact_averaging_schedule_counts_and_round_trips() -> None:
    s = ExactAveragingSchedule(every=4, warmup_steps=2)
    assert [s.advance() for _ in range(9)] == [
        True,
        True,
        False,
        True,
        False,
        False,
        False,
        True,
        False,
    ]
    t = ExactAveragingSchedule(every=4, warmup_steps=2)
    t.load_state_dict(s.state_dict())
    assert t.peek() is s.peek() and t.step == 9
    with pytest.raises(ValueError, match="every must be >= 0"):
        ExactAveragingSchedule(every=-1)
    with pytest.raises(ValueError, match="non-negative int 'step'"):
        t.load_state_dict({"step": -2})


def test_slowmo_options_are_checked() -> None:
    with pytest.raises(ValueError, match="beta must be in"):
        SlowMoOptions(beta=1.0)
    with pytest.raises(ValueError, match="lr must be positive"):
        SlowMoOptions(lr=0.0)
    with pytest.raises(ValueError, match="every must be >= 1"):
        SlowMoOptions(every=0)
    from gossip_nn import GossipOptions

    with pytest.raises(TypeError, match="slowmo must be a SlowMoOptions"):
        GossipOptions(slowmo=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dpsgd_order must be one of"):
        GossipOptions(dpsgd_order="mix")
