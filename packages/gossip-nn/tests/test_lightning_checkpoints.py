"""``GossipStrategy``: checkpoints hold every rank's part; resuming continues exactly.

The oracle: a LightningModule trained by ``Trainer(strategy=GossipStrategy(...))`` on two
processes ends with the same parameters as ``make_data_parallel`` and a hand-written
loop on the same shards and initial model. The scenarios run once, in
``lightning_worker.py`` (the ``lightning_results`` fixture of ``conftest.py``).
"""

from typing import Any

import pytest

pytest.importorskip("lightning")


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["sgp", "osgp", "dpsgd"])
def test_resuming_from_a_checkpoint_continues_exactly(
    lightning_results: list[dict[str, Any]], algorithm: str
) -> None:
    # one epoch, saved (OSGP with rounds in flight), then the second from last.ckpt:
    # the same parameters as two epochs in one go (which saved nothing)
    for rank in lightning_results:
        got = rank[f"resume-{algorithm}"]
        assert got["max_diff"] <= 1e-6, got
        assert got["moved"] > 1e-3, got  # the second epoch did train
        assert got["global_step"] == 8
        # save_top_k=1 removed epoch 0's file and rank 1's part of it
        assert got["files"] == [
            "epoch=1-step=8.ckpt",
            "epoch=1-step=8.ckpt.rank1",
            "last.ckpt",
            "last.ckpt.rank1",
        ]


@pytest.mark.slow
def test_load_from_checkpoint_gives_rank_0s_model(lightning_results: list[dict[str, Any]]) -> None:
    for rank in lightning_results:
        assert rank["load_from_checkpoint"] == 0.0
        assert rank["differs_from_rank1"] > 1e-4  # the ranks' models differ


@pytest.mark.slow
def test_validate_from_a_checkpoint_averages_every_ranks_part(
    lightning_results: list[dict[str, Any]],
) -> None:
    for rank in lightning_results:
        got = rank["validate-ckpt"]
        assert got["val"] == pytest.approx(got["expected"], rel=1e-5, abs=1e-7)
    # with skewed mixing the two parts hold different push-sum weights
    weights = [rank["validate-ckpt"]["ps_weight"] for rank in lightning_results]
    assert weights[0] != weights[1]


@pytest.mark.slow
def test_checkpoints_that_do_not_fit_are_refused(lightning_results: list[dict[str, Any]]) -> None:
    for rank in lightning_results:
        assert rank["wrong_algorithm"].startswith("ValueError: checkpoint"), rank
        assert "is from algorithm 'sgp', this strategy runs 'dpsgd'" in rank["wrong_algorithm"]
        assert "holds the states of 3 processes" in rank["wrong_world_size"]
        assert "this run has 2" in rank["wrong_world_size"]
        # rank 1's part is missing: every rank stops, naming it (none waits for it)
        assert rank["missing_part"].startswith("FileNotFoundError: rank 1's part of"), rank
        assert "partless.ckpt is missing: " in rank["missing_part"]
        assert rank["missing_part"].count(".rank1") == 1
