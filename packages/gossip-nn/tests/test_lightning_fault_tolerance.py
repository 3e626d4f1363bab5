"""``GossipStrategy(fault_tolerance=...)``: a Lightning fit survives a SIGKILLed rank.

Four processes, each launched on its own (no Lightning launcher) with a store served by
the test process, train one LightningModule with SGP; one member kills itself before its
optimizer step ``KILL_AT``. The survivors must finish every step, with Lightning's ranks
and world size those of the new generation, exactly the push-sum weights that
gossip-topology's numpy model of the recorded events gives, the gossip mass kept by the
rest of the fit, a checkpoint written by the new generation's ranks, the membership in
the loggers of the new rank 0, and a validation on the survivors' exact average.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lightning")

import torch
import torch.distributed as dist
from torch import nn

from ft_helpers import HOST
from gossip_comm.testing import run_distributed
from gossip_nn import FaultTolerance
from gossip_topology import Generation, RankRecord, simulate_generation, topology_at

pytestmark = pytest.mark.faults

N, STEPS, KILL_AT, BATCH, EVERY = 4, 10, 4, 8, 2
GRAPH = "ring"


def _fit(index: int, n: int, port: int, victim: int, sync_dist: bool, tmp: str) -> Any:
    import lightning as pl
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import Logger
    from lightning_utilities.core.rank_zero import rank_zero_only
    from torch.utils.data import DataLoader, TensorDataset

    from gossip_nn.lightning import GossipStrategy, rank_checkpoint_path

    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))
    ft = FaultTolerance(store, world_size=n)
    ft.start(timeout=60)
    member = ft.membership.member

    class Recording(Logger):  # like Lightning's loggers: writes on global rank 0 only
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[tuple[int, dict[str, float]]] = []

        @property
        def name(self) -> str:
            return "recording"

        @property
        def version(self) -> int:
            return 0

        @rank_zero_only
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            self.rows.append((int(step or 0), dict(metrics)))

        def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
            return None

    class Regression(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
            self.seen: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = nn.functional.mse_loss(self(batch[0]), batch[1])
            self.log("train_loss", loss, sync_dist=sync_dist)  # a Lightning collective
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.seen.append(torch.cat([p.detach().reshape(-1) for p in self.parameters()]))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Ends(Callback):
        weight, shard = 0.0, (0, 0)

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, i: int) -> None:
            if member == victim and i == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_train_end(self, trainer: Any, module: Any) -> None:
            self.weight = trainer.strategy.wrapper.ps_weight
            sampler = trainer.train_dataloader.sampler
            self.shard = (sampler.num_replicas, sampler.rank)

    g = torch.Generator().manual_seed(5)
    x = torch.randn(N * STEPS * BATCH, 4, generator=g)
    data = TensorDataset(x, x.sum(1, keepdim=True))
    logger, ends = Recording(), Ends()
    checkpoints = ModelCheckpoint(dirpath=tmp, every_n_train_steps=EVERY, save_top_k=-1)
    strategy = GossipStrategy("sgp", topology=GRAPH, timeout=3.0, fault_tolerance=ft)
    trainer = pl.Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[checkpoints, ends],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = Regression()
    trainer.fit(module, DataLoader(data, batch_size=BATCH))
    own = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    trainer.validate(module, DataLoader(data, batch_size=len(data)), verbose=False)
    final = Path(tmp) / f"epoch=0-step={STEPS}.ckpt"
    part = final if trainer.global_rank == 0 else rank_checkpoint_path(final, trainer.global_rank)
    saved = torch.load(part, weights_only=False)["gossip"]
    change = ft.history[0]
    return {
        "member": member,
        "global_step": trainer.global_step,
        "global_rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "generation": ft.generation,
        "reason": change.reason,
        "record": change.record,
        "settled_weight": change.weight,
        "weight": ends.weight,
        "own": own.tolist(),
        "seen": module.seen[-1].tolist(),
        "logged": logger.rows,
        "saved": (saved["rank"], saved["world_size"]),
        "shard": ends.shard,
    }


@pytest.mark.parametrize(
    ("victim", "sync_dist"),
    [(0, True), (2, False)],
    # with log(sync_dist=True) the survivors see the loss in Lightning's reduction of
    # the loss, before the step; without it, in the gossip of the optimizer step
    ids=["rank-0-lost-in-a-lightning-collective", "rank-2-lost-in-gossip"],
)
def test_a_fit_survives_a_lost_rank(
    store_port: int, tmp_path: Path, victim: int, sync_dist: bool
) -> None:
    results = run_distributed(
        _fit,
        N,
        (store_port, victim, sync_dist, str(tmp_path)),
        init_timeout=None,
        timeout=180,
        allowed_exits=list(range(N)),
    )
    alive = tuple(m for m in range(N) if m != victim)
    survivors = sorted((r for r in results if r is not None), key=lambda r: r["member"])
    assert tuple(r["member"] for r in survivors) == alive
    for r in survivors:
        # every step done, in the new generation, with Lightning's ranks following it
        assert r["global_step"] == STEPS
        assert r["generation"] == Generation(1, alive)
        assert (r["global_rank"], r["world_size"]) == (alive.index(r["member"]), len(alive))
        assert r["saved"] == (r["global_rank"], len(alive))  # the last checkpoint's part
        assert r["shard"] == (N, r["member"])  # its share of the data, as the fit began
        assert ("a collective failed" in r["reason"]) == sync_dist, r["reason"]

    # the weights settled with are the numpy model's, exactly; the rest of the fit keeps
    # the survivors' total
    by_member = {r["member"]: r["record"] for r in survivors}
    records = [
        by_member[m] if m in alive else RankRecord(completed=KILL_AT, alive=False) for m in range(N)
    ]
    model = simulate_generation(topology_at(GRAPH, N), np.zeros(N), records)
    for r in survivors:
        assert r["settled_weight"] == pytest.approx(model.weights[r["member"]], abs=1e-12)
    settled = sum(r["settled_weight"] for r in survivors)
    assert settled + model.lost_weight == pytest.approx(N, abs=1e-12)
    assert sum(r["weight"] for r in survivors) == pytest.approx(settled, abs=1e-9)

    # validation after the fit evaluates the survivors' push-sum average
    weights = np.array([r["weight"] for r in survivors])
    own = np.array([r["own"] for r in survivors], dtype=np.float64)
    average = weights @ own / weights.sum()
    for r in survivors:
        np.testing.assert_allclose(r["seen"], average, rtol=0, atol=1e-5)
    assert np.abs(own[0] - own[1]).max() > 1e-4  # the ranks differ: the average is real

    # the new rank 0 logs the change and then, with each step, the new membership
    [first] = [r for r in survivors if r["global_rank"] == 0]
    membership = [(s, m) for s, m in first["logged"] if "gossip/members" in m]
    assert membership, first["logged"]
    after = [m for s, m in membership if m["gossip/generation"] == 1]
    assert after and all(m["gossip/members"] == N - 1 and m["gossip/lost"] == 1 for m in after)
    assert membership[-1][0] == STEPS - 1 and membership[-1][1]["gossip/members"] == N - 1
    before = [m for s, m in membership if m["gossip/generation"] == 0]
    if victim == 0:  # the logging rank was lost: its successor logs from the change on
        assert not before
    else:
        assert before and all(m["gossip/members"] == N for m in before)
