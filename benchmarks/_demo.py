"""The demo's training command, shared by ``nox -s demo`` and ``bench_demo.py``.

Standard library only: the noxfile imports it with nox's own interpreter. Change the
settings here, and both follow. ``bench_demo.py``'s sweep (``results/demo_sweep.*``)
chose them: with precise BatchNorm every setting swept is stable; of those that also put
every algorithm within a point of AR-SGD, these (the larger rate, OSGP with staleness
bound 0, 10 epochs) end highest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEMO", "DemoSettings", "train_command"]


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """What the demo trains with, beside the algorithm.

    Attributes:
        ranks: Local processes (torchrun ``--nproc-per-node``).
        epochs: Epochs per algorithm.
        batch: Images per rank and iteration.
        lr: ``--lr``, the rate for 256 images (scaled to the global batch).
        warmup_epochs: Linear warm-up (none: it applies only above a global batch of
            256, and the demo's is 64).
        decay: ``--lr-schedule``.
        osgp_synch_freq: OSGP's staleness bound.
        precise_bn: ``--precise-bn``: batches of training images that re-estimate the
            BatchNorm statistics of each model evaluated (0: the running statistics).
    """

    ranks: int = 4
    epochs: int = 10
    batch: int = 16
    lr: float = 0.8
    warmup_epochs: float = 0.0
    decay: str = "8:0.1"
    osgp_synch_freq: int = 0
    precise_bn: int = 20


#: The settings ``nox -s demo`` runs.
DEMO = DemoSettings()


def train_command(
    python: str,
    script: str,
    algorithm: str,
    run_dir: Path,
    settings: DemoSettings = DEMO,
    extra: Sequence[str] = (),
) -> list[str]:
    """The torchrun command line that trains ``algorithm`` on digits into ``run_dir``."""
    synch = ["--synch-freq", str(settings.osgp_synch_freq)] if algorithm == "osgp" else []
    return [
        python, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(settings.ranks), "--no-python", script, "train",
        "--algorithm", algorithm, "--dataset", "digits", "--arch", "small-cnn",
        "--epochs", str(settings.epochs), "--batch-size", str(settings.batch),
        "--lr", f"{settings.lr:g}", "--warmup-epochs", f"{settings.warmup_epochs:g}",
        "--lr-schedule", settings.decay, "--precise-bn", str(settings.precise_bn),
        "--workers", "0", "--print-freq", "20",
        "--log-dir", str(run_dir), "--checkpoint-dir", str(run_dir / "checkpoints"),
        *synch, *extra,
    ]  # fmt: skip
