"""The Lightning scenarios, run once by ``torchrun --nproc-per-node 2`` (the
``lightning_results`` fixture): each rank trains through ``GossipStrategy`` and through
the plain gossip-nn loop, and writes what it saw to ``<argv[1]>/rank<r>.json`` for the
``test_lightning_*`` modules. Not a test module itself.
"""

import json
import os
import shutil
import sys
from contextlib import nullcontext

import lightning as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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
            xb, yb = x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]
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


class Regression(pl.LightningModule):
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
            return {
                "optimizer": opts[0],
                "lr_scheduler": {"scheduler": step_lr, "interval": "step"},
            }
        return opts[0] if self.n_optimizers == 1 else opts


class Record(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        self.sent = trainer.strategy.wrapper.bytes_sent
        self.ps_weight = trainer.strategy.wrapper.ps_weight


def trainer(strategy, record=None, **kwargs):
    return pl.Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        callbacks=[record] if record else [],
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
        GossipStrategy(algorithm, eval_model=eval_model, **options(algorithm)),
        record,
        max_steps=STEPS,
        accumulate_grad_batches=accumulate,
        **kwargs,
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
        xb, yb = x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]
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
        GossipStrategy("sgp", **options("sgp")),
        record,
        max_steps=STEPS,
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
    "sent": record.sent,
    "val": val,
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
    "val": val,
    "test": test,
    "average_loss": loss_of(average),
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
    callbacks = (
        []
        if folder is None
        else [ModelCheckpoint(dirpath=f"{TMP}/{folder}", save_last=True, save_top_k=1)]
    )
    t = pl.Trainer(
        strategy=GossipStrategy(algorithm, **options(algorithm)),
        accelerator="cpu",
        devices=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        max_epochs=epochs,
        enable_checkpointing=folder is not None,
        callbacks=callbacks,
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
saved = torch.load(
    f"{TMP}/ckpt-sgp/last.ckpt" + ("" if rank == 0 else f".rank{rank}"), weights_only=True
)
model.load_state_dict(saved["state_dict"])
expected = loss_of(network_average(flat(model), saved["gossip"]["state"]["ps_weight"]))
val = trainer(GossipStrategy("sgp")).validate(
    Regression(), val_loader(), ckpt_path=f"{TMP}/ckpt-sgp/last.ckpt", verbose=False
)[0]["val_loss"]
out["validate-ckpt"] = {
    "val": val,
    "expected": expected,
    "ps_weight": saved["gossip"]["state"]["ps_weight"],
}


def refused(strategy, ckpt_path):
    try:
        fit_epochs_with(strategy, ckpt_path)
    except (ValueError, FileNotFoundError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def fit_epochs_with(strategy, ckpt_path):
    t = trainer(strategy, max_epochs=3)
    t.fit(Regression(), loader(*shard(1)), ckpt_path=ckpt_path)


out["wrong_algorithm"] = refused(
    GossipStrategy("dpsgd", topology="ring"), f"{TMP}/ckpt-sgp/last.ckpt"
)
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
