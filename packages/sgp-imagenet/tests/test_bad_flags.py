"""Every flag tried wrong (issue 21): each ``sgp-imagenet train`` option given a wrong
type, an out-of-range number, an unknown name or a flag it does not go with; data
directories that are missing, empty or whose splits disagree; output directories that
cannot be written, or are too small. Each must give one line naming the flag and the
rule, exit 2, and stop before any rank joins a process group. A disk that fills during
the run exits 1, naming the file, and keeps the last checkpoint.

The table runs in-process through ``main(argv)``, as rank 0 of a 4-rank torchrun job
(``RANK``/``WORLD_SIZE`` set), so the checks that need the world size run too; joining
the group fails the test. A coverage test fails when an option has no bad case.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import sgp_imagenet.train as train_module
from gossip_comm.testing import run_torchrun
from sgp_imagenet.checkpoint import checkpoint_path, load_checkpoint
from sgp_imagenet.cli import build_parser, main
from sgp_imagenet.injection import FILL_HOOK
from sgp_imagenet.preflight import CheckpointSize

SCRIPT = Path(sys.executable).parent / "sgp-imagenet"
BASE = ["--dataset", "digits", "--arch", "small-cnn", "--workers", "0"]
FT = ["--fault-tolerant", "--coordinator", "127.0.0.1:29999"]


@dataclass(frozen=True)
class Bad:
    """One bad command line: ``argv`` after ``train`` and `BASE` (``{name}`` is a path
    from the ``paths`` fixture), the exit status, the flag the line must name, and a
    phrase of the rule it must state."""

    argv: list[str]
    flag: str
    rule: str
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    base: bool = True


def _b(text: str, flag: str, rule: str, **kw: object) -> Bad:
    return Bad(text.split(), flag, rule, **kw)  # type: ignore[arg-type]


PARSE = "argparse"  # the rule of a parse-level error: argparse's own words, below
CASES: list[Bad] = [
    # ---------------------------------------------------------------- algorithm
    _b("--algorithm adam", "--algorithm", "invalid choice: 'adam'"),
    _b("--topology nosuch", "--topology", "unknown topology 'nosuch'"),
    _b("--topology 9", "--topology", "unknown graph id 9"),
    _b("--legacy-schedule --topology star", "--legacy-schedule", "only to the 2019 graphs 0-5"),
    _b("--legacy-schedule=1", "--legacy-schedule", "ignored explicit argument '1'"),
    _b("--algorithm dpsgd --topology star", "--topology", "doubly-stochastic"),
    _b("--algorithm adpsgd --topology ring", "--topology", "bipartite", env={"WORLD_SIZE": "3"}),
    _b("--algorithm adpsgd", "--topology", "world_size must be even", env={"WORLD_SIZE": "3"}),
    _b("--peers-per-itr-schedule x", "--peers-per-itr-schedule", "is not EPOCH:VALUE"),
    _b("--peers-per-itr-schedule 0:0", "--peers-per-itr-schedule", "must be >= 1"),
    _b(
        "--topology ring --peers-per-itr-schedule 0:5",
        "--peers-per-itr-schedule",
        "does not exist for 4 gossiping participants",
    ),
    Bad(
        ["--peers-per-itr-schedule", "0:1 5:9"],
        "--peers-per-itr-schedule",
        "peers_per_itr=9 does not exist for 4",
    ),  # fmt: skip  (every entry, not the first)
    _b(
        "--algorithm ar --peers-per-itr-schedule 0:2",
        "--peers-per-itr-schedule",
        "does not apply to --algorithm ar",
    ),
    Bad(
        ["--algorithm", "adpsgd", "--peers-per-itr-schedule", "0:1 5:2"],
        "--peers-per-itr-schedule",
        "which --algorithm adpsgd cannot do",
    ),
    _b("--synch-freq x", "--synch-freq", "invalid int value: 'x'"),
    _b("--algorithm osgp --synch-freq -1", "--synch-freq", "must be >= 0"),
    _b("--synch-freq 1", "--synch-freq", "does not apply to --algorithm sgp"),
    _b("--algorithm ar --synch-freq 1", "--synch-freq", "not apply to --algorithm ar"),
    _b("--wire-dtype fp8", "--wire-dtype", "invalid choice: 'fp8'"),
    _b("--algorithm adpsgd --wire-dtype bf16", "--wire-dtype", "does not apply to"),
    _b("--compression top5", "--compression", "compression"),
    _b("--compression topk:2", "--compression", "fraction must be in (0, 1]"),
    _b("--algorithm ar --compression int8", "--compression", "does not apply to"),
    _b("--compression int8 --wire-dtype bf16", "--wire-dtype", "are both set"),
    _b("--consensus-step half", "--consensus-step", "invalid float value: 'half'"),
    _b("--compression int8 --consensus-step 0", "--consensus-step", "in (0, 1]"),
    _b("--compression int8 --consensus-step nan", "--consensus-step", "in (0, 1]"),
    _b("--consensus-step 0.5", "--consensus-step", "only applies with"),
    _b("--check-finite=yes", "--check-finite", "ignored explicit argument 'yes'"),
    _b("--algorithm ar --check-finite", "--check-finite", "does not apply to --algorithm ar"),
    _b("--nprocs-per-node two", "--nprocs-per-node", "invalid int value: 'two'"),
    _b("--nprocs-per-node 0", "--nprocs-per-node", "must be >= 1"),
    _b("--nprocs-per-node 3", "--nprocs-per-node", "must divide the world size 4"),
    _b("--algorithm adpsgd --nprocs-per-node 2", "--nprocs-per-node", "does not apply"),
    # ----------------------------------------------------- model and optimisation
    _b("--arch resnet5O", "--arch", "not a torchvision classification model"),
    _b("--batch-size x", "--batch-size", "invalid int value: 'x'"),
    _b("--batch-size 0", "--batch-size", "must be >= 1"),
    _b("--lr fast", "--lr", "invalid float value: 'fast'"),
    _b("--lr -1", "--lr", "must be > 0"),
    _b("--lr nan", "--lr", "must be finite"),
    _b("--momentum x", "--momentum", "invalid float value"),
    _b("--momentum 1", "--momentum", "must be in [0, 1)"),
    _b("--momentum -0.5", "--momentum", "must be in [0, 1)"),
    _b("--nesterov=yes", "--nesterov", "ignored explicit argument 'yes'"),
    _b("--no-nesterov=no", "--no-nesterov", "ignored explicit argument 'no'"),
    _b("--weight-decay x", "--weight-decay", "invalid float value"),
    _b("--weight-decay=-1e-4", "--weight-decay", "must be >= 0 and finite"),
    _b("--weight-decay inf", "--weight-decay", "must be >= 0 and finite"),
    _b("--epochs 1.5", "--epochs", "invalid int value: '1.5'"),
    _b("--epochs 0", "--epochs", "must be >= 1"),
    _b("--lr-schedule 30-0.1", "--lr-schedule", "is not EPOCH:VALUE"),
    _b("--lr-schedule 30:0", "--lr-schedule", "must be > 0"),
    _b("--lr-schedule 60:0.1,30:0.1", "--lr-schedule", "increasing"),
    _b("--warmup-epochs x", "--warmup-epochs", "invalid float value"),
    _b("--warmup-epochs -1", "--warmup-epochs", "must be >= 0"),
    _b("--warmup-epochs inf", "--warmup-epochs", "must be finite"),
    _b("--label-smoothing x", "--label-smoothing", "invalid float value"),
    _b("--label-smoothing 1", "--label-smoothing", "must be in [0, 1)"),
    _b("--precise-bn x", "--precise-bn", "invalid int value"),
    _b("--precise-bn -1", "--precise-bn", "must be >= 0"),
    # ---------------------------------------------------------------------- data
    _b("--dataset imagenet", "--dataset", "invalid choice: 'imagenet'"),
    _b("--dataset imagefolder", "--dataset", "needs --data DIR"),
    _b("train", "--data", "give --data DIR", base=False),
    _b("--data {digits}", "--data", "applies only to --dataset imagefolder"),
    _b("--image-size big", "--image-size", "invalid int value"),
    _b("--image-size 0", "--image-size", "must be >= 1"),
    _b("--workers x", "--workers", "invalid int value"),
    _b("--workers -1", "--workers", "must be >= 0"),
    _b("--max-iters-per-epoch x", "--max-iters-per-epoch", "invalid int value"),
    _b("--max-iters-per-epoch -1", "--max-iters-per-epoch", "must be >= 0"),
    # --------------------------------------------------------------------- runtime
    _b("--amp fp8", "--amp", "invalid choice: 'fp8'"),
    _b("--channels-last=1", "--channels-last", "ignored explicit argument"),
    _b("--seed x", "--seed", "invalid int value"),
    _b("--seed -1", "--seed", "must be in [0, 2**63)"),
    _b("--backend mpi", "--backend", "invalid choice: 'mpi'"),
    _b("--compile nosuch", "--compile", "unknown torch.compile backend 'nosuch'"),
    _b("--deterministic=1", "--deterministic", "ignored explicit argument"),
    _b("--debug=1", "--debug", "ignored explicit argument"),
    _b("--preempt-check-every x", "--preempt-check-every", "invalid int value"),
    _b("--preempt-check-every -1", "--preempt-check-every", "must be >= 0"),
    _b("--requeue=no", "--requeue", "ignored explicit argument 'no'"),
    _b("--no-requeue=1", "--no-requeue", "ignored explicit argument"),
    # ----------------------------------------------------------- fault tolerance
    _b("--fault-tolerant=1", "--fault-tolerant", "ignored explicit argument"),
    _b("--fault-tolerant", "--coordinator", "--fault-tolerant needs --coordinator"),
    _b(" ".join([*FT, "--algorithm", "ar"]), "--fault-tolerant", "AR-SGD all-reduces"),
    _b(" ".join([*FT, "--backend", "nccl"]), "--backend", "gossips over gloo"),
    _b(
        " ".join([*FT, "--nprocs-per-node", "2"]),
        "--fault-tolerant",
        "does not combine with nprocs_per_node",
    ),
    _b("--coordinator 127.0.0.1:29999", "--coordinator", "is for --fault-tolerant runs"),
    _b("--fault-tolerant --coordinator nohost", "--coordinator", "must be HOST:PORT"),
    _b("--fault-tolerant --coordinator h:70000", "--coordinator", "port 1..65535"),
    _b("--world-size x", "--world-size", "invalid int value"),
    _b(" ".join([*FT, "--world-size", "-1"]), "--world-size", "must be >= 0"),
    _b("--world-size 4", "--world-size", "only applies with --fault-tolerant"),
    _b("--min-members x", "--min-members", "invalid int value"),
    _b(" ".join([*FT, "--min-members", "0"]), "--min-members", "must be >= 1"),
    _b(
        " ".join([*FT, "--world-size", "2", "--min-members", "3"]),
        "--min-members",
        "must be <= --world-size 2",
    ),
    _b("--min-members 3", "--min-members", "only applies with --fault-tolerant"),
    _b("--membership-timeout x", "--membership-timeout", "invalid float value"),
    _b(" ".join([*FT, "--membership-timeout", "0"]), "--membership-timeout", "positive"),
    _b(" ".join([*FT, "--membership-timeout", "inf"]), "--membership-timeout", "positive"),
    _b("--membership-timeout 60", "--membership-timeout", "only applies with --fault-tolerant"),
    _b("--gossip-timeout x", "--gossip-timeout", "invalid float value"),
    _b("--gossip-timeout 0", "--gossip-timeout", "must be a positive number of seconds"),
    _b("--gossip-timeout nan", "--gossip-timeout", "must be a positive number of seconds"),
    _b("--algorithm ar --gossip-timeout 20", "--gossip-timeout", "does not apply"),
    # ---------------------------------------------------------------------- output
    _b("--checkpoint-every x", "--checkpoint-every", "invalid int value"),
    _b("--checkpoint-dir {out}/c --checkpoint-every -1", "--checkpoint-every", "must be >= 0"),
    _b("--checkpoint-every 100", "--checkpoint-every", "needs --checkpoint-dir"),
    _b("--checkpoint-all=1", "--checkpoint-all", "ignored explicit argument"),
    _b("--checkpoint-all", "--checkpoint-all", "needs --checkpoint-dir"),
    _b("--resume {out}/nothing.pt", "--resume", "no checkpoint at"),
    _b("--print-freq x", "--print-freq", "invalid int value"),
    _b("--print-freq 0", "--print-freq", "must be >= 1"),
    _b("--progress fancy", "--progress", "invalid choice: 'fancy'"),
    _b("--tensorboard=yes", "--tensorboard", "ignored explicit argument 'yes'"),
    _b("--no-tensorboard=1", "--no-tensorboard", "ignored explicit argument"),
    # ------------------------------------------------- paths named on the command line
    _b("--data {missing}", "--data", "is not a directory", base=False),
    _b("--data {empty}", "--data", "train is not a directory", base=False),
    _b("--data {no_classes}", "--data", "has no class folders", base=False),
    _b("--data {no_val}", "--data", "val is not a directory", base=False),
    _b("--data {extra_train}", "--data", "only in train: cat;", base=False),
    _b("--data {extra_val}", "--data", "only in val: cat", base=False),
    _b("--data {no_images}", "--data", "has no images", base=False),
    _b("--checkpoint-dir {file}/ckpt", "--checkpoint-dir", "cannot write there (Not a directory"),
    _b("--log-dir {file}/logs", "--log-dir", "cannot write there (Not a directory"),
    _b("--checkpoint-dir {file}", "--checkpoint-dir", "cannot write there (File exists"),
]
"""The bad command lines."""

EXEMPT: dict[str, str] = {
    "-h": "prints the help and exits 0; it takes no value",
    "--help": "prints the help and exits 0; it takes no value",
}
"""Options of ``train`` with no bad case, and why."""


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Data and output directories, good and bad, for the table's ``{name}`` fields."""
    from PIL import Image

    root = tmp_path_factory.mktemp("paths")

    def folder(name: str, train: tuple[str, ...], val: tuple[str, ...] | None) -> str:
        for split, classes in (("train", train), ("val", val)):
            for cls in classes or ():
                (root / name / split / cls).mkdir(parents=True)
                pixels = np.full((8, 8, 3), 128, dtype=np.uint8)
                Image.fromarray(pixels).save(root / name / split / cls / "0.jpg")
        (root / name).mkdir(exist_ok=True)
        return str(root / name)

    (root / "no_classes" / "train").mkdir(parents=True)
    (root / "no_classes" / "val").mkdir(parents=True)
    no_images = folder("no_images", ("dog", "fish"), ("dog", "fish"))
    (Path(no_images) / "val" / "fish" / "0.jpg").rename(Path(no_images) / "val" / "fish" / "x.txt")
    (root / "file").write_text("a regular file, not a directory\n")
    return {
        "missing": str(root / "missing"),
        "empty": folder("empty", (), None),
        "no_classes": str(root / "no_classes"),
        "no_val": folder("no_val", ("dog", "fish"), None),
        "extra_train": folder("extra_train", ("cat", "dog"), ("dog",)),
        "extra_val": folder("extra_val", ("dog",), ("cat", "dog")),
        "no_images": no_images,
        "digits": folder("digits", ("dog",), ("dog",)),
        "file": str(root / "file"),
        "out": str(root / "out"),
    }


