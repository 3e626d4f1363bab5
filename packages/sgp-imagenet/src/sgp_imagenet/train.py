"""The training loop behind ``sgp-imagenet train``.

One process per rank (torchrun or SLURM srun). Every algorithm runs through gossip-nn's
``make_data_parallel``; the loop is the plain PyTorch one, with the learning rate set
per iteration from `LRSchedule`, mixed precision through ``model.scaler_step``, a
peers-per-iteration schedule through ``set_topology``, and both the ranks' own models and
the exact network average evaluated after each epoch.

A preemption signal (SIGUSR1, SIGTERM) stops every rank after the same iteration; each
rank then writes its own checkpoint (model, push-sum state and OSGP's rounds in flight,
optimizer, scaler, RNG and the position in the epoch), and a relaunch resumes exactly
there: the same batches, learning rates and updates as a run that was never stopped.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gossip_nn import (
    ADPSGD_TOPOLOGY,
    DataParallelModule,
    GossipDataParallel,
    make_data_parallel,
)
from gossip_topology import Topology, make_topology
from sgp_imagenet.checkpoint import (
    Resume,
    check_resume,
    checkpoint_path,
    choose_resume,
    save_atomic,
)
from sgp_imagenet.data import (
    DataBundle,
    ResumableSampler,
    build_datasets,
    check_classes,
    make_loader,
)
from sgp_imagenet.launch import LaunchEnv, choose_backend, describe, detect
from sgp_imagenet.logs import CsvLog, Meter, write_summary
from sgp_imagenet.models import build_model, param_groups
from sgp_imagenet.preempt import EXIT_PREEMPTED, Preemption, requeue
from sgp_imagenet.report import Progress, open_tensorboard
from sgp_imagenet.schedule import LRSchedule, PeersSchedule, parse_epoch_pairs

__all__ = ["report_env", "train"]

_WIRE = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def report_env(environ: Mapping[str, str]) -> str:
    """What ``sgp-imagenet env`` prints."""
    env = detect(environ)
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return describe(
        env, backend=choose_backend("auto", cuda), devices=devices or ["cpu"], environ=environ
    )


def _init(env: LaunchEnv, backend: str) -> None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)  # env:// from torchrun
    else:
        dist.init_process_group(
            backend,
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
        )


def _topology(args: argparse.Namespace, participants: int, peers: int) -> Topology:
    name: str | int = args.topology or (
        ADPSGD_TOPOLOGY if args.algorithm == "adpsgd" else "npeer-dynamic-directed-exponential"
    )
    if isinstance(name, str) and name.isdigit():
        name = int(name)
    return make_topology(name, participants, peers, legacy_phone_book=args.legacy_schedule)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit = top5 == y[:, None]
    return float(hit[:, 0].float().sum()), float(hit.any(dim=1).float().sum())


@torch.no_grad()
def _evaluate(
    model: nn.Module, loader: Any, device: torch.device, criterion: nn.Module
) -> torch.Tensor:
    """Sums over this rank's validation shard: [loss, top-1 hits, top-5 hits, count]."""
    sums = torch.zeros(4, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        t1, t5 = _accuracy(out, y)
        sums += torch.tensor([float(criterion(out, y)) * len(y), t1, t5, len(y)])
    return sums


def _all_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    t = t.to(device)
    dist.all_reduce(t)
    return t.cpu()


class Preempted(Exception):  # noqa: N818 - control flow, not an error
    """Raised out of the training loop once the preemption checkpoint is written."""


def train(args: argparse.Namespace) -> int:
    """Run one training job on this rank; returns the exit status.

    0 when training finished, `sgp_imagenet.preempt.EXIT_PREEMPTED` (75) when a
    preemption signal stopped it after a checkpoint.
    """
    env = detect()
    cuda = torch.cuda.is_available()
    backend = choose_backend(args.backend, cuda)
    device = (
        torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
        if cuda
        else torch.device("cpu")
    )
    if cuda:
        torch.cuda.set_device(device)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True
    comm_device = device if backend == "nccl" else torch.device("cpu")
    # bad data or a bad --resume path fail here, before any process group exists
    bundle = build_datasets(args.dataset, args.data, image_size=args.image_size, seed=args.seed)
    check_resume(args.resume)
    decays = parse_epoch_pairs(args.lr_schedule, flag="--lr-schedule", value=float)
    peers = PeersSchedule.parse(args.peers_per_itr_schedule)
    with Preemption() as preempt:
        _init(env, backend)
        dp: list[DataParallelModule] = []
        try:
            resume = choose_resume(args.resume, args.checkpoint_dir, dist.get_rank())
            _run(args, bundle, resume, decays, peers, device, comm_device, preempt, dp)
            return 0
        except Preempted:
            if dist.get_rank() == 0:
                note = requeue() if args.requeue else "--no-requeue: not requeued"
                print(f"sgp-imagenet: preempted; checkpoint saved; {note}", flush=True)
            return EXIT_PREEMPTED
        finally:
            _teardown(dp[0] if dp else None)


def _teardown(dp: DataParallelModule | None) -> None:
    """Finish gossip, then take the process group down in order (every rank)."""
    if dp is not None:
        dp.close()  # finish gossip before the group goes away
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


_SIGNAL_HOOK = "SGP_IMAGENET_TEST_SIGNAL"
"""Testing aid: ``RANK:GLOBAL_ITR:SIGNAL`` makes that rank signal itself after that
iteration, so tests can preempt a run at an exact, reproducible point."""


def _injected_signal(text: str | None) -> tuple[int, int, signal.Signals] | None:
    if not text:
        return None
    try:
        rank, itr, name = text.split(":")
        return int(rank), int(itr), signal.Signals[name]
    except (ValueError, KeyError):
        raise ValueError(
            f"{_SIGNAL_HOOK} must be RANK:GLOBAL_ITR:SIGNAME (e.g. 1:5:SIGTERM); got {text!r}"
        ) from None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _run(
    args: argparse.Namespace,
    bundle: DataBundle,
    resume: Resume | None,
    decays: dict[int, float],
    peers: PeersSchedule,
    device: torch.device,
    comm_device: torch.device,
    preempt: Preemption,
    out: list[DataParallelModule],
) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    train_loader = make_loader(
        bundle.train, batch_size=args.batch_size, rank=rank, world_size=world,
        seed=args.seed, train=True, workers=args.workers,
    )  # fmt: skip
    val_loader = make_loader(
        bundle.val, batch_size=args.batch_size, rank=rank, world_size=world,
        seed=args.seed, train=False, workers=args.workers,
    )  # fmt: skip
    torch.manual_seed(args.seed)  # every rank builds the same model
    model = build_model(args.arch, bundle.num_classes).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        param_groups(model, args.weight_decay), lr=args.lr, momentum=args.momentum,
        nesterov=args.nesterov and args.momentum > 0,
    )  # fmt: skip
    schedule = LRSchedule(
        reference_lr=args.lr,
        global_batch=args.batch_size * world,
        warmup_epochs=args.warmup_epochs,
        decays=decays,
    )
    start_epoch, skip, global_itr = 0, 0, 0
    state = resume.state if resume is not None else None
    if state is not None:
        start_epoch, skip = int(state["progress"]["epoch"]), int(state["progress"]["itr"])
        global_itr = int(state["progress"]["global_itr"])
    options: dict[str, Any] = {}
    participants = world // args.nprocs_per_node
    if args.algorithm != "ar":
        options["topology"] = _topology(args, participants, peers.peers_at(start_epoch))
        if args.wire_dtype != "fp32" and args.algorithm != "adpsgd":
            options["wire_dtype"] = _WIRE[args.wire_dtype]
        if args.compression is not None:
            options["compression"] = args.compression
            options["consensus_step"] = args.consensus_step
        if args.nprocs_per_node > 1:
            options["nprocs_per_node"] = args.nprocs_per_node
        if args.algorithm == "osgp":
            options["synch_freq"] = args.synch_freq
    dp = make_data_parallel(args.algorithm, model, optimizer, **options)
    out.append(dp)
    # compile the wrapper's forward: the parameters stay the same objects, so gossip and
    # the optimizer keep acting on what the compiled graph reads
    forward = torch.compile(dp, backend=args.compile) if args.compile else dp
    if args.compile and rank == 0:
        print(f"forward compiled by torch.compile (backend {args.compile})", flush=True)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    if state is not None and resume is not None:
        fc = [p for p in model.parameters() if p.ndim == 2][-1]
        check_classes(
            bundle.num_classes, int(state.get("num_classes", fc.shape[0])), where=str(resume.path)
        )
        if state["kind"] == "rank":
            dp.load_state_dict(state["model"])
        else:  # the network average: every rank starts from it, with weight 1
            dp.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if "rng" in state and state["kind"] == "rank":
            _set_rng_state(state["rng"])
        if rank == 0:
            where = "own checkpoints" if state["kind"] == "rank" else "network average"
            print(
                f"resuming from the ranks' {where} ({resume.path.name}): epoch "
                f"{start_epoch}, iteration {skip}",
                flush=True,
            )
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    plain = nn.CrossEntropyLoss()
    log = CsvLog(args.log_dir, rank) if args.log_dir else None
    board, note = open_tensorboard(args.log_dir, enabled=args.tensorboard and rank == 0)
    if note:
        print(note, flush=True)
    progress = Progress(args.progress, enabled=rank == 0, print_freq=args.print_freq)
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
    sampler = train_loader.sampler
    assert isinstance(sampler, ResumableSampler)
    per_epoch = len(train_loader)
    if sampler.num_samples % args.batch_size == 1:
        per_epoch -= 1  # a last batch of one image: BatchNorm cannot train on it
    if args.max_iters_per_epoch:
        per_epoch = min(per_epoch, args.max_iters_per_epoch)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    step_times = Meter()
    synchronous = args.algorithm != "adpsgd"
    check_every = args.preempt_check_every or (1 if synchronous else 20)
    injected = _injected_signal(os.environ.get(_SIGNAL_HOOK))

    def save(epoch: int, itr: int, *, own: bool = False) -> None:
        """Checkpoint; ``own``: every rank writes its own (always on preemption)."""
        progress_state = {"epoch": epoch, "itr": itr, "global_itr": global_itr}
        common = {"progress": progress_state, "optimizer": optimizer.state_dict(),
                  "scaler": scaler.state_dict(), "num_classes": bundle.num_classes,
                  "args": vars(args)}  # fmt: skip
        if own or args.checkpoint_all:
            state = {"kind": "rank", "model": dp.state_dict(), "rng": _rng_state(), **common}
            save_atomic(state, checkpoint_path(args.checkpoint_dir, rank))
            return
        with dp.average_for_eval():  # a collective; rank 0 writes the average
            if rank == 0:
                state = {"kind": "average", "model": dp.module.state_dict(), **common}
                save_atomic(state, checkpoint_path(args.checkpoint_dir, None))

    def stop_here(epoch: int, itr: int) -> None:
        """After every iteration: if the ranks agree on a preemption, checkpoint and stop."""
        if injected is not None and injected[:2] == (rank, global_itr):
            os.kill(os.getpid(), injected[2])  # a real signal, through the real handler
        if itr % check_every and itr != 0:
            return
        if synchronous:
            stop = preempt.agreed(comm_device)
        else:
            stop = preempt.agreed_in_store(f"epoch{epoch}/itr{itr}")
        if not stop:
            return
        progress.end_epoch()
        if not args.checkpoint_dir:
            if rank == 0:
                print("sgp-imagenet: preempted, but no --checkpoint-dir: nothing saved")
            raise Preempted
        if not synchronous:
            dp.close()  # AD-PSGD: every exchange comes home before the state is saved
        save(epoch, itr, own=True)
        dist.barrier()  # every rank's file is complete before anyone requeues
        if rank == 0:
            print(
                f"sgp-imagenet: preemption checkpoint at epoch {epoch}, iteration {itr} "
                f"in {args.checkpoint_dir}",
                flush=True,
            )
        raise Preempted

    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        first = min(skip, per_epoch) if epoch == start_epoch else 0
        sampler.start_at(first * args.batch_size)
        if isinstance(dp, GossipDataParallel) and epoch > start_epoch and peers.changes_at(epoch):
            dp.set_topology(_topology(args, participants, peers.peers_at(epoch)))
        dp.train()
        meters = {k: Meter() for k in ("batch", "step", "data", "loss", "top1", "top5")}
        progress.start_epoch(epoch, per_epoch, first)
        tick = time.perf_counter()
        for i, (x, y) in enumerate(train_loader if first < per_epoch else ()):
            itr = first + i
            if itr >= per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if args.channels_last:
                x = x.to(memory_format=torch.channels_last)
            loaded = time.perf_counter()
            lr = schedule.lr_at(epoch, itr / per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp != "off"):
                output = forward(x)
                loss = criterion(output.float(), y)
            stepping = time.perf_counter()
            if args.amp == "fp16":
                scaler.scale(loss).backward()
                dp.scaler_step(scaler)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = time.perf_counter()
            global_itr += 1
            t1, t5 = _accuracy(output.detach().float(), y)
            meters["batch"].update(done - tick)
            meters["step"].update(done - stepping)
            meters["data"].update(loaded - tick)
            meters["loss"].update(float(loss.detach()))
            meters["top1"].update(100.0 * t1 / len(y))
            meters["top5"].update(100.0 * t5 / len(y))
            step_times.update(done - tick)
            if log is not None and (itr % args.print_freq == 0 or itr == per_epoch - 1):
                log.train_row(epoch, itr, *meters.values())
            rate = len(y) * world / max(meters["batch"].mean, 1e-9)
            progress.update(
                epoch, itr, per_epoch, loss=meters["loss"].mean, top1=meters["top1"].mean,
                lr=lr, images_per_s=rate, eta_s=(per_epoch - itr - 1) * meters["batch"].mean,
            )  # fmt: skip
            if board is not None and itr % args.print_freq == 0:
                board.add_scalar("train/loss", meters["loss"].last, global_itr)
                board.add_scalar("train/top1", meters["top1"].last, global_itr)
                board.add_scalar("train/lr", lr, global_itr)
                board.add_scalar("train/images_per_s", rate, global_itr)
            if args.checkpoint_every and global_itr % args.checkpoint_every == 0:
                save(epoch, itr + 1)
            stop_here(epoch, itr + 1)
            tick = time.perf_counter()
        progress.end_epoch()
        dp.eval()
        own = _all_sum(_evaluate(dp, val_loader, device, plain), comm_device)
        with dp.average_for_eval():
            avg = _all_sum(_evaluate(dp, val_loader, device, plain), comm_device)
        row = {
            "epoch": epoch,
            "own_top1": 100.0 * float(own[1] / own[3]),
            "average_top1": 100.0 * float(avg[1] / avg[3]),
            "average_top5": 100.0 * float(avg[2] / avg[3]),
            "average_loss": float(avg[0] / avg[3]),
            "train_loss": meters["loss"].mean,
            "elapsed_s": time.perf_counter() - started,
        }
        history.append(row)
        if log is not None:
            log.val_row(
                epoch, per_epoch, row["average_loss"], row["average_top1"], row["average_top5"]
            )
        if board is not None:
            for key in ("average_top1", "average_top5", "average_loss", "own_top1"):
                board.add_scalar(f"val/{key}", row[key], epoch)
            board.flush()
        if rank == 0:
            print(
                f"epoch {epoch} validation: network average top-1 {row['average_top1']:.2f}% "
                f"(ranks' own models, sharded: {row['own_top1']:.2f}%)",
                flush=True,
            )
        if args.checkpoint_dir:
            save(epoch + 1, 0)
        stop_here(epoch + 1, 0)
    if log is not None:
        log.close()
    if board is not None:
        board.close()
    if rank == 0 and args.log_dir:
        write_summary(
            Path(args.log_dir) / "summary.json",
            {
                "algorithm": args.algorithm,
                "world_size": world,
                "arch": args.arch,
                "dataset": args.dataset,
                "epochs": history,
                "wall_s": time.perf_counter() - started,
                "s_per_iter": step_times.mean if step_times.count else math.nan,
                "args": {k: v for k, v in vars(args).items() if k != "command"},
            },
        )
