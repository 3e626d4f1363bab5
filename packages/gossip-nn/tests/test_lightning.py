"""``gossip_nn.lightning.GossipStrategy`` against the plain gossip-nn loop.

The oracle: a LightningModule trained by ``Trainer(strategy=GossipStrategy(...))`` on two
processes ends with the same parameters as ``make_data_parallel`` and a hand-written
loop on the same shards and initial model. One torchrun launch runs every scenario (so
Lightning is imported once per process) and writes what each rank saw to JSON.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning")

from torch.distributed import HashStore

from gossip_comm.testing import run_torchrun
from gossip_nn import FaultTolerance
from gossip_nn.lightning import GossipStrategy

WORKER = textwrap.dedent(
    '''
    import json, os, shutil, sys
    from contextlib import nullcontext

    import lightning as L
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.plugins.precision import MixedPrecision

    from gossip_nn import make_data_parallel
    from gossip_nn.lightning import GossipStrategy
    from gossip_topology import CustomMixing

    STEPS, BATCH = 4, 8
    TMP = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mse = nn.functional.mse_loss
    # push-sum with unequal weights, so that the ranks' models and weights differ
    SKEWED = CustomMixing([[0.75, 0.4], [0.25, 0.6]])


    def options(algorithm):
        if algorithm == "ar":
            return {}
        return {"topology": "ring", **({"mixing": SKEWED} if algorithm == "sgp" else {})}


    INF_AT = 1  # with 16-mixed, rank 1's loss is infinite at this step: its scaler skips it


    def blown_up(loss, step):
        return loss * float("inf") if rank == 1 and step == INF_AT else loss


    def shard(accumulate):
        """This rank's own training data: STEPS * accumulate batches."""
        gen = torch.Generator().manual_seed(10 + rank)
        x = torch.randn(STEPS * accumulate * BATCH, 4, generator=gen)
        return x, x.sum(1, keepdim=True) + 0.1 * torch.randn(len(x), 1, generator=gen)


    gen = torch.Generator().manual_seed(99)  # the same validation data on every rank
    X_VAL = torch.randn(32, 4, generator=gen)
    Y_VAL = X_VAL.sum(1, keepdim=True)


    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


    def sgd(params):
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)


    def flat(module):
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


    HISTORY = {}  # plain's arguments -> [(bytes sent, push-sum weight)] after each step
    CLIP = 0.1  # clip_grad_norm_'s max_norm, with a StepLR halving the rate every step


    def plain(algorithm, accumulate, clip_and_schedule=False):
        module = net()
        optimizer = sgd(module.parameters())
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
        model = make_data_parallel(algorithm, module, optimizer, **options(algorithm))
        x, y = shard(accumulate)
        history = HISTORY[algorithm, accumulate, clip_and_schedule] = []
        for i in range(STEPS * accumulate):
            last = (i + 1) % accumulate == 0
            with nullcontext() if last else model.no_sync():
                xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
                (mse(model(xb), yb) / accumulate).backward()
            if last:
                if clip_and_schedule:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
                optimizer.step()
                optimizer.zero_grad()
                if clip_and_schedule:
                    schedule.step()
                history.append((model.bytes_sent, model.ps_weight))
        sent = model.bytes_sent
        model.close()
        return flat(module), sent


    class Regression(L.LightningModule):
        def __init__(self, optimizers=1):
            super().__init__()
            self.net, self.n_optimizers, self.seen = net(), optimizers, []
            self.blow_up = self.schedule = False
            # Lightning itself allows several optimizers only with manual optimization
            self.automatic_optimization = optimizers == 1

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            loss = mse(self(batch[0]), batch[1])
            return blown_up(loss, batch_idx) if self.blow_up else loss

        def validation_step(self, batch, batch_idx):
            self.seen.append(flat(self))
            self.log("val_loss", mse(self(batch[0]), batch[1]))
            self.log("rank_mean", float(self.global_rank), sync_dist=True)

        def predict_step(self, batch, batch_idx):
            return self(batch[0])

        def test_step(self, batch, batch_idx):
            self.log("test_loss", mse(self(batch[0]), batch[1]))

        def on_validation_start(self):  # runs before the strategy's hook
            self.before_eval = flat(self)

        def configure_optimizers(self):
            opts = [sgd(self.parameters()) for _ in range(self.n_optimizers)]
            if self.schedule:
                step_lr = torch.optim.lr_scheduler.StepLR(opts[0], 1, gamma=0.5)
                return {"optimizer": opts[0],
                        "lr_scheduler": {"scheduler": step_lr, "interval": "step"}}
            return opts[0] if self.n_optimizers == 1 else opts


    class Record(L.Callback):
        def on_train_end(self, trainer, pl_module):
            self.sent = trainer.strategy.wrapper.bytes_sent
            self.ps_weight = trainer.strategy.wrapper.ps_weight


    def trainer(strategy, record=None, **kwargs):
        return L.Trainer(
            strategy=strategy, accelerator="cpu", devices=2,
            enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, use_distributed_sampler=False,
            num_sanity_val_steps=0, callbacks=[record] if record else [],
            **({"logger": False} | kwargs),
        )


    class Memory(Logger):
        """A logger that keeps what it is sent: [(step, metrics)]."""

        def __init__(self):
            super().__init__()
            self.rows = []

        name, version = "memory", 0

        def log_metrics(self, metrics, step=None):
            self.rows.append((step, dict(metrics)))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def gossip(self):
            return [(step, m) for step, m in self.rows if any(k.startswith("gossip/") for k in m)]


    def loader(x, y):
        """Training batches of BATCH, in order."""
        return DataLoader(TensorDataset(x, y), batch_size=BATCH)


    def val_loader():
        """The validation set, one batch."""
        return DataLoader(TensorDataset(X_VAL, Y_VAL), batch_size=len(X_VAL))


    def fit(algorithm, accumulate, val=False, eval_model="average", **kwargs):
        model, record = Regression(), Record()
        t = trainer(
            GossipStrategy(algorithm, eval_model=eval_model, **options(algorithm)), record,
            max_steps=STEPS, accumulate_grad_batches=accumulate, **kwargs,
        )
        t.fit(model, loader(*shard(accumulate)), val_loader() if val else None)
        return model, record, t


    def network_average(vector, weight):
        both = [torch.empty_like(vector) for _ in range(2)]
        dist.all_gather(both, vector * weight)
        weights = [torch.empty(1, dtype=torch.float64) for _ in range(2)]
        dist.all_gather(weights, torch.tensor([weight], dtype=torch.float64))
        return sum(both) / float(sum(weights).item())


    def net_from(vector):
        module = net()
        torch.nn.utils.vector_to_parameters(vector, module.parameters())
        return module.requires_grad_(False)


    def loss_of(vector):
        module = net()
        torch.nn.utils.vector_to_parameters(vector, module.parameters())
        with torch.no_grad():
            return mse(module(X_VAL), Y_VAL).item()


    out = {}
    for algorithm, accumulate in (("sgp", 1), ("dpsgd", 1), ("sgp", 2)):
        name = f"{algorithm}-acc{accumulate}"
        expected, plain_sent = plain(algorithm, accumulate)
        if name == "sgp-acc1":
            out_fp32 = expected
        model, record, _ = fit(algorithm, accumulate)
        out[name] = {
            "max_diff": (flat(model) - expected).abs().max().item(),
            "sent": record.sent,
            "plain_sent": plain_sent,
        }

    # ranks that start from different models: the strategy starts all from rank 0's
    model, record = Regression(), Record()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(float(rank))
    t = trainer(GossipStrategy("sgp", **options("sgp")), record, max_steps=STEPS)
    t.fit(model, loader(*shard(1)))
    out["from_rank0"] = (flat(model) - out_fp32).abs().max().item()

    # all-reduce through the strategy (DDP itself) against the plain loop
    expected, plain_sent = plain("ar", 1)
    model, record, _ = fit("ar", 1)
    out["ar-acc1"] = {
        "max_diff": (flat(model) - expected).abs().max().item(),
        "sent": record.sent,
        "plain_sent": plain_sent,
    }

    # mixed precision: autocast around the forward pass, as in the plain loop; with
    # 16-mixed, a GradScaler whose skipped step (rank 1) still gossips
    def plain_amp(precision):
        module = net()
        optimizer = sgd(module.parameters())
        model = make_data_parallel("sgp", module, optimizer, **options("sgp"))
        scaler = small_scaler() if precision == "16-mixed" else None
        dtype = torch.half if precision == "16-mixed" else torch.bfloat16
        x, y = shard(1)
        for i in range(STEPS):
            xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
            with torch.autocast("cpu", dtype=dtype):
                loss = mse(model(xb), yb)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(blown_up(loss, i)).backward()
                scaler.unscale_(optimizer)
                model.scaler_step(scaler)
                scaler.update()
            optimizer.zero_grad()
        sent = model.bytes_sent
        model.close()
        return flat(module), sent, None if scaler is None else scaler.get_scale()


    def small_scaler():
        """A scaler under which no fp16 gradient overflows but rank 1's infinite loss."""
        return torch.amp.GradScaler("cpu", init_scale=256.0)


    for precision in ("bf16-mixed", "16-mixed"):
        expected, plain_sent, plain_scale = plain_amp(precision)
        model, record = Regression(), Record()
        model.blow_up = precision == "16-mixed"
        t = trainer(
            GossipStrategy("sgp", **options("sgp")), record, max_steps=STEPS,
            plugins=[MixedPrecision(precision, "cpu", small_scaler() if model.blow_up else None)],
        )
        t.fit(model, loader(*shard(1)))
        scaler = t.precision_plugin.scaler
        out[f"sgp-{precision}"] = {
            "max_diff": (flat(model) - expected).abs().max().item(),
            "sent": record.sent,
            "plain_sent": plain_sent,
            "scale": None if scaler is None else scaler.get_scale(),
            "plain_scale": plain_scale,
            "vs_fp32": (flat(model) - out_fp32).abs().max().item(),
        }

    # AD-PSGD: asynchronous, so no step-by-step oracle; its evaluation is the exact
    # average of the ranks' final models
    model, record, t = fit("adpsgd", 1)
    val = t.validate(model, val_loader(), verbose=False)[0]["val_loss"]
    out["adpsgd"] = {
        "sent": record.sent, "val": val,
        "average_loss": loss_of(network_average(flat(model), 1.0)),
        "moved": (flat(model) - flat(net())).abs().max().item(),
    }

    # gradient clipping and a per-step learning-rate schedule
    expected, _ = plain("sgp", 1, clip_and_schedule=True)
    model = Regression()
    model.schedule = True
    t = trainer(GossipStrategy("sgp", **options("sgp")), max_steps=STEPS, gradient_clip_val=CLIP)
    t.fit(model, loader(*shard(1)))
    out["sgp-clip-schedule"] = {
        "max_diff": (flat(model) - expected).abs().max().item(),
        "vs_plain": (flat(model) - out_fp32).abs().max().item(),
    }

    # validation inside fit (the wrapper's average), then validate/test after it; what
    # gossip does, logged: bytes and weights each step, the consensus at validation
    memory = Memory()
    model, record, t = fit("sgp", 1, val=True, logger=memory, log_every_n_steps=1)
    local = flat(model)
    average = network_average(local, record.ps_weight)
    at_fit = network_average(model.before_eval, record.ps_weight)
    squares = ((model.before_eval.double() - at_fit.double()) ** 2).sum()
    dist.all_reduce(squares)
    rank_mean = t.callback_metrics["rank_mean"].item()
    val = t.validate(model, val_loader(), verbose=False)[0]["val_loss"]
    test = t.test(model, val_loader(), verbose=False)[0]["test_loss"]
    predicted = torch.cat(t.predict(model, val_loader()))
    out["eval"] = {
        "fit_seen_vs_average": (model.seen[0] - at_fit).abs().max().item(),
        "restored": (flat(model) - local).abs().max().item(),
        "val": val, "test": test, "average_loss": loss_of(average),
        "rank_mean": rank_mean,
        "predict_vs_average": (predicted - net_from(average)(X_VAL)).abs().max().item(),
        "predict_vs_local": (predicted - net_from(local)(X_VAL)).abs().max().item(),
    }
    out["logged"] = {
        "rows": memory.gossip(),
        "plain": HISTORY["sgp", 1, False],
        "consensus": (squares.item() / 2) ** 0.5,
    }
    memory = Memory()
    fit("dpsgd", 1, logger=memory, log_every_n_steps=2)
    out["logged"]["every_2"] = memory.gossip()
    local_trainer = trainer(GossipStrategy("sgp", eval_model="local"))
    val = local_trainer.validate(model, val_loader(), verbose=False)[0]["val_loss"]
    out["eval"].update(local_val=val, local_loss=loss_of(local))

    # checkpoints: one epoch, save, resume for the second, against two epochs in one go
    # (which saves nothing: saving must not change the run)
    def fit_epochs(algorithm, epochs, folder=None, ckpt_path=None):
        model = Regression()
        callbacks = [] if folder is None else [
            ModelCheckpoint(dirpath=f"{TMP}/{folder}", save_last=True, save_top_k=1)]
        t = L.Trainer(
            strategy=GossipStrategy(algorithm, **options(algorithm)), accelerator="cpu",
            devices=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
            use_distributed_sampler=False, num_sanity_val_steps=0, max_epochs=epochs,
            enable_checkpointing=folder is not None, callbacks=callbacks,
        )
        t.fit(model, loader(*shard(1)), ckpt_path=ckpt_path)
        return model, t


    for algorithm in ("sgp", "osgp", "dpsgd"):
        whole, _ = fit_epochs(algorithm, 2)
        first, _ = fit_epochs(algorithm, 1, folder=f"ckpt-{algorithm}")
        resumed, t = fit_epochs(
            algorithm, 2, folder=f"ckpt-{algorithm}", ckpt_path=f"{TMP}/ckpt-{algorithm}/last.ckpt"
        )
        dist.barrier()
        out[f"resume-{algorithm}"] = {
            "max_diff": (flat(resumed) - flat(whole)).abs().max().item(),
            "moved": (flat(resumed) - flat(first)).abs().max().item(),
            "files": sorted(os.listdir(f"{TMP}/ckpt-{algorithm}")),
            "global_step": t.global_step,
        }

    # LightningModule.load_from_checkpoint(file): rank 0's model
    loaded = Regression.load_from_checkpoint(f"{TMP}/ckpt-sgp/last.ckpt")
    rank0 = torch.load(f"{TMP}/ckpt-sgp/last.ckpt", weights_only=True)["state_dict"]
    out["load_from_checkpoint"] = max(
        (p.detach() - rank0[name]).abs().max().item() for name, p in loaded.named_parameters()
    )
    rank1 = torch.load(f"{TMP}/ckpt-sgp/last.ckpt.rank1", weights_only=True)["state_dict"]
    out["differs_from_rank1"] = max(
        (p.detach() - rank1[name]).abs().max().item() for name, p in loaded.named_parameters()
    )

    # validate from a checkpoint: every rank loads its own part; the network average
    # uses the push-sum weights saved with them
    model = Regression()
    saved = torch.load(f"{TMP}/ckpt-sgp/last.ckpt" + ("" if rank == 0 else f".rank{rank}"),
                       weights_only=True)
    model.load_state_dict(saved["state_dict"])
    expected = loss_of(network_average(flat(model), saved["gossip"]["state"]["ps_weight"]))
    val = trainer(GossipStrategy("sgp")).validate(
        Regression(), val_loader(), ckpt_path=f"{TMP}/ckpt-sgp/last.ckpt", verbose=False
    )[0]["val_loss"]
    out["validate-ckpt"] = {"val": val, "expected": expected,
                            "ps_weight": saved["gossip"]["state"]["ps_weight"]}

    def refused(strategy, ckpt_path):
        try:
            fit_epochs_with(strategy, ckpt_path)
        except (ValueError, FileNotFoundError) as err:
            return f"{type(err).__name__}: {err}"
        return None


    def fit_epochs_with(strategy, ckpt_path):
        t = trainer(strategy, max_epochs=3)
        t.fit(Regression(), loader(*shard(1)), ckpt_path=ckpt_path)


    out["wrong_algorithm"] = refused(GossipStrategy("dpsgd", topology="ring"),
                                     f"{TMP}/ckpt-sgp/last.ckpt")
    if rank == 0:  # a checkpoint from three processes, and one whose part is missing
        bad = torch.load(f"{TMP}/ckpt-sgp/last.ckpt", weights_only=True)
        bad["gossip"]["world_size"] = 3
        torch.save(bad, f"{TMP}/three.ckpt")
        shutil.copy(f"{TMP}/ckpt-sgp/last.ckpt", f"{TMP}/partless.ckpt")
    dist.barrier()
    out["wrong_world_size"] = refused(GossipStrategy("sgp", **options("sgp")), f"{TMP}/three.ckpt")
    out["missing_part"] = refused(GossipStrategy("sgp", **options("sgp")), f"{TMP}/partless.ckpt")

    try:
        trainer(GossipStrategy("sgp"), max_steps=1).fit(Regression(optimizers=2), loader(*shard(1)))
        out["two_optimizers"] = None
    except ValueError as err:
        out["two_optimizers"] = str(err)
    with open(f"{TMP}/rank{rank}.json", "w") as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()
    '''
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run the worker once on two processes; each rank's JSON record."""
    tmp = tmp_path_factory.mktemp("lightning")
    (tmp / "worker.py").write_text(WORKER)
    args = ["--nproc-per-node", "2", "worker.py", str(tmp)]
    result = run_torchrun(args, tmp, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sgp-acc1", "dpsgd-acc1", "sgp-acc2", "ar-acc1"])
def test_fit_matches_the_plain_gossip_loop(results: list[dict[str, Any]], name: str) -> None:
    for rank in results:
        assert rank[name]["max_diff"] <= 1e-6, rank[name]
        assert rank[name]["sent"] == rank[name]["plain_sent"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_matches_the_plain_autocast_loop(
    results: list[dict[str, Any]], precision: str
) -> None:
    for rank in results:
        got = rank[f"sgp-{precision}"]
        assert got["max_diff"] <= 1e-6, got
        assert got["vs_fp32"] > 1e-5, got  # autocast did change the arithmetic
        assert got["sent"] == got["plain_sent"] > 0
        assert got["scale"] == got["plain_scale"]
    if precision == "16-mixed":
        # rank 1 skipped one update (its scale halved once), and still gossiped every step
        assert [rank["sgp-16-mixed"]["scale"] for rank in results] == [256.0, 128.0]
        assert results[1]["sgp-16-mixed"]["sent"] == results[0]["sgp-16-mixed"]["sent"]


@pytest.mark.slow
def test_adpsgd_through_the_strategy_evaluates_the_exact_average(
    results: list[dict[str, Any]],
) -> None:
    for rank in results:
        got = rank["adpsgd"]
        assert got["sent"] > 0 and got["moved"] > 1e-3, got
        assert got["val"] == pytest.approx(got["average_loss"], rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_every_rank_starts_from_rank_0s_model(results: list[dict[str, Any]]) -> None:
    # rank 1's parameters were shifted by 1 before fit; the run is that of equal starts
    for rank in results:
        assert rank["from_rank0"] == 0.0


@pytest.mark.slow
def test_accumulation_gossips_once_per_optimizer_step(results: list[dict[str, Any]]) -> None:
    # four optimizer steps either way; eight backward passes with accumulate_grad_batches=2
    for rank in results:
        assert rank["sgp-acc2"]["sent"] == rank["sgp-acc1"]["sent"]


@pytest.mark.slow
def test_validation_and_test_use_the_network_average(results: list[dict[str, Any]]) -> None:
    for rank in results:
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
    assert results[0]["eval"]["local_val"] != results[1]["eval"]["local_val"]


@pytest.mark.slow
def test_clipping_and_a_schedule_match_the_plain_loop(results: list[dict[str, Any]]) -> None:
    for rank in results:
        got = rank["sgp-clip-schedule"]
        assert got["max_diff"] <= 1e-6, got
        assert got["vs_plain"] > 1e-3, got  # clipping and the schedule did change the run


@pytest.mark.slow
def test_what_gossip_does_reaches_the_loggers(results: list[dict[str, Any]]) -> None:
    logged = results[0]["logged"]  # global rank 0 logs
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
    assert results[1]["logged"]["rows"] == []  # rank 1 logs nothing


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["sgp", "osgp", "dpsgd"])
def test_resuming_from_a_checkpoint_continues_exactly(
    results: list[dict[str, Any]], algorithm: str
) -> None:
    # one epoch, saved (OSGP with rounds in flight), then the second from last.ckpt:
    # the same parameters as two epochs in one go (which saved nothing)
    for rank in results:
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
def test_load_from_checkpoint_gives_rank_0s_model(results: list[dict[str, Any]]) -> None:
    for rank in results:
        assert rank["load_from_checkpoint"] == 0.0
        assert rank["differs_from_rank1"] > 1e-4  # the ranks' models differ


@pytest.mark.slow
def test_validate_from_a_checkpoint_averages_every_ranks_part(
    results: list[dict[str, Any]],
) -> None:
    for rank in results:
        got = rank["validate-ckpt"]
        assert got["val"] == pytest.approx(got["expected"], rel=1e-5, abs=1e-7)
    # with skewed mixing the two parts hold different push-sum weights
    weights = [rank["validate-ckpt"]["ps_weight"] for rank in results]
    assert weights[0] != weights[1]


@pytest.mark.slow
def test_checkpoints_that_do_not_fit_are_refused(results: list[dict[str, Any]]) -> None:
    for rank in results:
        assert rank["wrong_algorithm"].startswith("ValueError: checkpoint"), rank
        assert "is from algorithm 'sgp', this strategy runs 'dpsgd'" in rank["wrong_algorithm"]
        assert "holds the states of 3 processes" in rank["wrong_world_size"]
        assert "this run has 2" in rank["wrong_world_size"]
        # rank 1's part is missing: every rank stops, naming it (none waits for it)
        assert rank["missing_part"].startswith("FileNotFoundError: rank 1's part of"), rank
        assert "partless.ckpt is missing: " in rank["missing_part"]
        assert rank["missing_part"].count(".rank1") == 1


@pytest.mark.slow
def test_two_optimizers_are_refused(results: list[dict[str, Any]]) -> None:
    for rank in results:
        assert rank["two_optimizers"] is not None
        assert "exactly one optimizer" in rank["two_optimizers"]
        assert "returned 2" in rank["two_optimizers"]


def test_bad_arguments_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="algorithm must be one of"):
        GossipStrategy("gossip")
    with pytest.raises(TypeError):
        GossipStrategy("sgp", topolgy="ring")
    with pytest.raises(ValueError, match="eval_model must be one of average, local"):
        GossipStrategy("sgp", eval_model="mean")
    with pytest.raises(ValueError, match="ddp_options applies only to algorithm 'ar'"):
        GossipStrategy("sgp", ddp_options={"static_graph": True})
    with pytest.raises(ValueError, match="fault_tolerance is not supported by GossipStrategy"):
        GossipStrategy("sgp", fault_tolerance=FaultTolerance(HashStore(), world_size=2))
    with pytest.raises(TypeError, match="log_gossip must be a bool; got 'yes'"):
        GossipStrategy("sgp", log_gossip="yes")
    strategy = GossipStrategy("OSGP", topology="ring")
    assert (strategy.algorithm, strategy.eval_model, strategy.wrapper) == ("osgp", "average", None)


LAUNCHED = textwrap.dedent(
    """
    import lightning as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from gossip_nn.lightning import GossipStrategy


    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    x = torch.randn(64, 4)
    trainer = L.Trainer(
        strategy=GossipStrategy("osgp", topology="ring"), accelerator="cpu", devices=2,
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
    environment = type(trainer.strategy.cluster_environment).__name__
    print(f"rank {trainer.global_rank} trained {trainer.global_step} steps in {environment}")
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_under_slurm_each_task_is_one_process(tmp_path: Path) -> None:
    # what srun gives each of 2 tasks on one node: Lightning's SLURM environment takes
    # the ranks from it and starts no processes itself
    (tmp_path / "train.py").write_text(LAUNCHED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK"))}
    env |= {
        "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train",
        "MASTER_PORT": str(_free_port()),
    }  # fmt: skip
    tasks = []
    for rank in (0, 1):
        task_env = env | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        task = subprocess.Popen([sys.executable, "train.py"], cwd=tmp_path, env=task_env, **pipes)
        tasks.append(task)
    for rank, task in enumerate(tasks):
        stdout, stderr = task.communicate(timeout=180)
        assert task.returncode == 0, stderr[-4000:]
        # one line each: the task trained as its own rank, and only it
        assert stdout.splitlines()[-1:] == [f"rank {rank} trained 3 steps in SLURMEnvironment"]


@pytest.mark.slow
def test_lightnings_own_launcher_runs_two_processes(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(LAUNCHED)
    result = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} trained 3 steps in LightningEnvironment" in result.stdout


def test_import_gossip_nn_does_not_need_lightning() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["lightning"] = None  # any import of lightning now fails
        import gossip_nn
        loaded = [m for m, v in sys.modules.items() if v is not None]
        assert not [m for m in loaded if m.split(".")[0] in ("lightning", "pytorch_lightning")]
        try:
            import gossip_nn.lightning
        except ImportError:
            print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
