"""simulate_generation: the settled push-sum state of a generation that ends with losses."""

from __future__ import annotations

import numpy as np
import pytest

from gossip_topology import (
    RankRecord,
    Star,
    make_topology,
    simulate_generation,
    simulate_push_sum,
)

RNG = np.random.default_rng(21)


@pytest.mark.parametrize(
    "topology",
    [make_topology("dynamic-directed-exponential", 8), make_topology("ring", 5, 2), Star(5)],
    ids=["dde8", "ring5x2", "star5"],
)
def test_no_loss_and_a_common_stop_is_plain_push_sum(topology: object) -> None:
    n = topology.world_size  # type: ignore[attr-defined]
    x0 = RNG.normal(size=(n, 3))
    out = simulate_generation(topology, x0, [RankRecord(completed=7)] * n)  # type: ignore[arg-type]
    ref = simulate_push_sum(topology, x0, 7, record="last")  # type: ignore[arg-type]
    np.testing.assert_allclose(out.numerators, ref.numerators, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(out.weights, ref.weights, rtol=1e-13, atol=1e-13)
    assert out.lost_weight == pytest.approx(0.0, abs=1e-13)


# ring 0 -> 1 -> 2 -> 0, no loss: ranks 0 and 2 posted step 2 and stopped before waiting;
# rank 1 stopped at the boundary before step 2, so rank 0's step-2 message to it is never
# received and stays with rank 0
RAGGED = [
    RankRecord(completed=2, posted=True),
    RankRecord(completed=2),
    RankRecord(completed=2, posted=True),
]


def test_ragged_stops_without_a_loss_conserve_everything() -> None:
    x0 = RNG.normal(size=(3, 4))
    w0 = np.array([0.5, 1.25, 1.25])
    out = simulate_generation(make_topology("ring", 3), x0, RAGGED, weights0=w0)
    np.testing.assert_allclose(out.numerators.sum(0), x0.sum(0), rtol=0, atol=1e-13)
    assert out.weights.sum() == pytest.approx(3.0, abs=1e-13)
    np.testing.assert_allclose(out.lost_numerator, 0.0, atol=1e-13)


def test_ragged_stops_match_a_hand_computation() -> None:
    # x0 = (0, 3, 6), w = 1, every share a half
    # step 0: (3, 1.5, 4.5); step 1: (3.75, 2.25, 3)
    # step 2: rank 0 keeps 1.875, gets back its unreceived 1.875, receives rank 2's 1.5;
    #         rank 1 keeps 2.25; rank 2 keeps 1.5 (rank 1 sent nothing at step 2)
    out = simulate_generation(make_topology("ring", 3), [0.0, 3.0, 6.0], RAGGED)
    np.testing.assert_allclose(out.numerators[:, 0], [5.25, 2.25, 1.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(out.weights, [1.5, 1.0, 0.5], rtol=0, atol=1e-15)


def test_a_lost_rank_takes_exactly_its_own_mass() -> None:
    # dynamic directed exponential at 4: rank 3 dies after completing 2 steps; every
    # survivor stops at a boundary after 2 steps too
    topo = make_topology("dynamic-directed-exponential", 4)
    x0 = RNG.normal(size=(4, 2))
    records = [RankRecord(completed=2) for r in range(3)]  # each received rank 3's messages
    records.append(RankRecord(completed=2, alive=False))
    out = simulate_generation(topo, x0, records)
    ref = simulate_push_sum(topo, x0, 2, record="last")
    np.testing.assert_allclose(out.numerators[:3], ref.numerators[:3], atol=1e-14)
    np.testing.assert_allclose(out.lost_numerator, ref.numerators[3], atol=1e-14)
    assert out.lost_weight == pytest.approx(ref.weights[3], abs=1e-14)
    assert np.isnan(out.numerators[3]).all() and np.isnan(out.weights[3])


def test_a_failed_send_stays_with_its_sender() -> None:
    # ring of 3, rank 2 lost before step 1: rank 1's step-1 send to it fails
    topo = make_topology("ring", 3)
    base = dict(completed=1, posted=True)
    kept = simulate_generation(
        topo,
        [0.0, 3.0, 6.0],
        [
            RankRecord(**base),  # type: ignore[arg-type]
            RankRecord(**base, returned=frozenset({(2, 1)})),  # type: ignore[arg-type]
            RankRecord(completed=1, alive=False),
        ],
    )
    gone = simulate_generation(  # the same, but rank 1's send completed before the loss
        topo,
        [0.0, 3.0, 6.0],
        [
            RankRecord(**base),  # type: ignore[arg-type]
            RankRecord(**base),  # type: ignore[arg-type]
            RankRecord(completed=1, alive=False),
        ],
    )
    assert kept.numerators[1, 0] - gone.numerators[1, 0] == pytest.approx(0.75, abs=1e-15)
    assert kept.weights[1] - gone.weights[1] == pytest.approx(0.5, abs=1e-15)
    assert gone.lost_weight - kept.lost_weight == pytest.approx(0.5, abs=1e-15)


def test_records_that_contradict_each_other_are_refused() -> None:
    ring = make_topology("ring", 3)
    with pytest.raises(ValueError, match=r"rank 0 completed step 0 without .* ranks \[2\]"):
        simulate_generation(  # rank 2 was lost before it posted step 0
            ring,
            [0.0, 1.0, 2.0],
            [
                RankRecord(completed=1),
                RankRecord(completed=1),
                RankRecord(completed=0, alive=False),
            ],
        )
    with pytest.raises(ValueError, match="rank 1 completed step 0 although its message to rank 2"):
        simulate_generation(  # rank 2 never posted step 0, so rank 1's send cannot complete
            ring,
            [0.0, 1.0, 2.0],
            [RankRecord(completed=0), RankRecord(completed=1), RankRecord(completed=0)],
        )
    with pytest.raises(ValueError, match="must be the step where it stopped"):
        simulate_generation(
            ring,
            [0.0, 1.0, 2.0],
            [
                RankRecord(completed=1),
                RankRecord(completed=2, returned=frozenset({(2, 0)})),
                RankRecord(completed=0, alive=False),
            ],
        )
    with pytest.raises(ValueError, match="peer 1 in its record is not a lost rank"):
        simulate_generation(
            ring,
            [0.0, 1.0, 2.0],
            [RankRecord(completed=0, received_from_lost=frozenset({(1, 0)}))] * 3,
        )
    with pytest.raises(ValueError, match="one entry per rank"):
        simulate_generation(ring, [0.0, 1.0, 2.0], [RankRecord(completed=0)] * 2)
