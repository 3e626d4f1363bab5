"""``sgp-imagenet`` end to end: the installed console script under torchrun, on real JPEG
files and on digits, and every bad input with its message."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from gossip_comm.testing import run_torchrun
from sgp_imagenet.cli import build_parser, main
from sgp_imagenet.legacy import translate_2019
from sgp_imagenet.logs import CSV_COLUMNS

SCRIPT = Path(sys.executable).parent / "sgp-imagenet"


def _image_folder(root: Path, per_class: int = 12) -> Path:
    """Two classes of real JPEGs: reddish and bluish noise (learnable at a glance)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", per_class // 2)):
        for c, name in enumerate(("red", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 90, size=(40, 40, 3))
                pixels[..., 0 if c == 0 else 2] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


def _train(tmp: Path, nproc: int, *flags: str) -> tuple[str, str]:
    args = [
        "--standalone", f"--nproc-per-node={nproc}", "--no-python", str(SCRIPT), "train",
        "--arch", "small-cnn", "--workers", "0", "--warmup-epochs", "0", "--print-freq", "1",
        "--checkpoint-dir", str(tmp / "ckpt"), "--log-dir", str(tmp / "logs"), *flags,
    ]  # fmt: skip
    result = run_torchrun(args, tmp, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout, result.stderr


@pytest.mark.slow
def test_two_ranks_learn_real_jpegs_and_write_their_outputs(tmp_path: Path) -> None:
    algorithm = "sgp"
    data = _image_folder(tmp_path / "data")
    out, _ = _train(
        tmp_path, 2, "--algorithm", algorithm, "--data", str(data), "--image-size", "32",
        "--batch-size", "4", "--epochs", "3", "--lr", "0.4", "--compile", "eager",
    )  # fmt: skip
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    losses = [e["train_loss"] for e in summary["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0], losses  # it learned
    assert summary["world_size"] == 2 and summary["algorithm"] == algorithm
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()  # rank 0: the network average
    for rank in (0, 1):
        rows = list(csv.reader((tmp_path / "logs" / f"rank{rank}.csv").open()))
        assert rows[0] == CSV_COLUMNS
        assert sum(r[-1] == "val" for r in rows[1:]) == 3  # one validation row an epoch
    assert "validation: network average top-1" in out
    assert "forward compiled by torch.compile (backend eager)" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    board.Reload()
    top1 = [e.value for e in board.Scalars("val/average_top1")]
    assert top1 == pytest.approx([e["average_top1"] for e in summary["epochs"]], rel=1e-6)
    assert {"train/loss", "train/lr", "train/images_per_s"} <= set(board.Tags()["scalars"])


@pytest.mark.slow
def test_four_ranks_osgp_on_digits(tmp_path: Path) -> None:
    # with low-rank compressed messages: the layout comes from the CNN's parameters
    out, _ = _train(
        tmp_path, 4, "--algorithm", "osgp", "--synch-freq", "1", "--dataset", "digits",
        "--batch-size", "16", "--max-iters-per-epoch", "6", "--epochs", "1",
        "--deterministic", "--compression", "lowrank:2",
    )  # fmt: skip
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert summary["world_size"] == 4 and len(summary["epochs"]) == 1
    assert sorted(p.name for p in (tmp_path / "logs").glob("rank*.csv")) == [
        f"rank{r}.csv" for r in range(4)
    ]
    assert "epoch 0 [6/6]" in out


DIGITS = ["train", "--dataset", "digits"]


def test_the_batch_default_is_the_2019_recipes_per_gpu_batch() -> None:
    # 32 images per GPU (Assran et al. 2019); 256 per rank made a 256-GPU job's global
    # batch 65,536 and its learning rate 25.6
    assert build_parser().parse_args(DIGITS).batch_size == 32
    exact = translate_2019([])  # the 2019 defaults, written out
    assert exact[exact.index("--batch-size") + 1] == "32"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "digits", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["train"], "give --data DIR"),
        (
            ["train", "--dataset", "digits", "--synch-freq", "2"],
            "--synch-freq does not apply to --algorithm sgp",
        ),
        # which flag applies to which algorithm is gossip-nn's answer, asked at the command line
        (
            [*DIGITS, "--algorithm", "ar", "--topology", "ring", "--synch-freq", "1"],
            "--topology, --synch-freq do not apply to --algorithm ar",
        ),
        (
            ["train", "--dataset", "digits", "--algorithm", "adpsgd", "--wire-dtype", "bf16"],
            "--wire-dtype does not apply to --algorithm adpsgd",
        ),
        (
            [*DIGITS, "--algorithm", "ar", "--peers-per-itr-schedule", "0:2"],
            "--peers-per-itr-schedule does not apply to --algorithm ar",
        ),
        (
            [*DIGITS, "--algorithm", "adpsgd", "--peers-per-itr-schedule", "0:1 5:2"],
            "changes the peers at epoch 5, which --algorithm adpsgd cannot do",
        ),
        (["train", "--dataset", "digits", "--precise-bn", "-1"], "--precise-bn must be >= 0"),
        (["train", "--dataset", "digits", "--lr", "-1"], "--lr: reference_lr must be > 0"),
        (["train", "--data", "/nonexistent/imagenet"], "/nonexistent/imagenet"),
        (["train", "--dataset", "digits", "--resume", "/nonexistent/ckpt.pt"], "--resume"),
        (["train", "--dataset", "digits", "--lr-schedule", "30-0.1"], "--lr-schedule"),
        (["train", "--dataset", "digits", "--compression", "top5"], "--compression: "),
        (
            ["train", "--dataset", "digits", "--compression", "topk:2"],
            "fraction must be in (0, 1]",
        ),
        (
            ["train", "--dataset", "digits", "--algorithm", "ar", "--compression", "int8"],
            "--compression does not apply to --algorithm ar",
        ),
        (
            ["train", "--dataset", "digits", "--compression", "int8", "--wire-dtype", "bf16"],
            "--wire-dtype, --compression: wire_dtype and compression are both set",
        ),
        (["train", "--dataset", "digits", "--consensus-step", "0.5"], "only applies with"),
    ],
)
def test_bad_input_exits_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_env_reports_a_slurm_launch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "slurm" in out and "gpu07" in out and "5" in out
