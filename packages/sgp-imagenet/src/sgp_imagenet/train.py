"""The entry point behind ``sgp-imagenet train``: set up the rank, run, tear down.

One process per rank (torchrun or SLURM srun). `train` chooses the device and backend,
checks the data and the resume path before any process group exists, joins the group,
and hands the rest to a [`TrainingRun`][sgp_imagenet.run.TrainingRun]: every algorithm
through gossip-nn's ``make_data_parallel``, the plain PyTorch loop, both the ranks' own
models and the exact network average evaluated after each epoch.

A preemption signal (SIGUSR1, SIGTERM) stops every rank after the same iteration; each
rank then writes its own checkpoint (model, push-sum state and OSGP's rounds in flight,
optimizer, scaler, RNG and the position in the epoch), and a relaunch resumes exactly
there: the same batches, learning rates and updates as a run that was never stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Mapping

import torch
import torch.distributed as dist

from gossip_comm import MembershipError
from sgp_imagenet.checkpoint import check_resume, choose_resume
from sgp_imagenet.data import build_datasets
from sgp_imagenet.failure import LOST_AFTER, Heartbeat, PeerFailure, first_line, is_peer_failure
from sgp_imagenet.fault_tolerant import Leaving, connect
from sgp_imagenet.launch import LaunchEnv, choose_backend, describe, detect
from sgp_imagenet.preempt import EXIT_PREEMPTED, Preemption, requeue
from sgp_imagenet.preflight import check_outputs
from sgp_imagenet.run import Preempted, TrainingRun

__all__ = ["EXIT_STOPPED", "report_env", "train"]

EXIT_STOPPED = 1
"""A run that could not go on: a peer lost without ``--fault-tolerant``, or a
fault-tolerant run left with too few members or without its coordinator."""


def report_env(environ: Mapping[str, str]) -> str:
    """What ``sgp-imagenet env`` prints."""
    env = detect(environ)
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return describe(
        env, backend=choose_backend("auto", cuda), devices=devices or ["cpu"], environ=environ
    )


def _init(env: LaunchEnv, backend: str) -> None:
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and attempt > 0:
        # A worker that torchrun restarted: the agent's store outlives the attempts, and
        # still holds the failed attempt's gloo addresses under the keys a plain env://
        # init would read (gloo then connects to a dead process). Meet under a prefix
        # of this attempt's own.
        agent = dist.TCPStore(  # type: ignore[attr-defined]
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False
        )
        store = dist.PrefixStore(f"sgp_imagenet/attempt{attempt}/", agent)  # type: ignore[attr-defined]
        dist.init_process_group(
            backend, store=store, rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )  # fmt: skip
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)  # env:// from torchrun
    else:
        dist.init_process_group(
            backend,
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
        )


def _device(env: LaunchEnv, args: argparse.Namespace) -> torch.device:
    """This rank's device, with the kernels' determinism settings applied."""
    cuda = torch.cuda.is_available()
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True
    return device


def train(args: argparse.Namespace) -> int:
    """Run one training job on this rank; returns the exit status.

    0 when training finished, `sgp_imagenet.preempt.EXIT_PREEMPTED` (75) when a
    preemption signal stopped it after a checkpoint, `EXIT_STOPPED` (1) when a
    run could not go on (a peer lost without ``--fault-tolerant``; too few members, or
    the coordinator lost, with it).
    """
    env = detect()
    # fault tolerance gossips over gloo, whatever the devices (see --fault-tolerant)
    backend = (
        "gloo" if args.fault_tolerant else choose_backend(args.backend, torch.cuda.is_available())
    )
    device = _device(env, args)
    comm_device = device if backend == "nccl" else torch.device("cpu")
    # bad data, an unknown model, an unusable output directory or --resume path fail
    # here, on every rank, before any process group (the flags' values were checked by
    # the command line)
    bundle = build_datasets(args.dataset, args.data, image_size=args.image_size, seed=args.seed)
    check_outputs(args, bundle.num_classes, env.rank)
    check_resume(args.resume)
    with Preemption() as preempt, contextlib.ExitStack() as stack:
        ft, left, broken, heartbeat = None, False, False, None
        try:
            if args.fault_tolerant:
                ft = connect(args, args.world_size or env.world_size)
            else:  # the heartbeat tells whom a failure lost (see sgp_imagenet.failure)
                _init(env, backend)
                heartbeat = Heartbeat(dist.get_rank(), dist.get_world_size())
                stack.enter_context(heartbeat)
            joining = ft is not None and ft.joined_from is not None
            resume = None if joining else choose_resume(
                args.resume, args.checkpoint_dir, dist.get_rank()
            )  # fmt: skip
            with TrainingRun(
                args, bundle, device=device, comm_device=comm_device, preempt=preempt,
                fault_tolerance=ft,
            ) as run:  # fmt: skip
                run.restore(resume)
                _run(run, heartbeat)
            if ft is not None:
                ft.membership.finish()  # a process that comes to join now is told
            return 0
        except Preempted:
            if ft is not None:
                ft.membership.finish()
            if dist.get_rank() == 0:
                note = requeue() if args.requeue else "--no-requeue: not requeued"
                print(f"sgp-imagenet: preempted; checkpoint saved; {note}", flush=True)
            return EXIT_PREEMPTED
        except MembershipError as err:  # the store is lost, too few left, or left out
            print(f"sgp-imagenet: stopped: {err}", flush=True)
            return EXIT_STOPPED
        except Leaving:  # alone: the others train on, and its restart joins them
            left = True
            return EXIT_PREEMPTED
        except PeerFailure as failure:  # without fault tolerance: the job cannot go on
            broken = True
            print(failure.line, file=sys.stderr, flush=True)
            _stay_for_the_others(heartbeat, args.gossip_timeout)
            return EXIT_STOPPED
        except BaseException as err:  # (--debug: the traceback follows)
            broken = True  # the others are not at a barrier: go without one
            if heartbeat is not None and isinstance(err, Exception) and not is_peer_failure(err):
                # a failure of this rank's own (a full disk, a bad file): tell the others
                heartbeat.report_stop(f"rank {dist.get_rank()} failed: {first_line(err)}")
                _stay_for_the_others(heartbeat, args.gossip_timeout)
            raise
        finally:
            if dist.is_initialized() and not left and not broken:
                _leave_together(fault_tolerant=ft is not None)
                dist.destroy_process_group()


def _stay_for_the_others(heartbeat: Heartbeat | None, gossip_timeout: float) -> None:
    """If this process serves the job's c10d store (rank 0 of an ``env://`` group, when
    torchrun's agent does not), close its connections to the others, so that none waits
    on it, but keep the store up until they have stopped (`Heartbeat.linger`)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if heartbeat is None or agent or not dist.is_initialized() or dist.get_rank() != 0:
        return
    closing = threading.Thread(target=dist.destroy_process_group, daemon=True)
    closing.start()  # (the heartbeat holds the store: it stays up)
    closing.join(timeout=5.0)
    heartbeat.linger(gossip_timeout + LOST_AFTER)


def _leave_together(*, fault_tolerant: bool) -> None:
    """Wait for every rank before the group goes: a rank that tears its group down while a
    peer is still closing its own can abort that peer's process. With fault tolerance a
    member may be gone by now; the barrier then times out (after the gossip timeout) and
    the others leave anyway."""
    try:
        dist.barrier()  # every rank's wrapper is closed before the group goes
    except RuntimeError:
        if not fault_tolerant:
            raise


def _run(run: TrainingRun, heartbeat: Heartbeat | None) -> None:
    """Train; a fault-tolerant run that cannot go on writes this rank's checkpoint first.

    Raises:
        PeerFailure: Without fault tolerance, when a peer is lost (not with ``--debug``,
            which lets the error itself through).
    """
    try:
        run.run()
    except MembershipError:
        if run.args.checkpoint_dir:
            run.save(own=True)  # this process's state, as it was when the job stopped
            who = f"member {run.generations.member}" if run.generations else f"rank {run.rank}"
            print(f"sgp-imagenet: {who} wrote its checkpoint in {run.args.checkpoint_dir}")
        raise
    except Exception as err:
        if heartbeat is None or run.args.debug or not is_peer_failure(err):
            raise
        raise PeerFailure(heartbeat.describe(err, where=run.where())) from err
