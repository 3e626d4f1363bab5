"""``GossipStrategy``: validation, test and prediction on the network average, and what
gossip does in the trainer's loggers.

The oracle: a LightningModule trained by ``Trainer(strategy=GossipStrategy(...))`` on two
processes ends with the same parameters as ``make_data_parallel`` and a hand-written
loop on the same shards and initial model. The scenarios run once, in
``lightning_worker.py`` (the ``lightning_results`` fixture of ``conftest.py``).
"""

from typing import Any

import pytest

pytest.importorskip("lightning")


@pytest.mark.slow
def test_validation_and_test_use_the_network_average(
    lightning_results: list[dict[str, Any]],
) -> None:
    for rank in lightning_results:
        ev = rank["eval"]
        assert ev["fit_seen_vs_average"] <= 1e-6  # validation inside fit
        assert ev["restored"] == 0.0  # each rank has its own model back
        assert ev["val"] == pytest.approx(ev["average_loss"], rel=1e-5, abs=1e-7)
        assert ev["test"] == pytest.approx(ev["average_loss"], rel=1e-5, abs=1e-7)
        assert ev["local_val"] == pytest.approx(ev["local_loss"], rel=1e-5, abs=1e-7)
        assert ev["rank_mean"] == 0.5  # log(..., sync_dist=True): the mean of 0 and 1
        assert ev["predict_vs_average"] <= 1e-6  # predict: the average model too
        assert ev["predict_vs_local"] > 1e-4
    # the ranks' own models differ, so "local" is not the average
    assert lightning_results[0]["eval"]["local_val"] != lightning_results[1]["eval"]["local_val"]


@pytest.mark.slow
def test_what_gossip_does_reaches_the_loggers(lightning_results: list[dict[str, Any]]) -> None:
    logged = lightning_results[0]["logged"]  # global rank 0 logs
    steps = [row for row in logged["rows"] if "gossip/bytes_sent" in row[1]]
    # every step (log_every_n_steps=1): rank 0's bytes so far and push-sum weight, as
    # the plain loop's counters after each step
    assert [step for step, _ in steps] == [0, 1, 2, 3]
    for (_, metrics), (sent, weight) in zip(steps, logged["plain"], strict=True):
        assert metrics["gossip/bytes_sent"] == sent
        assert metrics["gossip/ps_weight"] == pytest.approx(weight, rel=1e-12)
    # the ranks' RMS distance from their average, at the validation that ends the fit,
    # then at validate, test and predict after it (the same models)
    consensus = [row for row in logged["rows"] if "gossip/consensus_distance" in row[1]]
    assert [step for step, _ in consensus] == [4, 4, 4, 4]
    for _, metrics in consensus:
        assert metrics["gossip/consensus_distance"] == pytest.approx(logged["consensus"], rel=1e-6)
    assert logged["consensus"] > 1e-4
    # log_every_n_steps=2, D-PSGD (no push-sum weight): steps 1 and 3 only
    assert [(step, sorted(m)) for step, m in logged["every_2"]] == [
        (1, ["gossip/bytes_sent"]),
        (3, ["gossip/bytes_sent"]),
    ]
    assert lightning_results[1]["logged"]["rows"] == []  # rank 1 logs nothing
