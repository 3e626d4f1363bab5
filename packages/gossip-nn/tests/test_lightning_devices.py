"""``GossipStrategy`` on a CPU and on a CUDA model, launched as Lightning's multi-node
jobs are (one process per node, ``NODE_RANK``), against the plain gossip-nn loop.

Both processes may share one GPU: the process group is gloo (CUDA tensors are staged
through host memory by gossip and by gloo's collectives), so a one-GPU machine runs the
CUDA case. It is skipped without a GPU.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

pytest.importorskip("lightning")

import torch
from torch import nn

from gossip_comm.testing import run_distributed

STEPS, BATCH = 4, 8


def _net(device: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(device)


def _shard(rank: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(STEPS * BATCH, 4, generator=g)
    return x.to(device), x.sum(1, keepdim=True).to(device)


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).cpu() for p in module.parameters()])


def _fit(index: int, n: int, port: int, device: str) -> dict[str, Any]:
    import lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from gossip_nn import make_data_parallel
    from gossip_nn.lightning import GossipStrategy

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(n),
        NODE_RANK=str(index),
        LOCAL_RANK="0",
    )

    class Regression(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net("cpu")

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    x, y = _shard(index, "cpu")
    module = Regression()
    trainer = pl.Trainer(
        strategy=GossipStrategy("sgp", topology="ring", process_group_backend="gloo"),
        accelerator="cuda" if device == "cuda" else "cpu",
        devices=[0] if device == "cuda" else 1,  # both processes may share one GPU
        num_nodes=n,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=BATCH))
    on = next(module.parameters()).device.type

    # the oracle: the plain loop on the same device, shard and initial model
    net = _net(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    model = make_data_parallel("sgp", net, optimizer, topology="ring")
    xd, yd = _shard(index, device)
    for i in range(STEPS):
        batch = slice(i * BATCH, (i + 1) * BATCH)
        nn.functional.mse_loss(model(xd[batch]), yd[batch]).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.close()
    return {
        "device": on,
        "rank": trainer.global_rank,
        "max_diff": (_flat(module) - _flat(net)).abs().max().item(),
        "moved": (_flat(module) - _flat(_net("cpu"))).abs().max().item(),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
            ],
        ),
    ],
)
def test_one_process_per_node_matches_the_plain_loop(device: str) -> None:
    results = run_distributed(_fit, 2, (_free_port(), device), init_timeout=None, timeout=240)
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert r["device"] == device
        assert r["moved"] > 1e-3, r  # it did train
        # float32 on both sides; CUDA and CPU kernels may round differently
        assert r["max_diff"] <= (1e-6 if device == "cpu" else 1e-5), r
