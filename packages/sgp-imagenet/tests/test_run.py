"""The training run's steps, one at a time, in this process (a one-rank gloo group).

The end-to-end behaviour (several ranks, torchrun, preemption by a real signal) is in
``test_cli.py`` and ``test_preemption.py``; here each of ``restore``, ``train_epoch``,
``validate``, ``save`` and ``check_preemption`` is called alone and checked against a
single-process reference.
"""

from __future__ import annotations

import argparse
import copy
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from sgp_imagenet.checkpoint import Resume, checkpoint_path, choose_resume
from sgp_imagenet.cli import build_parser
from sgp_imagenet.data import build_datasets
from sgp_imagenet.evaluate import evaluate_shard, kept_buffers, validate
from sgp_imagenet.preempt import Preemption
from sgp_imagenet.run import SIGNAL_HOOK, Position, Preempted, TrainingRun, injected_signal
from sgp_imagenet.schedule import large_batch_warning, scaling_line


@pytest.fixture
def one_rank(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    argv = ["train", "--dataset", "digits", "--arch", "small-cnn", "--algorithm", "ar",
            "--batch-size", "32", "--workers", "0", "--epochs", "2", "--lr", "0.4",
            "--warmup-epochs", "0", "--lr-schedule", "1:0.1", "--max-iters-per-epoch", "4",
            "--progress", "off", "--no-tensorboard", "--log-dir", str(tmp_path / "logs"),
            "--checkpoint-dir", str(tmp_path / "ckpt"), *extra]  # fmt: skip
    args = build_parser().parse_args(argv)
    args.dataset = "digits"
    return args


def _run(args: argparse.Namespace, preempt: Preemption) -> TrainingRun:
    bundle = build_datasets(args.dataset, None, image_size=args.image_size, seed=args.seed)
    cpu = torch.device("cpu")
    return TrainingRun(args, bundle, device=cpu, comm_device=cpu, preempt=preempt)


def _params(run: TrainingRun) -> list[torch.Tensor]:
    return [p.detach().clone() for p in run.model.parameters()]


def test_position_round_trips_and_the_signal_hook_parses() -> None:
    pos = Position(epoch=3, itr=7, global_itr=40)
    again = Position()
    again.load_state_dict(pos.state_dict())
    assert again == pos
    assert injected_signal("1:5:SIGTERM") == (1, 5, signal.SIGTERM)
    assert injected_signal(None) is None
    with pytest.raises(ValueError, match=SIGNAL_HOOK):
        injected_signal("1-5-SIGTERM")


def test_train_epoch_runs_the_rest_of_the_epoch_as_plain_sgd(
    one_rank: None, tmp_path: Path
) -> None:
    args = _args(tmp_path, "--momentum", "0", "--weight-decay", "0", "--no-nesterov")
    with Preemption() as preempt, _run(args, preempt) as run:
        reference = copy.deepcopy(run.model)  # the same start, trained by hand below
        run.position.itr = 1  # as if resumed after the epoch's first iteration
        run.sampler.set_epoch(0)
        batches = [b for _, b in zip(range(4), run.train_loader, strict=False)]
        run.train_epoch()
        assert run.position == Position(epoch=0, itr=4, global_itr=3)
        assert run.log.meters["loss"].count == 3
        optimizer = torch.optim.SGD(reference.parameters(), lr=args.lr)
        criterion = torch.nn.CrossEntropyLoss()
        for i, (x, y) in enumerate(batches[1:], start=1):
            for group in optimizer.param_groups:
                group["lr"] = run.lr.lr_at(0, i / run.per_epoch)
            criterion(reference(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        for mine, theirs in zip(run.model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_validate_matches_a_plain_evaluation_and_leaves_the_buffers(
    one_rank: None, tmp_path: Path
) -> None:
    args = _args(tmp_path, "--precise-bn", "3")
    with Preemption() as preempt, _run(args, preempt) as run:
        run.train_epoch()
        buffers = [b.clone() for b in run.model.buffers()]
        row = run.validate()
        for before, after in zip(buffers, run.model.buffers(), strict=True):
            assert torch.equal(before, after)  # evaluation never changes training's state
        # the reference: the same statistics re-estimated by hand, then a plain evaluation
        with kept_buffers(run.model):
            from sgp_imagenet.precise_bn import recompute_bn_stats

            recompute_bn_stats(run.model, run.stats_batches(), num_batches=3)
            run.model.eval()
            sums = evaluate_shard(run.model, run.val_loader, torch.device("cpu"))
        assert row["average_top1"] == pytest.approx(100.0 * float(sums[1] / sums[3]), abs=1e-9)
        assert row["own_top1"] == row["average_top1"]  # one rank: its model is the average
        plain = validate(
            run.dp, run.val_loader, device=torch.device("cpu"), comm_device=torch.device("cpu")
        )
        run.model.eval()
        raw = evaluate_shard(run.model, run.val_loader, torch.device("cpu"))
        assert plain["average_top1"] == pytest.approx(100.0 * float(raw[1] / raw[3]), abs=1e-9)


def test_save_then_restore_gives_the_same_state_and_position(
    one_rank: None, tmp_path: Path
) -> None:
    args = _args(tmp_path, "--checkpoint-all")
    with Preemption() as preempt:
        with _run(args, preempt) as run:
            run.train_epoch()
            run.save()
            saved, position = _params(run), copy.copy(run.position)
            momentum = [s["momentum_buffer"].clone() for s in run.optimizer.state.values()]
        with _run(args, preempt) as again:
            assert not all(torch.equal(a, b) for a, b in zip(_params(again), saved, strict=True))
            resume = choose_resume("auto", args.checkpoint_dir, 0)
            assert isinstance(resume, Resume) and resume.state["kind"] == "rank"
            again.restore(resume)
            assert again.position == position
            for a, b in zip(_params(again), saved, strict=True):
                assert torch.equal(a, b)
            restored = [s["momentum_buffer"] for s in again.optimizer.state.values()]
            for a, b in zip(restored, momentum, strict=True):
                assert torch.equal(a, b)


def test_a_preemption_signal_checkpoints_and_stops(one_rank: None, tmp_path: Path) -> None:
    args = _args(tmp_path)
    with Preemption() as preempt, _run(args, preempt) as run:
        run.check_preemption()  # no signal: nothing happens
        assert not checkpoint_path(args.checkpoint_dir, 0).exists()
        signal.raise_signal(signal.SIGUSR1)
        with pytest.raises(Preempted):
            run.check_preemption()
        state = torch.load(checkpoint_path(args.checkpoint_dir, 0), weights_only=False)
        assert state["kind"] == "rank" and state["progress"] == run.position.state_dict()


def test_close_is_idempotent_and_closes_the_logs(one_rank: None, tmp_path: Path) -> None:
    args = _args(tmp_path)
    with Preemption() as preempt:
        run = _run(args, preempt)
        run.close()
        run.close()
        assert run.log.csv is None


def test_the_average_checkpoint_holds_precise_statistics(one_rank: None, tmp_path: Path) -> None:
    from sgp_imagenet.precise_bn import recompute_bn_stats

    args = _args(tmp_path, "--precise-bn", "2")
    with Preemption() as preempt, _run(args, preempt) as run:
        run.train_epoch()
        buffers = [b.clone() for b in run.model.buffers()]
        run.save()
        state = torch.load(checkpoint_path(args.checkpoint_dir, None), weights_only=False)
        for before, after in zip(buffers, run.model.buffers(), strict=True):
            assert torch.equal(before, after)  # training goes on with its own statistics
        with kept_buffers(run.model):
            recompute_bn_stats(run.model, run.stats_batches(), num_batches=2)
            expected = {k: v.clone() for k, v in run.model.state_dict().items()}
        assert state["kind"] == "average"
        means = [k for k in expected if k.endswith("running_mean")]
        assert means
        for key in means + [k.replace("mean", "var") for k in means]:
            torch.testing.assert_close(state["model"][key], expected[key], rtol=0, atol=0)
            assert not torch.equal(state["model"][key], dict(run.model.named_buffers())[key])


def test_rank_0_prints_the_batch_and_the_rate_the_schedule_uses(
    one_rank: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(tmp_path)  # 32 images on 1 rank, --lr 0.4 per 256 images
    with Preemption() as preempt, _run(args, preempt) as run:
        out, err = capsys.readouterr()
        line = scaling_line(run.lr, batch_size=32, world_size=1)
        assert line in out.splitlines()
        assert "x 32/256 = 0.05 from the first step" in line
        assert run.lr.lr_at(0) == pytest.approx(0.4 * 32 / 256)
        assert "warning" not in err


def test_a_global_batch_above_the_limit_is_warned_about(
    one_rank: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(tmp_path, "--batch-size", "8200")  # (the last one given wins)
    with Preemption() as preempt, _run(args, preempt) as run:
        out, err = capsys.readouterr()
        warning = large_batch_warning(run.lr, batch_size=8200, world_size=1)
        assert warning is not None and warning in err.splitlines()
        assert scaling_line(run.lr, batch_size=8200, world_size=1) in out.splitlines()
