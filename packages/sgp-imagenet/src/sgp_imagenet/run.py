"""One rank's training run, as an object: build, restore, train epochs, validate, save.

`TrainingRun` is built from the parsed arguments inside an initialised process group. It
owns the loaders, the model and its data-parallel wrapper, the optimizer, the gradient
scaler and the run's log, and closes them as a context manager. Each step of a run is a
method a test can call alone: `TrainingRun.restore`, `TrainingRun.train_epoch`,
`TrainingRun.validate`, `TrainingRun.save`, `TrainingRun.check_preemption`.

What differs between algorithms is asked of the wrapper (gossip-nn's
[`DataParallelModule`][gossip_nn.DataParallelModule]): whether it is synchronous, how to
change its graph, what it must settle before a checkpoint. With ``--fault-tolerant`` the
run follows the job's generations (`sgp_imagenet.fault_tolerant`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from gossip_nn import FaultTolerance, check_same_setup, make_data_parallel
from sgp_imagenet.checkpoint import (
    CheckpointError,
    Resume,
    check_compatible,
    checkpoint_path,
    save_atomic,
)
from sgp_imagenet.data import DataBundle, ResumableSampler, check_classes, make_loader
from sgp_imagenet.evaluate import accuracy, kept_buffers, validate
from sgp_imagenet.failure import is_peer_failure
from sgp_imagenet.fault_tolerant import (
    STOP_LEAD,
    Generations,
    Leaving,
    leaves_on_signal,
    survive,
)
from sgp_imagenet.injection import POISON_HOOK, SIGNAL_HOOK, InjectedFaults, injected_signal
from sgp_imagenet.models import build_model, param_groups
from sgp_imagenet.options import shared_setup, wrapper_options
from sgp_imagenet.position import Position, rng_state, set_rng_state
from sgp_imagenet.precise_bn import recompute_bn_stats
from sgp_imagenet.preempt import Preemption
from sgp_imagenet.run_log import IterationTimes, RunLog
from sgp_imagenet.schedule import (
    LRSchedule,
    PeersSchedule,
    large_batch_warning,
    parse_epoch_pairs,
    scaling_line,
)

# (the testing hooks and Position live in their own modules; named here as before)
__all__ = [
    "POISON_HOOK",
    "SIGNAL_HOOK",
    "Position",
    "Preempted",
    "TrainingRun",
    "injected_signal",
]

T = TypeVar("T")


class Preempted(Exception):  # noqa: N818 - control flow, not an error
    """Raised out of the training loop once the preemption checkpoint is written."""


class TrainingRun:
    """One rank's share of a training job (call inside an initialised process group).

    Args:
        args: The parsed ``sgp-imagenet train`` arguments.
        bundle: The training and validation sets.
        device: Where the model computes.
        comm_device: Where collectives' tensors live (the device with NCCL, else CPU).
        preempt: The installed preemption handler the ranks agree through.
        fault_tolerance: With ``--fault-tolerant``: the job's generations, already
            started (``sgp_imagenet.fault_tolerant.connect``); ``None`` otherwise.

    Attributes:
        position: The next iteration to run.
        model: The model, built identically on every rank (``--arch``).
        optimizer: SGD over the model's parameter groups.
        dp: The data-parallel wrapper (gossip-nn) around ``model``.
        forward: What the training step calls: ``dp``, or ``dp`` compiled
            (``--compile``).
        scaler: The gradient scaler (enabled with ``--amp fp16``).
        criterion: The training loss (cross-entropy, ``--label-smoothing``).
        train_loader: This rank's shard of the training set.
        sampler: ``train_loader``'s sampler, which resumes mid-epoch.
        val_loader: This rank's shard of the validation set.
        stats_loader: Training images for ``--precise-bn`` (``None`` without it): this
            rank's shard, shuffled and augmented as training does, in an order fixed by
            the epoch (see `stats_batches`).
        per_epoch: Iterations per epoch.
        lr: The learning-rate schedule.
        peers: The peers-per-iteration schedule.
        check_every: Iterations between two preemption agreements.
        faults: The testing aids' faults to inject (`sgp_imagenet.injection`).
        log: The run's progress, CSV, TensorBoard and summary output.
        ft: ``fault_tolerance`` as given.
        generations: With fault tolerance, the generations seen (``None`` without).
    """

    def __init__(
        self, args: argparse.Namespace, bundle: DataBundle, *, device: torch.device,
        comm_device: torch.device, preempt: Preemption,
        fault_tolerance: FaultTolerance | None = None,
    ) -> None:  # fmt: skip
        self.args, self.bundle, self.preempt = args, bundle, preempt
        self.ft = fault_tolerance
        self.generations = None if self.ft is None else Generations(self.ft)
        self.device, self.comm_device = device, comm_device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.ft is None or self.ft.joined_from is None:  # (a joiner meets nobody yet)
            world = dist.group.WORLD
            assert world is not None
            check_same_setup(world, shared_setup(args))  # every rank refuses a mismatch
        self.train_loader, self.val_loader, self.stats_loader = self._loaders()
        sampler = self.train_loader.sampler
        assert isinstance(sampler, ResumableSampler)
        self.sampler = sampler
        self.per_epoch = self._iterations_per_epoch()
        self.model, self.optimizer = self._model()
        self.lr = LRSchedule(
            reference_lr=args.lr,
            global_batch=args.batch_size * self.world,
            warmup_epochs=args.warmup_epochs,
            decays=parse_epoch_pairs(args.lr_schedule, flag="--lr-schedule", value=float),
        )
        self.peers = PeersSchedule.parse(args.peers_per_itr_schedule)
        self._peers = self.peers.peers_at(0)
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        self.position = Position()
        self.faults = InjectedFaults.from_environ(os.environ)
        self._shard = (self.rank, self.world)  # the data shard of the current epoch
        member = None if self.generations is None else self.generations.member
        self.log = RunLog(args, self.rank, self.world, member=member)
        try:
            # fault tolerance settles one gossiped buffer: BatchNorm's statistics stay
            # each rank's own (evaluations average them exactly)
            local: dict[str, Any] = {"buffers": "local"} if self.ft is not None else {}
            self.dp = make_data_parallel(
                args.algorithm, self.model, self.optimizer, fault_tolerance=self.ft,
                **local, **wrapper_options(args, peers_per_itr=self._peers),
            )  # fmt: skip
        except BaseException:
            self.log.close()
            raise
        self._closed = False
        try:  # from here on, a failure closes the wrapper (its threads) and the log
            self._finish_building()
        except BaseException:
            self.close()
            raise

    def _finish_building(self) -> None:
        a = self.args  # (a peers schedule the algorithm cannot follow is refused by the
        # command line, through gossip-nn's SET_TOPOLOGY_ALGORITHMS)
        if self.ft is not None:
            self.ft.extra_state = self._hand_over
            if self.ft.received_state is not None:  # a joiner: go on from its sponsor
                self._take_over(self.ft.received_state)
        self.check_every = a.preempt_check_every or (1 if self.dp.synchronous else 20)
        self.forward: Any = torch.compile(self.dp, backend=a.compile) if a.compile else self.dp
        if self.rank == 0:
            self._report_scaling()
            if a.compile:
                print(f"forward compiled by torch.compile (backend {a.compile})", flush=True)

    def _report_scaling(self) -> None:
        """Rank 0: the batch per rank and in all, and the learning rate the schedule
        uses; a warning on standard error when the global batch is very large."""
        batch = {"batch_size": self.args.batch_size, "world_size": self.world}
        print(scaling_line(self.lr, **batch), flush=True)
        warning = large_batch_warning(self.lr, **batch)
        if warning is not None:
            print(warning, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ building
    def _loaders(self) -> tuple[Any, Any, Any]:
        """Training, validation, and a second pass over the training images (shuffled,
        augmented as in training) that re-estimates BatchNorm statistics."""
        a, b = self.args, self.bundle
        common = {"batch_size": a.batch_size, "rank": self.rank, "world_size": self.world,
                  "seed": a.seed, "workers": a.workers}  # fmt: skip
        return (
            make_loader(b.train, train=True, **common),
            make_loader(b.val, train=False, **common),
            make_loader(b.train, train=True, **common) if a.precise_bn else None,
        )

    def _iterations_per_epoch(self) -> int:
        per_epoch = len(self.train_loader)
        if self.sampler.num_samples % self.args.batch_size == 1:
            per_epoch -= 1  # a last batch of one image: BatchNorm cannot train on it
        if self.args.max_iters_per_epoch:
            per_epoch = min(per_epoch, self.args.max_iters_per_epoch)
        return per_epoch

    def _model(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        a = self.args
        torch.manual_seed(a.seed)  # every rank builds the same model
        model = build_model(a.arch, self.bundle.num_classes).to(self.device)
        if a.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(
            param_groups(model, a.weight_decay), lr=a.lr, momentum=a.momentum,
            nesterov=a.nesterov and a.momentum > 0,
        )  # fmt: skip
        return model, optimizer

    # ------------------------------------------------------------ fault tolerance
    def _hand_over(self) -> dict[str, Any]:
        """What a joiner this rank sponsors needs beside the model and optimizer (called
        inside the optimizer step of the iteration in progress)."""
        return {"position": self.position.state_dict(), "per_epoch": self.per_epoch,
                "shard": self._shard, "scaler": self.scaler.state_dict()}  # fmt: skip

    def _take_over(self, state: dict[str, Any]) -> None:
        """A joiner goes on where its sponsor was: the same epoch, iteration and data
        shard (until the epoch ends), from the step its wrapper starts at."""
        assert self.ft is not None
        ahead = self.ft.start_step - int(state["position"]["global_itr"])  # 0 or 1
        self.position.load_state_dict(state["position"])
        self.position.itr += ahead
        self.position.global_itr += ahead
        self.per_epoch = int(state["per_epoch"])
        self._shard = tuple(state["shard"])
        self.sampler.reshard(*self._shard)
        self.scaler.load_state_dict(state["scaler"])

    def _follow(self) -> None:
        """Take the generation changes the wrapper made: this rank's number, the log."""
        if self.generations is None:
            return
        for _ in self.generations.changes():
            self.rank, self.world = self.generations.rank, self.generations.world_size
            self.log.renumber(self.rank, self.world)
            if self.rank == 0:
                print(f"sgp-imagenet: {Generations.line(self.generations.rows[-1])}", flush=True)

    def _reshard(self) -> None:
        """At an epoch's start: shard the data over the current members."""
        if self.generations is None or self._shard == (self.rank, self.world):
            return
        self._shard = (self.rank, self.world)
        for loader in (self.train_loader, self.val_loader, self.stats_loader):
            if loader is not None:
                loader.sampler.reshard(self.rank, self.world)
        self.per_epoch = self._iterations_per_epoch()

    def _collective(self, run: Callable[[], T]) -> T:
        """``run()``, a collective outside gossip; with fault tolerance it runs again in
        the next generation if a member is lost during it, on the data re-sharded over
        the survivors."""

        def attempt() -> T:
            self._follow()
            if self.generations is not None:
                for loader in (self.val_loader, self.stats_loader):
                    if loader is not None:
                        loader.sampler.reshard(self.rank, self.world)
            return run()

        return survive(self.dp, self.ft, attempt)

    # ------------------------------------------------------------------- context
    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, kind: object, err: BaseException | None, tb: object) -> None:
        self.close(abandon=err is not None and is_peer_failure(err))

    def close(self, *, abandon: bool = False) -> None:
        """Finish gossip, release the wrapper's hooks and threads, close the log files.

        Args:
            abandon: A peer is lost (the job stops): drop gossip in flight instead of
                waiting for it (``DataParallelModule.abandon``).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.dp.abandon() if abandon else self.dp.close()
        finally:
            self.log.close()

    def where(self) -> str:
        """How far the run got, in words, for a message."""
        pos = self.position
        return (
            f"iteration {pos.global_itr} (epoch {pos.epoch}, {pos.itr} of {self.per_epoch} "
            "iterations done)"
        )

    # ------------------------------------------------------------------- restore
    def restore(self, resume: Resume | None) -> None:
        """Continue from a checkpoint: the ranks' own states, or the network average.

        Raises:
            CheckpointError: If this run cannot continue the checkpoint: another model,
                a rank's own state from another algorithm or number of ranks, or
                another class count than the data's.
        """
        if resume is None:
            return
        state, a = resume.state, self.args
        check_compatible(
            state, resume.path, arch=a.arch, algorithm=a.algorithm, world_size=self.world
        )
        fc = [p for p in self.model.parameters() if p.ndim == 2][-1]
        saved = int(state.get("num_classes", fc.shape[0]))
        try:
            check_classes(self.bundle.num_classes, saved, where="the checkpoint")
        except ValueError as exc:  # another run's file: a run-time failure, not a flag
            raise CheckpointError(resume.path, str(exc).removeprefix("the checkpoint: ")) from None
        self.position.load_state_dict(state["progress"])
        self._use_peers_of(self.position.epoch)
        if state["kind"] == "rank":
            self.dp.load_state_dict(state["model"])
            if "rng" in state:
                set_rng_state(state["rng"])
        else:  # the network average: every rank starts from it, with weight 1
            self.dp.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.rank == 0:
            where = "own checkpoints" if state["kind"] == "rank" else "network average"
            print(
                f"resuming from the ranks' {where} ({resume.path.name}): epoch "
                f"{self.position.epoch}, iteration {self.position.itr}",
                flush=True,
            )

    def _use_peers_of(self, epoch: int) -> None:
        """Gossip with ``epoch``'s number of peers (a collective when it changes)."""
        peers = self.peers.peers_at(epoch)
        if peers != self._peers:
            self.dp.set_topology(peers_per_itr=peers)
            self._peers = peers

    # --------------------------------------------------------------------- train
    def run(self) -> None:
        """Train from `position` to the last epoch, validating (and saving) after each.

        Raises:
            Preempted: Once a preemption checkpoint is written.
        """
        self.log.started = time.perf_counter()  # elapsed times count training, not set-up
        a = self.args
        while self.position.epoch < a.epochs:
            epoch = self.position.epoch
            self.train_epoch()
            done = Position(epoch=epoch + 1, global_itr=self.position.global_itr)
            average = bool(a.checkpoint_dir) and not a.checkpoint_all
            self.log.validation(epoch, self.validate(save_average_at=done if average else None))
            self.position = done
            if a.checkpoint_dir and a.checkpoint_all:
                self.save()
            self.check_preemption()
        rows = None if self.generations is None else self.generations.rows
        self.log.write_summary(bytes_sent=self.dp.bytes_sent, generations=rows)

    def train_epoch(self) -> None:
        """Run the rest of `position`'s epoch, checking for preemption as it goes.

        Raises:
            Preempted: Once a preemption checkpoint is written.
        """
        pos = self.position
        if pos.itr == 0:
            self._reshard()
        per_epoch = self.per_epoch
        self._use_peers_of(pos.epoch)
        pos.itr = min(pos.itr, per_epoch)
        self.sampler.set_epoch(pos.epoch)
        self.sampler.start_at(pos.itr * self.args.batch_size)
        self.dp.train()
        self.log.start_epoch(pos.epoch, per_epoch, pos.itr)
        start = time.perf_counter()
        for x, y in self.train_loader if pos.itr < per_epoch else ():
            if pos.itr >= per_epoch:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.args.channels_last:
                x = x.to(memory_format=torch.channels_last)
            loaded = time.perf_counter()
            lr = self.lr.lr_at(pos.epoch, pos.itr / per_epoch)
            loss, output, stepping = self.train_step(x, y, lr)
            times = IterationTimes(
                start=start, loaded=loaded, stepping=stepping, done=time.perf_counter()
            )
            t1, t5 = accuracy(output, y)
            pos.itr, pos.global_itr = pos.itr + 1, pos.global_itr + 1
            self.log.iteration(
                pos.epoch, pos.itr - 1, pos.global_itr, times=times, loss=loss,
                top1=100.0 * t1 / len(y), top5=100.0 * t5 / len(y), lr=lr, batch=len(y),
            )  # fmt: skip
            self._after_iteration()
            start = time.perf_counter()
        self.log.end_epoch()

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, lr: float
    ) -> tuple[float, torch.Tensor, float]:
        """One update at learning rate ``lr``; gossip runs in the optimizer's hooks.

        Returns:
            ``(loss, logits, time when the forward pass ended)``.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        a = self.args
        dtype = torch.bfloat16 if a.amp == "bf16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=a.amp != "off"):
            output = self.forward(x)
            loss = self.criterion(output.float(), y)
        stepping = time.perf_counter()
        if a.amp == "fp16":
            self.scaler.scale(loss).backward()
            self.dp.scaler_step(self.scaler)  # gossip runs even when the update is skipped
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), output.detach().float(), stepping

    def _after_iteration(self) -> None:
        self._follow()
        pos = self.position
        # with --fault-tolerant the hook names a member: ranks are renumbered, and an
        # asynchronous survivor renumbered to the victim's rank may not be past its
        # iteration yet
        who = self.rank if self.generations is None else self.generations.member
        self.faults.after_iteration(who, pos.global_itr, self.model)
        if self.args.checkpoint_every and pos.global_itr % self.args.checkpoint_every == 0:
            self.save()
        self.check_preemption()

    # -------------------------------------------------------- validate and save
    def stats_batches(self) -> Any:
        """``stats_loader`` at the start of `position`'s epoch's order (``None`` without
        ``--precise-bn``): a sample of every class, the same on a resumed run."""
        if self.stats_loader is None:
            return None
        sampler = self.stats_loader.sampler
        assert isinstance(sampler, ResumableSampler)
        sampler.set_epoch(self.position.epoch)
        sampler.start_at(0)
        return self.stats_loader

    def validate(self, *, save_average_at: Position | None = None) -> dict[str, float]:
        """Top-1 of the ranks' own models and top-1, top-5 and loss of the network average.

        A collective; see `sgp_imagenet.evaluate.validate`. ``save_average_at``: also
        checkpoint the network average, as of that position, from inside the
        validation's average, so its precise BatchNorm statistics are computed once.
        """
        at = save_average_at
        return self._collective(lambda: validate(
            self.dp, self.val_loader, device=self.device, comm_device=self.comm_device,
            stats_loader=self.stats_batches(), stats_batches=self.args.precise_bn,
            inside_average=None if at is None else lambda: self._write_average(at),
        ))  # fmt: skip

    def save(self, *, own: bool = False) -> None:
        """Checkpoint at `position`.

        ``own`` (always on preemption) or ``--checkpoint-all``: every rank writes its own
        state, for an exact resume. Otherwise rank 0 writes the network average (a
        collective), with ``--precise-bn``'s BatchNorm statistics for it.
        """
        a = self.args
        if own or a.checkpoint_all:
            model = self.dp.state_dict()  # the wrapper settles what is in flight first
            common = self._common(self.position)
            state = {"kind": "rank", "model": model, "rng": rng_state(), **common}
            save_atomic(state, checkpoint_path(a.checkpoint_dir, self.rank))
            return
        self._collective(self._save_average)

    def _save_average(self) -> None:
        """Rank 0 writes the network average (a collective), with ``--precise-bn``'s
        BatchNorm statistics for it."""
        with self.dp.average_for_eval(), kept_buffers(self.dp.module):
            stats = self.stats_batches()
            if stats is not None:  # the average's own BatchNorm statistics
                recompute_bn_stats(
                    self.dp.module, stats, num_batches=self.args.precise_bn, distributed=True
                )
            self._write_average(self.position)

    def _common(self, at: Position) -> dict[str, Any]:
        """What every checkpoint holds beside the model, as of position ``at``."""
        return {"progress": at.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "num_classes": self.bundle.num_classes,
                "world_size": self.world, "args": vars(self.args)}  # fmt: skip

    def _write_average(self, at: Position) -> None:
        """Rank 0 writes the model ``dp`` holds (inside ``average_for_eval``)."""
        if self.rank == 0:
            state = {"kind": "average", "model": self.dp.module.state_dict(), **self._common(at)}
            save_atomic(state, checkpoint_path(self.args.checkpoint_dir, None))

    def _stop_if_agreed(self) -> None:
        """Fault tolerance: on a signal, propose to stop ``world + STOP_LEAD`` iterations
        on (through the coordinator, no collective); at the agreed iteration every rank
        writes its own checkpoint and stops.

        Raises:
            Preempted: At the agreed iteration.
        """
        assert self.ft is not None
        membership, pos = self.ft.membership, self.position
        if self.preempt.received is not None and leaves_on_signal():
            member, name = membership.member, self.preempt.received.name
            assert member is not None  # registered before training
            membership.request_end(f"member {member} left on {name}", lost=[member])
            print(
                f"sgp-imagenet: member {member} leaves the job on {name} at iteration "
                f"{pos.global_itr}: torchrun restarts it, and it joins again",
                flush=True,
            )
            raise Leaving
        if self.preempt.received is not None and membership.stop_step() is None:
            membership.propose_stop(pos.global_itr + self.world + STOP_LEAD)
        stop = membership.stop_step()
        if stop is None or pos.global_itr < stop:
            return
        self.log.end_epoch()
        if self.args.checkpoint_dir:
            self.save(own=True)
        if self.rank == 0:
            where = self.args.checkpoint_dir or "nowhere: no --checkpoint-dir"
            print(
                f"sgp-imagenet: stopped at the agreed iteration {stop} (epoch {pos.epoch}, "
                f"iteration {pos.itr}); every member's checkpoint in {where}",
                flush=True,
            )
        raise Preempted

    def check_preemption(self) -> None:
        """If the ranks agree that a preemption signal arrived: checkpoint and stop.

        Synchronous algorithms agree every ``check_every`` iterations with a collective;
        asynchronous ones (AD-PSGD) through the store, at the same local iteration.

        Raises:
            Preempted: Once every rank's checkpoint is complete.
        """
        pos = self.position
        if self.ft is not None:
            self._stop_if_agreed()
            return
        if pos.itr % self.check_every and pos.itr != 0:
            return
        if self.dp.synchronous:
            stop = self.preempt.agreed(self.comm_device)
        else:
            stop = self.preempt.agreed_in_store(f"epoch{pos.epoch}/itr{pos.itr}")
        if not stop:
            return
        self.log.end_epoch()
        if not self.args.checkpoint_dir:
            if self.rank == 0:
                print("sgp-imagenet: preempted, but no --checkpoint-dir: nothing saved")
            raise Preempted
        self.save(own=True)
        dist.barrier()  # every rank's file is complete before anyone requeues
        if self.rank == 0:
            print(
                f"sgp-imagenet: preemption checkpoint at epoch {pos.epoch}, iteration "
                f"{pos.itr} in {self.args.checkpoint_dir}",
                flush=True,
            )
        raise Preempted