class _Joined(BaseException):
    """Raised where a rank would join the process group: nothing may get that far."""


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 of 4 under torchrun; joining a process group (or the job) fails the test."""

    def joined(*args: object, **kwargs: object) -> None:
        raise _Joined("a bad command line reached the process group")

    for name in ("_init", "connect", "TrainingRun"):
        monkeypatch.setattr(train_module, name, joined)
    for name in list(os.environ):
        if name.startswith(("SLURM_", "TORCHELASTIC_", "SGP_IMAGENET_TEST_")):
            monkeypatch.delenv(name)
    for name, value in {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0",
                        "LOCAL_WORLD_SIZE": "4"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``main(argv)``'s exit status and its non-empty stderr lines."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


def _error_line(lines: list[str]) -> str:
    """The one error line: alone, or after argparse's usage (a parse-level error)."""
    if lines and lines[0].startswith("usage: "):  # argparse: usage lines, then the error
        errors = [line for line in lines if ": error: " in line]
        assert len(errors) == 1 and lines[-1] == errors[0], lines
        assert errors[0].startswith("sgp-imagenet train: error: argument "), errors
        return errors[0]
    assert len(lines) == 1, lines
    assert lines[0].startswith("sgp-imagenet: error: "), lines
    return lines[0]


def _argv(case: Bad, paths: dict[str, str]) -> list[str]:
    argv = [arg.format(**paths) for arg in case.argv]
    if argv[:1] == ["train"]:
        return argv
    return ["train", *(BASE if case.base else []), *argv]


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(c.argv)[:60])
def test_a_bad_flag_gives_one_line_naming_it_before_training(
    case: Bad, paths: dict[str, str], no_training: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    if "--backend nccl" in " ".join(case.argv) and torch.cuda.is_available():
        pytest.skip("CUDA is available here: --backend nccl is valid")
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
    code, lines = _run(_argv(case, paths), capsys)
    line = _error_line(lines)
    assert code == case.code, (code, line)
    assert case.flag in line, line
    assert case.rule in line, line


def test_nccl_without_cuda_is_refused_before_training(
    no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: --backend nccl is valid")
    code, lines = _run(["train", *BASE, "--backend", "nccl"], capsys)
    assert code == 2 and "--backend nccl needs CUDA" in _error_line(lines)


def _train_options() -> dict[str, argparse.Action]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {o: a for a in action.choices["train"]._actions for o in a.option_strings}
    raise AssertionError("no train subcommand")


def test_every_option_has_a_bad_case_or_a_reason() -> None:
    options = _train_options()
    tried = {arg.split("=")[0] for case in CASES for arg in case.argv if arg.startswith("-")} | {
        case.flag for case in CASES
    }
    missing = sorted(set(options) - tried - set(EXEMPT))
    assert not missing, f"options with no bad case in CASES and no reason in EXEMPT: {missing}"
    assert set(EXEMPT) <= set(options), "EXEMPT names an option train does not have"
    named = {case.flag for case in CASES}
    # each option (other than EXEMPT) is the one a case's error line must name
    unnamed = sorted({a.option_strings[0] for o, a in options.items() if o not in EXEMPT}
                     - {options[f].option_strings[0] for f in named if f in options})  # fmt: skip
    assert not unnamed, f"options that no case expects the error to name: {unnamed}"


def test_the_exit_codes_are_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0: training finished; 1: something failed while running" in text
    assert "2: the command line is wrong" in text


# ------------------------------------------------------------------ unwritable and full


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[object]:
    """``mount(options) -> Path``: a fresh tmpfs under ``tmp_path`` (root only; skipped
    where it cannot be mounted), unmounted at the end."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        if not _is_root():
            pytest.skip("mounting a tmpfs needs root")
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("flag", ["--checkpoint-dir", "--log-dir"])
def test_a_read_only_mount_is_refused(
    flag: str, tmpfs: object, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    where = tmpfs("ro,size=1m")  # type: ignore[operator]
    code, lines = _run(["train", *BASE, flag, str(where / "out")], capsys)
    line = _error_line(lines)
    assert code == 2 and f"{flag} {where / 'out'}: cannot write there" in line, line
    assert "Read-only file system" in line, line


def test_a_checkpoint_dir_without_room_is_refused_with_the_numbers(
    tmpfs: object, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    where = tmpfs("size=1m")  # type: ignore[operator]
    argv = ["train", "--dataset", "digits", "--arch", "resnet18", "--checkpoint-dir", str(where)]
    code, lines = _run(argv, capsys)
    line = _error_line(lines)
    size = CheckpointSize.of("resnet18", 10, momentum=0.9)
    assert code == 2 and line.startswith(f"sgp-imagenet: error: --checkpoint-dir {where}: "), line
    assert f"but rank 0 needs about {3 * size.total / 1e6:.1f} MB" in line, line
    assert f"model {size.model / 1e6:.1f} MB, optimizer {size.optimizer / 1e6:.1f} MB" in line
    assert size.optimizer == sum(p.numel() for p in _resnet18().parameters()) * 4


def _resnet18() -> torch.nn.Module:
    from sgp_imagenet.models import build_model

    with torch.device("meta"):
        return build_model("resnet18", 10)


# -------------------------------------------------------------- the real console script


def _script(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE"))}
    return subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, timeout=120,
                          env={**clean, **(env or {})}, check=False)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "code", "said"),
    [
        (["--batch-size", "0"], 2, "sgp-imagenet: error: --batch-size must be >= 1; got 0"),
        (["--lr", "fast"], 2, "argument --lr: invalid float value: 'fast'"),
        (["--checkpoint-dir", "/proc/version/ckpt"], 2, "--checkpoint-dir /proc/version/ckpt"),
    ],
)
def test_the_console_script_exits_with_the_status(argv: list[str], code: int, said: str) -> None:
    done = _script("train", *BASE, *argv)
    assert done.returncode == code, done.stderr[-2000:]
    assert said in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.faults
def test_two_ranks_both_refuse_a_graph_that_does_not_exist_at_their_world_size(
    tmp_path: Path,
) -> None:
    args = [
        "--standalone", "--nproc-per-node=2", "--max-restarts=0", "--log-dir",
        str(tmp_path / "torchrun"), "--redirects", "3", "--no-python", str(SCRIPT), "train",
        *BASE, "--peers-per-itr-schedule", "0:2",
    ]  # fmt: skip
    done = run_torchrun(args, tmp_path, timeout=120)  # (a hang fails here)
    assert done.returncode != 0
    errs = {int(p.parent.name): p.read_text() for p in (tmp_path / "torchrun").rglob("stderr.log")}
    assert sorted(errs) == [0, 1], errs
    for rank, err in errs.items():
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, (rank, lines)
        assert lines[0].startswith("sgp-imagenet: error: --topology, --peers-per-itr-schedule:")
        assert "peers_per_itr=2 does not exist for 2 gossiping participants" in lines[0]
        assert "(the launcher starts 2 ranks)" in lines[0]
    assert "exitcode  : 2" in done.stderr


@pytest.mark.faults
@pytest.mark.parametrize("debug", [False, True])
def test_a_disk_that_fills_during_the_run_exits_1_and_keeps_the_last_checkpoint(
    debug: bool, tmpfs: object, tmp_path: Path
) -> None:
    where = tmpfs("size=8m")  # type: ignore[operator]
    ckpt = where / "ckpt"
    env = {
        "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()), FILL_HOOK: f"0:3:{where / 'filler'}",
    }  # fmt: skip
    done = _script(
        "train", *BASE, "--batch-size", "16", "--epochs", "1", "--max-iters-per-epoch", "6",
        "--checkpoint-dir", str(ckpt), "--checkpoint-every", "2", "--progress", "lines",
        "--no-tensorboard", *(["--debug"] if debug else []), env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    newest = checkpoint_path(ckpt, None)
    said = f"sgp-imagenet: error: {newest}: No space left on device while writing a checkpoint"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if debug:
        assert "Traceback" in done.stderr and "OSError: [Errno 28] No space" in lines[-1]
    else:
        assert len(lines) == 1 and lines[0].startswith(said), lines
    # the checkpoint of iteration 2 is whole; the one of iteration 4 left nothing behind
    assert load_checkpoint(newest)["progress"]["global_itr"] == 2
    assert not newest.with_name(newest.name + ".tmp").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.faults
def test_a_rank_whose_disk_fills_stops_the_job_and_the_other_says_why(
    tmpfs: object, tmp_path: Path
) -> None:
    # 2 ranks under torchrun; rank 0 writes the checkpoints, and its disk fills after
    # iteration 3: it stops with its own line, and rank 1, whose next exchange with it
    # fails, gives rank 0's reason instead of calling it lost; neither waits for the
    # gossip timeout (a hang fails at the torchrun timeout)
    where = tmpfs("size=8m")  # type: ignore[operator]
    logs = tmp_path / "torchrun"
    args = [
        "--standalone", "--nproc-per-node=2", "--max-restarts=0", "--log-dir", str(logs),
        "--redirects", "3", "--no-python", str(SCRIPT), "train", *BASE, "--batch-size", "16",
        "--epochs", "1", "--max-iters-per-epoch", "8", "--checkpoint-dir", str(where / "ckpt"),
        "--checkpoint-every", "2", "--progress", "lines", "--no-tensorboard",
        "--gossip-timeout", "100",
    ]  # fmt: skip
    os.environ[FILL_HOOK] = f"0:3:{where / 'filler'}"
    try:
        done = run_torchrun(args, tmp_path, timeout=90)
    finally:
        del os.environ[FILL_HOOK]
    errs = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert done.returncode != 0 and sorted(errs) == [0, 1], done.stderr[-3000:]
    said = {
        r: [ln for ln in e.splitlines() if ln.startswith("sgp-imagenet:")] for r, e in errs.items()
    }
    assert len(said[0]) == 1 and "No space left on device" in said[0][0], errs[0][-3000:]
    # (torchrun SIGTERMs rank 1 once rank 0 has exited; the line it prints then is not
    # the one that says why it stopped)
    stopped = [ln for ln in said[1] if " stopped at " in ln]
    assert len(stopped) == 1, errs[1][-3000:]
    assert stopped[0].startswith("sgp-imagenet: rank 1 stopped at iteration "), stopped
    assert "it stopped after another rank did (rank 0 failed: " in stopped[0], stopped
    assert "No space left on device" in stopped[0] and "is lost" not in stopped[0]
    assert "exitcode  : 1" in done.stderr and "Traceback" not in errs[1]
