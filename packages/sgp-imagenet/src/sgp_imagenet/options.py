"""The command line's gossip flags as gossip-nn options, checked by gossip-nn.

The application passes every gossip flag through; gossip-nn's
[`GossipOptions`][gossip_nn.GossipOptions] knows which option applies to which algorithm
and checks the values. The command asks it before any process starts, so a flag that the
chosen algorithm would ignore is an error at the command line rather than a warning
in every rank's log.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from gossip_nn import SET_TOPOLOGY_ALGORITHMS, GossipOptions, gossip_options
from sgp_imagenet.schedule import PeersSchedule

__all__ = [
    "FLAGS",
    "SHARED_FLAGS",
    "WIRE_DTYPES",
    "check_gossip_flags",
    "shared_setup",
    "wrapper_options",
]

WIRE_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""``--wire-dtype`` choices and the dtype gossip messages travel in (``None``: fp32)."""

FLAGS: dict[str, str] = {
    "topology": "--topology",
    "peers_per_itr": "--peers-per-itr-schedule",
    "legacy_phone_book": "--legacy-schedule",
    "wire_dtype": "--wire-dtype",
    "compression": "--compression",
    "consensus_step": "--consensus-step",
    "nprocs_per_node": "--nprocs-per-node",
    "synch_freq": "--synch-freq",
    "timeout": "--gossip-timeout",
    "check_finite": "--check-finite",
}
"""The `GossipOptions` field each gossip flag sets."""


def _graph(text: str) -> str | int:
    """A ``--topology`` value: a 2019 graph id (``"0"``-``"5"``) as an int, else the name."""
    return int(text) if text.isdigit() else text


def wrapper_options(args: argparse.Namespace, *, peers_per_itr: int = 1) -> dict[str, Any]:
    """The keyword options of ``make_data_parallel`` that the gossip flags set.

    Only what the user chose: a flag left at its default gives the option's default, so
    gossip-nn supplies each algorithm's own defaults (AD-PSGD's bipartite graph).

    Args:
        args: The parsed ``sgp-imagenet train`` arguments.
        peers_per_itr: Out-peers per step at the epoch the run starts in (from
            ``--peers-per-itr-schedule``).

    Returns:
        ``{option: value}`` for every gossip option set away from its default.
    """
    chosen: dict[str, Any] = {
        "peers_per_itr": peers_per_itr,
        "legacy_phone_book": args.legacy_schedule,
        "wire_dtype": WIRE_DTYPES[args.wire_dtype],
        "compression": args.compression,
        "consensus_step": args.consensus_step,
        "nprocs_per_node": args.nprocs_per_node,
        "synch_freq": args.synch_freq,
        "timeout": args.gossip_timeout,
        "check_finite": args.check_finite,
    }
    if args.topology is not None:
        chosen["topology"] = _graph(args.topology)
    defaults = GossipOptions()
    return {k: v for k, v in chosen.items() if k == "topology" or getattr(defaults, k) != v}


def check_gossip_flags(args: argparse.Namespace, world_size: int | None = None) -> None:
    """Check the gossip flags with gossip-nn, as the ranks will use them.

    Every peer count in ``--peers-per-itr-schedule`` is checked, not only the first.

    Args:
        args: The parsed ``sgp-imagenet train`` arguments.
        world_size: The job's ranks, when the launcher has said (``WORLD_SIZE``,
            ``SLURM_NTASKS``): the graph, the peer counts and ``--nprocs-per-node`` are
            then checked at that size too. Not with ``--fault-tolerant``, whose members
            come and go.

    Raises:
        ValueError: Naming the flag, if a value is invalid, if ``--algorithm`` ignores
            a flag that was set, or if the job cannot work at ``world_size``.
    """
    schedule = PeersSchedule.parse(args.peers_per_itr_schedule)
    changes = [epoch for epoch in schedule.milestones if schedule.changes_at(epoch) and epoch]
    if changes and args.algorithm not in SET_TOPOLOGY_ALGORITHMS:
        raise ValueError(
            f"--peers-per-itr-schedule changes the peers at epoch {changes[0]}, which "
            f"--algorithm {args.algorithm} cannot do while training (it can: "
            f"{', '.join(SET_TOPOLOGY_ALGORITHMS)})"
        )
    for peers in sorted({1, *schedule.milestones.values()}):
        try:
            options = gossip_options(args.algorithm, **wrapper_options(args, peers_per_itr=peers))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{_named(exc)}: {exc}") from None
        if args.fault_tolerant:
            _check_fault_tolerant(args, options)
        ignored = [FLAGS[name] for name in options.ignored_by(args.algorithm)]
        if ignored:
            raise ValueError(
                f"{', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not apply to "
                f"--algorithm {args.algorithm}; leave {'it' if len(ignored) == 1 else 'them'} "
                "unset"
            )
        if world_size is not None and not args.fault_tolerant:
            try:
                options.check_world_size(args.algorithm, world_size)
            except ValueError as exc:
                raise ValueError(
                    f"{_named(exc)}: {exc} (the launcher starts {world_size} "
                    f"rank{'s' if world_size != 1 else ''})"
                ) from None


def _named(exc: BaseException) -> str:
    """The flags whose `GossipOptions` field ``exc``'s message names."""
    named = [flag for name, flag in FLAGS.items() if name in str(exc)]
    return ", ".join(named) or "gossip flags"


def _check_fault_tolerant(args: argparse.Namespace, options: GossipOptions) -> None:
    """``--fault-tolerant``: what gossip-nn refuses, named by flag, before any process starts."""
    if not args.coordinator:
        raise ValueError(
            "--fault-tolerant needs --coordinator HOST:PORT (start one with "
            "'sgp-imagenet coordinator --port P')"
        )
    try:
        options.check_fault_tolerance(args.algorithm, planned=True)
    except ValueError as exc:
        named = [flag for name, flag in FLAGS.items() if name in str(exc)]
        where = f" ({', '.join(named)})" if named else ""
        raise ValueError(f"--fault-tolerant: {exc}{where}") from None


SHARED_FLAGS = (
    "dataset", "image_size", "batch_size", "lr", "momentum", "nesterov", "weight_decay",
    "epochs", "lr_schedule", "warmup_epochs", "label_smoothing", "max_iters_per_epoch",
    "peers_per_itr_schedule", "amp", "seed", "checkpoint_all",
)  # fmt: skip
"""The ``train`` flags every rank must share beyond gossip-nn's own check (the algorithm,
the gossip options, the model): the data, the optimisation and the schedule."""


def shared_setup(args: argparse.Namespace) -> dict[str, str]:
    """What every rank must agree on, for gossip-nn's ``check_same_setup``: this
    package's version and `SHARED_FLAGS`' values."""
    from sgp_imagenet import __version__

    setup = {"sgp-imagenet version": __version__}
    for name in SHARED_FLAGS:
        setup[f"flag --{name.replace('_', '-')}"] = repr(getattr(args, name))
    return setup
