"""``GossipStrategy`` trains as the plain gossip-nn loop does.

The oracle: a LightningModule trained by ``Trainer(strategy=GossipStrategy(...))`` on two
processes ends with the same parameters as ``make_data_parallel`` and a hand-written
loop on the same shards and initial model. The scenarios run once, in
``lightning_worker.py`` (the ``lightning_results`` fixture of ``conftest.py``).
"""

from typing import Any

import pytest

pytest.importorskip("lightning")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sgp-acc1", "dpsgd-acc1", "sgp-acc2", "ar-acc1"])
def test_fit_matches_the_plain_gossip_loop(
    lightning_results: list[dict[str, Any]], name: str
) -> None:
    for rank in lightning_results:
        assert rank[name]["max_diff"] <= 1e-6, rank[name]
        assert rank[name]["sent"] == rank[name]["plain_sent"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_matches_the_plain_autocast_loop(
    lightning_results: list[dict[str, Any]], precision: str
) -> None:
    for rank in lightning_results:
        got = rank[f"sgp-{precision}"]
        assert got["max_diff"] <= 1e-6, got
        assert got["vs_fp32"] > 1e-5, got  # autocast did change the arithmetic
        assert got["sent"] == got["plain_sent"] > 0
        assert got["scale"] == got["plain_scale"]
    if precision == "16-mixed":
        # rank 1 skipped one update (its scale halved once), and still gossiped every step
        assert [rank["sgp-16-mixed"]["scale"] for rank in lightning_results] == [256.0, 128.0]
        assert (
            lightning_results[1]["sgp-16-mixed"]["sent"]
            == lightning_results[0]["sgp-16-mixed"]["sent"]
        )


@pytest.mark.slow
def test_adpsgd_through_the_strategy_evaluates_the_exact_average(
    lightning_results: list[dict[str, Any]],
) -> None:
    for rank in lightning_results:
        got = rank["adpsgd"]
        assert got["sent"] > 0 and got["moved"] > 1e-3, got
        assert got["val"] == pytest.approx(got["average_loss"], rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_every_rank_starts_from_rank_0s_model(lightning_results: list[dict[str, Any]]) -> None:
    # rank 1's parameters were shifted by 1 before fit; the run is that of equal starts
    for rank in lightning_results:
        assert rank["from_rank0"] == 0.0


@pytest.mark.slow
def test_accumulation_gossips_once_per_optimizer_step(
    lightning_results: list[dict[str, Any]],
) -> None:
    # four optimizer steps either way; eight backward passes with accumulate_grad_batches=2
    for rank in lightning_results:
        assert rank["sgp-acc2"]["sent"] == rank["sgp-acc1"]["sent"]


@pytest.mark.slow
def test_clipping_and_a_schedule_match_the_plain_loop(
    lightning_results: list[dict[str, Any]],
) -> None:
    for rank in lightning_results:
        got = rank["sgp-clip-schedule"]
        assert got["max_diff"] <= 1e-6, got
        assert got["vs_plain"] > 1e-3, got  # clipping and the schedule did change the run


@pytest.mark.slow
def test_two_optimizers_are_refused(lightning_results: list[dict[str, Any]]) -> None:
    for rank in lightning_results:
        assert rank["two_optimizers"] is not None
        assert "exactly one optimizer" in rank["two_optimizers"]
        assert "returned 2" in rank["two_optimizers"]
