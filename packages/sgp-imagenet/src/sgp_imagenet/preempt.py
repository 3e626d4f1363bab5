"""Preemption: catch SIGUSR1/SIGTERM, agree across ranks, checkpoint, requeue.

SLURM sends ``SIGUSR1`` before a job's time limit (``#SBATCH --signal=USR1@180``) and
``SIGTERM`` when it preempts or cancels one. A signal reaches the ranks at different
moments, often only some of them, so a rank never acts on its own: the handler only
records the signal, and the ranks agree at an iteration boundary that the job stops
there.

* Synchronous algorithms (AR, SGP, OSGP, D-PSGD) agree with one small all-reduce per
  iteration (`Preemption.agreed`), so every rank stops after the same iteration and the
  checkpoints form one consistent state.
* AD-PSGD ranks run at their own pace, and an all-reduce would wait on gossip in flight,
  so they agree through the c10d store every ``--preempt-check-every`` local iterations
  (default 20) and at each epoch's end (`Preemption.agreed_in_store`): every rank
  stops after the same number of local iterations.

After the checkpoint, rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` under SLURM
(`requeue`), and the process exits with `EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``: "try
again"), so a launcher with restarts (``torchrun --max-restarts``) resumes it too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["EXIT_PREEMPTED", "SIGNALS", "Preemption", "requeue"]

EXIT_PREEMPTED = 75
"""Exit status of a run stopped by a preemption signal after its checkpoint."""

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGTERM)
"""The signals that stop a run with a checkpoint."""

_STORE_KEY = "sgp_imagenet/preempt"


class Preemption:
    """Records preemption signals; the ranks then agree to stop at one iteration boundary.

    Use it as a context manager around training: the handlers are installed on entry
    (only in the main thread, where Python delivers signals) and the previous ones are
    restored on exit.

    Args:
        signals: The signals to catch.

    Attributes:
        signals: The signals caught inside the ``with`` block.
        received: The first signal caught on this rank, or ``None``.

    Example:
        ```python
        with Preemption() as preempt:
            for batch in loader:
                step(batch)
                if preempt.agreed(torch.device("cpu")):
                    save_checkpoint()
                    break
        ```
    """

    def __init__(self, signals: Sequence[signal.Signals] = SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
            rank = dist.get_rank() if dist.is_initialized() else 0
            print(
                f"sgp-imagenet: rank {rank} caught {self.received.name}; checkpointing at "
                "the next iteration boundary",
                file=sys.stderr,
                flush=True,
            )

    def agreed(self, device: torch.device, group: dist.ProcessGroup | None = None) -> bool:
        """Whether any rank has caught a signal: one all-reduce, every rank must call it.

        Args:
            device: Where the flag tensor lives (CUDA for NCCL, CPU for gloo).
            group: The process group; the default group when ``None``.

        Returns:
            The same answer on every rank.
        """
        flag = torch.tensor([0 if self.received is None else 1], dtype=torch.int32)
        flag = flag.to(device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())

    def agreed_in_store(self, key: str, group: dist.ProcessGroup | None = None) -> bool:
        """Whether any rank has caught a signal, agreed through the store, not the group.

        Every rank must call it with the same ``key`` (for example the epoch and local
        iteration). It waits until every rank has arrived, like a barrier, but through
        the c10d store: the process group stays free for gossip in flight (AD-PSGD's
        responder threads keep serving peers meanwhile).

        Args:
            key: Names this agreement point; used once per job.
            group: The process group whose store and ranks to use; WORLD when ``None``.

        Returns:
            The same answer on every rank.
        """
        pg = dist.group.WORLD if group is None else group
        assert pg is not None
        store = pg.get_group_store()
        prefix = f"{_STORE_KEY}/{key}"
        if self.received is not None:
            store.add(f"{prefix}/flag", 1)  # before arriving: read only after all arrive
        store.set(f"{prefix}/rank{dist.get_rank(pg)}", "1")
        store.wait([f"{prefix}/rank{r}" for r in range(dist.get_world_size(pg))])
        return int(store.add(f"{prefix}/flag", 0)) > 0


def requeue(environ: Mapping[str, str] | None = None) -> str:
    """Requeue the SLURM job this process belongs to (``scontrol requeue``).

    Args:
        environ: The environment to read ``SLURM_JOB_ID`` and ``PATH`` from;
            ``os.environ`` by default.

    Returns:
        What happened, in one line, for the log: requeued, not under SLURM, or why the
        command failed. It never raises: the checkpoint is already safe.
    """
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID")
    if not job:
        return "not under SLURM (no SLURM_JOB_ID): not requeued; relaunch to resume"
    command = shutil.which("scontrol", path=env.get("PATH"))
    if command is None:
        return f"SLURM job {job}: scontrol not found on PATH; requeue it by hand"
    try:
        done = subprocess.run(
            [command, "requeue", job], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM job {job}: scontrol requeue failed ({exc})"
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        return f"SLURM job {job}: scontrol requeue exited {done.returncode} ({detail})"
    return f"SLURM job {job}: requeued"
