"""A rank's view of W(t), the schedule period and the doubly-stochastic check, against W."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gossip_topology import (
    TOPOLOGY_NAMES,
    CustomMixing,
    MetropolisHastings,
    RankSchedule,
    Star,
    Torus2D,
    check_doubly_stochastic,
    make_topology,
    mixing_matrix,
    schedule_period,
)


def _cases() -> list[tuple[str, int, int]]:
    """Every (name, n, k) among a spread of sizes that the registry can build."""
    out = []
    for name in TOPOLOGY_NAMES:
        for n, k in [(1, 1), (3, 1), (5, 2), (8, 1), (8, 3)]:
            try:
                make_topology(name, n, k)
            except ValueError:
                continue
            out.append((name, n, k))
    return out


@pytest.mark.parametrize(("name", "n", "k"), _cases())
def test_rank_views_rebuild_the_mixing_matrix(name: str, n: int, k: int) -> None:
    topo = make_topology(name, n, k)
    views = [RankSchedule(topo, rank=r) for r in range(n)]
    for t in range(2 * schedule_period(topo) + 1):
        W = mixing_matrix(topo, t)
        rebuilt = np.zeros((n, n))
        for r, view in enumerate(views):
            step = view[t]
            rebuilt[r, r] = step.self_weight
            for q, w in zip(step.in_peers, step.in_weights, strict=True):
                rebuilt[r, q] += w
            assert list(step.in_peers) == sorted(step.in_peers)
            assert step.out_peers == tuple(topo.out_peers(r, t))
            assert math.isclose(step.row_sum, W[r].sum(), abs_tol=1e-15)
        np.testing.assert_allclose(rebuilt, W, rtol=0, atol=1e-15)


def test_schedule_period_is_the_lcm_of_graph_and_mixing_periods() -> None:
    topo = make_topology("npeer-dynamic-directed-exponential", 8)  # period 3
    assert schedule_period(topo) == 3
    eye = np.eye(8)
    mix = CustomMixing([mixing_matrix(topo, t) for t in range(3)] + [eye])  # period 4
    assert schedule_period(topo, mix) == 12
    assert RankSchedule(topo, mix, rank=0).period == 12


def test_rank_schedule_rejects_bad_ranks_and_steps() -> None:
    topo = make_topology("ring", 4)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\]"):
        RankSchedule(topo, rank=4)
    with pytest.raises(ValueError, match="step must be >= 0"):
        RankSchedule(topo, rank=0)[-1]


def test_doubly_stochastic_check_covers_the_whole_period() -> None:
    # 70 matrices, doubly stochastic except the last: a check that stops early misses it.
    n = 4
    topo = make_topology("complete", n)
    good = np.full((n, n), 1 / n)
    bad = good.copy()
    bad[:, 0] = [0.7, 0.1, 0.1, 0.1]  # column 0 still sums to 1; row 0 does not
    mix = CustomMixing([good] * 69 + [bad])
    with pytest.raises(ValueError, match=r"at step 69 the rows of ranks \[0"):
        check_doubly_stochastic(topo, mix)
    check_doubly_stochastic(topo, CustomMixing([good] * 70))


def test_doubly_stochastic_check_accepts_what_theory_promises() -> None:
    check_doubly_stochastic(make_topology("ring", 5))  # regular graph, uniform weights
    check_doubly_stochastic(Star(5), MetropolisHastings())  # undirected, any degree
    check_doubly_stochastic(Torus2D(9), MetropolisHastings())
    with pytest.raises(ValueError, match="D-PSGD needs a doubly-stochastic"):
        check_doubly_stochastic(Star(5), owner="D-PSGD")


@pytest.mark.parametrize(
    ("topo", "mixing"),
    [
        (Star(5), None),
        (make_topology("npeer-dynamic-directed-exponential", 8, 2), None),
        (Torus2D(9), MetropolisHastings()),
    ],
)
def test_out_weights_are_the_column_of_w_for_the_out_peers(topo, mixing) -> None:  # type: ignore[no-untyped-def]
    for rank in range(topo.world_size):
        sched = RankSchedule(topo, mixing, rank=rank)
        for step in range(sched.period):
            W = mixing_matrix(topo, step, mixing)
            info = sched[step]
            assert info.out_weights == tuple(W[j, rank] for j in info.out_peers)


def test_rank_step_still_builds_positionally_without_out_weights() -> None:
    from gossip_topology import RankStep

    assert RankStep((1,), (2,), 0.5, (0.5,)).out_weights == ()
