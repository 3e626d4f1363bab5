"""What a training run reports: progress, per-rank CSV rows, TensorBoard scalars, summary.

`RunLog` owns every output of a run except checkpoints, so the training loop hands it
numbers and nothing else: one call per iteration, one per validation, one at the end.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgp_imagenet.logs import CsvLog, Meter, write_summary
from sgp_imagenet.report import Progress, open_tensorboard

__all__ = ["IterationTimes", "RunLog"]

_METERS = ("batch", "step", "data", "loss", "top1", "top5")


@dataclass(frozen=True, kw_only=True)
class IterationTimes:
    """``time.perf_counter()`` readings that bound one training iteration.

    Attributes:
        start: Before the batch was fetched.
        loaded: The batch is on the device.
        stepping: The forward pass is done; backward and the update begin.
        done: The update (and its gossip) is done.
    """

    start: float
    loaded: float
    stepping: float
    done: float


class RunLog:
    """Rank 0's progress and summary, every rank's CSV log, rank 0's TensorBoard scalars.

    Args:
        args: The parsed ``sgp-imagenet train`` arguments (``log_dir``, ``tensorboard``,
            ``progress``, ``print_freq``; all of them go into the summary).
        rank: This rank.
        world_size: Ranks in the job.
        member: With fault tolerance, this process's member id: it names the CSV file
            (``member{M}.csv``), since ranks are renumbered when members come and go.

    Attributes:
        csv: This rank's CSV log (``None`` without ``--log-dir``, or once closed).
        board: Rank 0's TensorBoard writer, or ``None``.
        progress: Rank 0's progress display.
        meters: The running statistics of the current epoch: ``batch``, ``step`` and
            ``data`` times, ``loss``, ``top1`` and ``top5``.
        step_times: Every iteration's time, over the whole run.
        started: ``time.perf_counter()`` when the log was opened.
        history: One row per validation (see `validation`).
        initial_world_size: The ranks the run started with (``world_size`` follows a
            fault-tolerant job's generations).
    """

    def __init__(
        self, args: argparse.Namespace, rank: int, world_size: int, *, member: int | None = None
    ) -> None:
        self.args, self.rank, self.world_size = args, rank, world_size
        self.initial_world_size = world_size
        name = None if member is None else f"member{member}"
        self.csv = CsvLog(args.log_dir, rank, name=name) if args.log_dir else None
        self.board, note = open_tensorboard(args.log_dir, enabled=args.tensorboard and rank == 0)
        if note:
            print(note, flush=True)
        self.progress = Progress(args.progress, enabled=rank == 0, print_freq=args.print_freq)
        self.history: list[dict[str, float]] = []
        self.started = time.perf_counter()
        self.step_times = Meter()
        self.meters = {k: Meter() for k in _METERS}
        self._per_epoch = 0

    def renumber(self, rank: int, world_size: int) -> None:
        """A fault-tolerant job moved to a new generation: this process is now ``rank``
        of ``world_size`` (the summary is written by the last generation's rank 0)."""
        self.rank, self.world_size = rank, world_size

    def start_epoch(self, epoch: int, per_epoch: int, first: int) -> None:
        """An epoch of ``per_epoch`` iterations starts at iteration ``first``."""
        self.meters = {k: Meter() for k in _METERS}
        self._per_epoch = per_epoch
        self.progress.start_epoch(epoch, per_epoch, first)

    def end_epoch(self) -> None:
        """Close the epoch's progress bar (also before a preemption message)."""
        self.progress.end_epoch()

    def iteration(
        self, epoch: int, itr: int, global_itr: int, *, times: IterationTimes, loss: float,
        top1: float, top5: float, lr: float, batch: int,
    ) -> None:  # fmt: skip
        """Record iteration ``itr`` of ``epoch`` (accuracies in percent of ``batch``)."""
        m = self.meters
        m["batch"].update(times.done - times.start)
        m["step"].update(times.done - times.stepping)
        m["data"].update(times.loaded - times.start)
        for key, value in (("loss", loss), ("top1", top1), ("top5", top5)):
            m[key].update(value)
        self.step_times.update(times.done - times.start)
        per_epoch, every = self._per_epoch, self.args.print_freq
        if self.csv is not None and (itr % every == 0 or itr == per_epoch - 1):
            self.csv.train_row(epoch, itr, *m.values())
        rate = batch * self.world_size / max(m["batch"].mean, 1e-9)
        self.progress.update(
            epoch, itr, per_epoch, loss=m["loss"].mean, top1=m["top1"].mean, lr=lr,
            images_per_s=rate, eta_s=(per_epoch - itr - 1) * m["batch"].mean,
        )  # fmt: skip
        if self.board is not None and itr % every == 0:
            for key, value in (("loss", loss), ("top1", top1), ("lr", lr), ("images_per_s", rate)):
                self.board.add_scalar(f"train/{key}", value, global_itr)

    def validation(self, epoch: int, row: dict[str, float]) -> None:
        """Record the validation after ``epoch`` (a row from ``validate``)."""
        row = {
            "epoch": epoch,
            **row,
            "train_loss": self.meters["loss"].mean,
            "elapsed_s": time.perf_counter() - self.started,
        }
        self.history.append(row)
        if self.csv is not None:
            self.csv.val_row(
                epoch, self._per_epoch, row["average_loss"], row["average_top1"],
                row["average_top5"],
            )  # fmt: skip
        if self.board is not None:
            for key in ("average_top1", "average_top5", "average_loss", "own_top1"):
                self.board.add_scalar(f"val/{key}", row[key], epoch)
            self.board.flush()
        if self.rank == 0:
            print(
                f"epoch {epoch} validation: network average top-1 {row['average_top1']:.2f}% "
                f"(ranks' own models, sharded: {row['own_top1']:.2f}%)",
                flush=True,
            )

    def write_summary(
        self, *, bytes_sent: int, generations: list[dict[str, Any]] | None = None
    ) -> Path | None:
        """Rank 0 writes ``LOG_DIR/summary.json``; ``bytes_sent``: by this rank's wrapper;
        ``generations``: a fault-tolerant job's generation changes, as this rank saw them
        (``world_size`` is then the size the job started with)."""
        if self.rank != 0 or not self.args.log_dir:
            return None
        steps = self.step_times.count
        args = self.args
        return write_summary(
            Path(args.log_dir) / "summary.json",
            {
                "algorithm": args.algorithm,
                "world_size": self.initial_world_size,
                **(
                    {}
                    if generations is None
                    else {"generations": generations, "final_world_size": self.world_size}
                ),
                "arch": args.arch,
                "dataset": args.dataset,
                "epochs": self.history,
                "wall_s": time.perf_counter() - self.started,
                "s_per_iter": self.step_times.mean if steps else math.nan,
                "bytes_per_iter": bytes_sent / steps if steps else math.nan,
                "args": {k: v for k, v in vars(args).items() if k != "command"},
            },
        )

    def close(self) -> None:
        """Close the CSV file and the TensorBoard writer (idempotent)."""
        if self.csv is not None:
            self.csv.close()
            self.csv = None
        if self.board is not None:
            self.board.close()
            self.board = None
