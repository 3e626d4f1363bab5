"""``GossipStrategy``: its arguments, the launchers it runs under (Lightning's own, SLURM's
environment) and ``import gossip_nn`` without Lightning.
"""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lightning")

from torch.distributed import HashStore

from gossip_nn import FaultTolerance
from gossip_nn.lightning import GossipStrategy


def test_bad_arguments_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="algorithm must be one of"):
        GossipStrategy("gossip")
    with pytest.raises(TypeError):
        GossipStrategy("sgp", topolgy="ring")
    with pytest.raises(ValueError, match="eval_model must be one of average, local"):
        GossipStrategy("sgp", eval_model="mean")
    with pytest.raises(ValueError, match="ddp_options applies only to algorithm 'ar'"):
        GossipStrategy("sgp", ddp_options={"static_graph": True})
    not_started = FaultTolerance(HashStore(), world_size=2)
    with pytest.raises(ValueError, match=r"fault_tolerance must be started .* call fault_tol"):
        GossipStrategy("sgp", fault_tolerance=not_started)
    with pytest.raises(TypeError, match="fault_tolerance must be a FaultTolerance"):
        GossipStrategy("sgp", fault_tolerance="yes")
    with pytest.raises(TypeError, match="log_gossip must be a bool; got 'yes'"):
        GossipStrategy("sgp", log_gossip="yes")
    strategy = GossipStrategy("OSGP", topology="ring")
    assert (strategy.algorithm, strategy.eval_model, strategy.wrapper) == ("osgp", "average", None)


LAUNCHED = textwrap.dedent(
    """
    import lightning as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from gossip_nn.lightning import GossipStrategy


    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    x = torch.randn(64, 4)
    trainer = pl.Trainer(
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
