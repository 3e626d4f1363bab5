"""What makes an ``sgp-imagenet train`` command line wrong, checked before any process
group exists.

Each value on its own (its range), the flags that do not go together or need another,
and, through gossip-nn, the gossip flags at the world size the launcher gives. Every
problem is a ``ValueError`` naming the flag and the rule, which the command prints as
one line and exits 2 for. The paths the flags name are checked later, once the data set
is known (`sgp_imagenet.preflight`).
"""

from __future__ import annotations

import argparse
import math
import warnings

from sgp_imagenet.launch import detect
from sgp_imagenet.options import check_gossip_flags
from sgp_imagenet.schedule import LRSchedule, parse_epoch_pairs

__all__ = ["FT_DEFAULTS", "check_train_flags"]

FT_DEFAULTS: dict[str, object] = {"world_size": 0, "min_members": 2, "membership_timeout": 600.0}
"""The defaults of the flags that only ``--fault-tolerant`` reads."""


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _check_numbers(args: argparse.Namespace) -> None:
    """Each number flag on its own: the range it must lie in."""
    for name in ("batch_size", "epochs", "print_freq", "nprocs_per_node", "min_members"):
        if getattr(args, name) < 1:
            raise ValueError(f"{_flag(name)} must be >= 1; got {getattr(args, name)}")
    if args.image_size is not None and args.image_size < 1:
        raise ValueError(f"--image-size must be >= 1; got {args.image_size}")
    for name in (
        "synch_freq", "workers", "checkpoint_every", "max_iters_per_epoch", "preempt_check_every",
        "precise_bn", "world_size",
    ):  # fmt: skip
        if getattr(args, name) < 0:
            raise ValueError(f"{_flag(name)} must be >= 0; got {getattr(args, name)}")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be in [0, 2**63); got {args.seed}")
    for name, low, high, rule in (
        ("momentum", 0.0, 1.0, "in [0, 1)"),
        ("weight_decay", 0.0, math.inf, ">= 0 and finite"),
        ("label_smoothing", 0.0, 1.0, "in [0, 1)"),
    ):
        value = getattr(args, name)
        if not low <= value < high:
            raise ValueError(f"{_flag(name)} must be {rule}; got {value}")
    if not 0 < args.membership_timeout < math.inf:
        raise ValueError(
            f"--membership-timeout must be a positive number of seconds; got "
            f"{args.membership_timeout}"
        )
    with warnings.catch_warnings():  # (the run itself warns about milestones in warm-up)
        warnings.simplefilter("ignore")
        try:  # the schedule's owner checks the rate, the warm-up and the decays
            LRSchedule(
                reference_lr=args.lr, global_batch=args.batch_size,
                warmup_epochs=args.warmup_epochs,
                decays=parse_epoch_pairs(args.lr_schedule, flag="--lr-schedule", value=float),
            )  # fmt: skip
        except (TypeError, ValueError) as exc:
            text = str(exc)
            for name, flag in (("reference_lr", "--lr"), ("warmup_epochs", "--warmup-epochs"),
                               ("decays", "--lr-schedule")):  # fmt: skip
                if text.startswith(name):
                    raise ValueError(f"{flag}: {text}") from None
            raise ValueError(text) from None


def _check_combinations(args: argparse.Namespace) -> None:
    """Flags that do not go together, or that need another flag."""
    if args.dataset is None:
        args.dataset = "imagefolder" if args.data else None
        if args.dataset is None:
            raise ValueError("give --data DIR (an ImageFolder root) or --dataset synthetic|digits")
    if args.dataset == "imagefolder" and not args.data:
        raise ValueError("--dataset imagefolder needs --data DIR (an ImageFolder root)")
    if args.data and args.dataset != "imagefolder":
        raise ValueError(
            f"--data applies only to --dataset imagefolder; --dataset {args.dataset} reads "
            "no files: leave --data unset"
        )
    for name in ("checkpoint_every", "checkpoint_all"):
        if getattr(args, name) and not args.checkpoint_dir:
            raise ValueError(f"{_flag(name)} needs --checkpoint-dir DIR (where checkpoints go)")
    if args.coordinator and not args.fault_tolerant:
        raise ValueError("--coordinator is for --fault-tolerant runs; add --fault-tolerant")
    if not args.fault_tolerant:
        set_ = [_flag(k) for k, default in FT_DEFAULTS.items() if getattr(args, k) != default]
        if set_:
            raise ValueError(
                f"{', '.join(set_)} only {'applies' if len(set_) == 1 else 'apply'} with "
                "--fault-tolerant (the launcher sets the world size otherwise); add "
                f"--fault-tolerant or leave {'it' if len(set_) == 1 else 'them'} unset"
            )
    else:
        from sgp_imagenet.fault_tolerant import parse_address

        if args.coordinator:  # (without one, the gossip flags' check says what to add)
            parse_address(args.coordinator)
        if args.backend == "nccl":
            raise ValueError(
                "--fault-tolerant gossips over gloo (an NCCL communicator does not survive "
                "a lost peer); leave --backend at auto or set gloo"
            )
        if args.world_size and args.min_members > args.world_size:
            raise ValueError(
                f"--min-members {args.min_members} must be <= --world-size {args.world_size}"
            )
    if args.compile is not None:
        import torch

        backends = torch.compiler.list_backends(exclude_tags=())
        if args.compile not in backends:
            raise ValueError(
                f"--compile: unknown torch.compile backend {args.compile!r}; choose one of "
                f"{', '.join(backends)}"
            )


def check_train_flags(args: argparse.Namespace) -> None:
    """Check ``train``'s flags before any process group: each value, the combinations,
    and (through gossip-nn) the gossip flags at the world size the launcher gives.

    Args:
        args: ``sgp-imagenet train``'s parsed flags (``--dataset`` is filled in from
            ``--data`` when unset).

    Raises:
        ValueError: Naming the flag and the rule it breaks (the command exits 2).
    """
    _check_numbers(args)
    _check_combinations(args)
    world_size = detect().world_size  # (a malformed launcher variable is named here)
    check_gossip_flags(args, world_size)  # gossip-nn knows which option applies to which
