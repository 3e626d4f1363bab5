"""The ``sgp-imagenet`` command: ``train`` and ``env``.

``main(argv) -> int`` is the console entry point. Its exit status follows one rule
(`EXIT_CODES`): 2 when the command line is wrong, found before any training; 1 when
something failed while running. Either way one line, ``sgp-imagenet: error: ...``, names
the flag or the file and what is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gossip_nn import ALGORITHMS
from sgp_imagenet.checkpoint import CheckpointError
from sgp_imagenet.data import DATASETS
from sgp_imagenet.launch import BACKENDS
from sgp_imagenet.options import WIRE_DTYPES
from sgp_imagenet.usage import FT_DEFAULTS, check_train_flags

__all__ = ["EXIT_CODES", "build_parser", "main"]

EXIT_CODES: dict[int, str] = {
    0: "training finished",
    1: "something failed while running: a lost peer, a disk that filled, a checkpoint file "
    "whose contents are broken or belong to another run",
    2: "the command line is wrong: a malformed or out-of-range value, an unknown name, "
    "flags that do not go together, or a path named on it that cannot be used as asked "
    "(missing, empty, unwritable, too small a disk); found before any training",
    75: "preempted: a checkpoint was saved (EX_TEMPFAIL: requeue and resume)",
}
"""The exit statuses of ``sgp-imagenet train``, and what each means."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (also used to generate the CLI docs)."""
    parser = argparse.ArgumentParser(
        prog="sgp-imagenet",
        description="Train image classifiers with Stochastic Gradient Push and the other "
        "gossip algorithms (Assran et al., ICML 2019, arXiv:1811.10792).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a model (launch with torchrun or srun)",
        epilog="exit status: "
        + "; ".join(f"{code}: {meaning}" for code, meaning in EXIT_CODES.items())
        + ". --debug shows the traceback of a run-time failure.",
    )
    g = train.add_argument_group("algorithm")
    g.add_argument("--algorithm", choices=ALGORITHMS, default="sgp", help="the training algorithm")
    g.add_argument(
        "--topology",
        default=None,
        help="a gossip_topology name, or a 2019 graph id 0-5 (default: "
        "npeer-dynamic-directed-exponential; dynamic-bipartite-exponential for adpsgd)",
    )
    g.add_argument(
        "--peers-per-itr-schedule",
        default="0:1",
        help="EPOCH:PEERS pairs, e.g. '0:1 30:2' (default 0:1)",
    )
    g.add_argument("--synch-freq", type=int, default=0, help="osgp's staleness bound")
    g.add_argument(
        "--wire-dtype",
        choices=tuple(WIRE_DTYPES),
        default="fp32",
        help="precision of gossip messages (not adpsgd)",
    )
    g.add_argument(
        "--compression",
        default=None,
        metavar="SPEC",
        help="send compressed differences, the average staying exact: bf16, fp16, int8, "
        "int8:stochastic, topk:F (a fraction, e.g. topk:0.01) or lowrank:R (gossip algorithms)",
    )
    g.add_argument(
        "--consensus-step",
        type=float,
        default=None,
        help="with --compression, the consensus step size in (0, 1] (default: the "
        "compressor's own)",
    )
    g.add_argument(
        "--check-finite",
        action="store_true",
        help="check every received gossip message for NaN or Inf: the run stops naming the "
        "rank that sent it, before it reaches the receiver's model (gossip algorithms)",
    )
    g.add_argument(
        "--nprocs-per-node",
        type=int,
        default=1,
        help="processes per node sharing one model: DDP inside the node, one model gossiped",
    )
    g.add_argument(
        "--legacy-schedule",
        action="store_true",
        help="the 2019 code's exact peer schedule (duplicates included), as the paper used",
    )
    m = train.add_argument_group("model and optimisation")
    m.add_argument("--arch", default="resnet50", help="a torchvision model, or small-cnn")
    m.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="images per rank (per GPU) and step (default 32, the 2019 recipe's); the "
        "global batch is this times the number of ranks",
    )
    m.add_argument(
        "--lr",
        type=float,
        default=0.1,
        help="the rate for 256 images, scaled linearly to the global batch (rank 0 prints "
        "the result at start-up)",
    )
    m.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    m.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, default=True, help="Nesterov momentum"
    )
    m.add_argument("--weight-decay", type=float, default=1e-4, help="not on BN or bias")
    m.add_argument("--epochs", type=int, default=90, help="passes over the training set")
    m.add_argument("--lr-schedule", default="30:0.1 60:0.1 80:0.1", help="EPOCH:FACTOR pairs")
    m.add_argument("--warmup-epochs", type=float, default=5.0, help="linear warm-up, per iteration")
    m.add_argument("--label-smoothing", type=float, default=0.0, help="in [0, 1)")
    m.add_argument(
        "--precise-bn",
        type=int,
        default=0,
        metavar="N",
        help="before each validation, re-estimate BatchNorm statistics for the weights "
        "being evaluated over N batches of training images (0: the running statistics)",
    )
    d = train.add_argument_group("data")
    d.add_argument("--data", default=None, help="ImageFolder root with train/ and val/")
    d.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="imagefolder with --data; synthetic or digits need no files",
    )
    d.add_argument(
        "--image-size", type=int, default=None, help="crop size (default: 224; 32 for digits)"
    )
    d.add_argument("--workers", type=int, default=4, help="data-loading processes per rank")
    d.add_argument(
        "--max-iters-per-epoch", type=int, default=0, help="cap an epoch (0: the whole set)"
    )
    r = train.add_argument_group("runtime")
    r.add_argument(
        "--amp",
        choices=("off", "bf16", "fp16"),
        default="off",
        help="autocast precision; fp16 adds a GradScaler",
    )
    r.add_argument(
        "--channels-last", action="store_true", help="NHWC memory format (faster on tensor cores)"
    )
    r.add_argument(
        "--seed", type=int, default=0, help="model init, shuffling and augmentation seed"
    )
    r.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: nccl with CUDA, gloo otherwise",
    )
    r.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="torch.compile the model's forward (backend: inductor when none is named; "
        "'eager' or 'aot_eager' to debug)",
    )
    r.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels (torch.use_deterministic_algorithms), no cuDNN autotuning",
    )
    r.add_argument(
        "--debug",
        action="store_true",
        help="show the whole traceback when a lost peer, a full disk or a broken checkpoint "
        "stops the job (default: one line)",
    )
    r.add_argument(
        "--preempt-check-every",
        type=int,
        default=0,
        help="iterations between the ranks' agreements on a preemption signal (0: every "
        "iteration; every 20 for adpsgd, whose ranks would otherwise wait for each other)",
    )
    r.add_argument(
        "--requeue",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="under SLURM, after a preemption checkpoint run 'scontrol requeue' (default on)",
    )
    f = train.add_argument_group("fault tolerance (gossip algorithms; see 'Surviving failures')")
    f.add_argument(
        "--fault-tolerant",
        action="store_true",
        help="survive lost ranks and admit new processes; ranks come from --coordinator",
    )
    f.add_argument(
        "--coordinator", default=None, metavar="HOST:PORT", help="the 'sgp-imagenet coordinator'"
    )
    f.add_argument(
        "--world-size",
        type=int,
        default=FT_DEFAULTS["world_size"],
        help="processes that form the job (0: WORLD_SIZE or SLURM_NTASKS); later ones join",
    )
    f.add_argument(
        "--min-members",
        type=int,
        default=FT_DEFAULTS["min_members"],
        help="fewest members to train on with",
    )
    f.add_argument(
        "--membership-timeout",
        type=float,
        default=FT_DEFAULTS["membership_timeout"],
        help="seconds to wait for the job to form, or to be admitted to it",
    )
    f.add_argument(
        "--gossip-timeout",
        type=float,
        default=300.0,
        help="seconds a gossip step (or, with --fault-tolerant, a collective) may take "
        "before its peer counts as lost",
    )
    o = train.add_argument_group("output")
    o.add_argument(
        "--checkpoint-dir", default=None, help="where checkpoints go (none: no checkpoints)"
    )
    o.add_argument("--checkpoint-every", type=int, default=0, help="iterations (0: epochs)")
    o.add_argument("--resume", default="auto", help="auto, none, or a checkpoint path")
    o.add_argument(
        "--checkpoint-all",
        action="store_true",
        help="every rank saves its own model (exact resume); default: rank 0 saves the "
        "network-average model",
    )
    o.add_argument(
        "--log-dir", default=None, help="per-rank CSV, TensorBoard scalars, summary.json"
    )
    o.add_argument(
        "--print-freq", type=int, default=10, help="iterations between log rows and lines"
    )
    o.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "off"),
        default="auto",
        help="rank 0's progress: a tqdm bar (auto: when stderr is a terminal) or lines",
    )
    o.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write TensorBoard scalars to LOG_DIR/tensorboard (needs the tensorboard package)",
    )
    sub.add_parser("env", help="print the launcher, rank, backend and devices detected")
    translate = sub.add_parser(
        "translate",
        help="turn a 2019 gossip_sgd.py / gossip_sgd_adpsgd.py command line into a "
        "'sgp-imagenet train' one",
    )
    translate.add_argument(
        "--script",
        choices=("gossip_sgd.py", "gossip_sgd_adpsgd.py"),
        default="gossip_sgd.py",
        help="which 2019 script the flags are for (a script name among the arguments wins)",
    )
    translate.add_argument(
        "--no-exact",
        dest="exact",
        action="store_false",
        help="translate only the flags given, not the 2019 defaults that differ from ours",
    )
    translate.add_argument(
        "legacy_args", nargs=argparse.REMAINDER, metavar="ARGS", help="the 2019 arguments"
    )
    coordinator = sub.add_parser(
        "coordinator",
        help="serve the store a fault-tolerant job agrees through (not a worker; holds no model)",
    )
    coordinator.add_argument("--port", type=int, required=True, help="TCP port (0: any free one)")
    coordinator.add_argument("--host", default="0.0.0.0", help="address to listen on")
    coordinator.add_argument(
        "--prefix", default="gossip/", help="the workers' store key prefix (default gossip/)"
    )
    plot = sub.add_parser("plot", help="draw error curves and speed from --log-dir outputs")
    plot.add_argument("log_dirs", nargs="+", metavar="LOG_DIR")
    plot.add_argument("--out", required=True, help="the PNG to write")
    plot.add_argument("--table", default=None, help="also write the summary table (markdown)")
    return parser


def _say(exc: BaseException) -> str:
    """The one line a failure prints."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"sgp-imagenet: error: {exc.filename}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return f"sgp-imagenet: error: {' '.join(text.split())}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sgp-imagenet``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "env":
            from sgp_imagenet.train import report_env

            print(report_env(os.environ))
            return 0
        if args.command == "translate":
            import shlex

            from sgp_imagenet.legacy import translate_2019

            legacy = [a for a in args.legacy_args if a != "--"]
            print(
                shlex.join(
                    [
                        "sgp-imagenet",
                        "train",
                        *translate_2019(legacy, args.script, exact=args.exact),
                    ]
                )
            )
            return 0
        if args.command == "coordinator":
            from sgp_imagenet.coordinator import serve

            if not 0 <= args.port < 65536:
                raise ValueError(f"--port must be in 0..65535; got {args.port}")
            return serve(args.host, args.port, prefix=args.prefix)
        if args.command == "plot":
            from sgp_imagenet.plot import load_runs, plot_runs, summary_table

            runs = load_runs(args.log_dirs)
            table = summary_table(runs)
            print(table)
            if args.table:
                Path(args.table).write_text(table + "\n")
            print(f"wrote {plot_runs(runs, args.out)}")
            return 0
        check_train_flags(args)
        from sgp_imagenet.train import train

        return train(args)
    except CheckpointError as exc:  # the file's contents: found while running (exit 1)
        if getattr(args, "debug", False):
            raise
        print(_say(exc), file=sys.stderr)
        return 1
    except ValueError as exc:  # the command line (exit 2)
        print(_say(exc), file=sys.stderr)
        return 2
    except OSError as exc:  # a disk that filled, a mount that went away (exit 1)
        if getattr(args, "debug", False):
            raise
        print(_say(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
