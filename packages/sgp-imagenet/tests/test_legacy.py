"""The 2019 flag mapping: every equivalent is a real option, and translations of 2019
commands (the 2019 job scripts' among them) match hand-written ``sgp-imagenet train``
arguments that ``build_parser()`` accepts."""

from __future__ import annotations

import argparse
import doctest
import re
import shlex

import pytest

from sgp_imagenet import legacy
from sgp_imagenet.cli import build_parser
from sgp_imagenet.legacy import LEGACY_FLAGS, SCRIPTS, LegacyFlag, translate_2019

SGP, ADPSGD = SCRIPTS


def _train_parser() -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            parser: argparse.ArgumentParser = action.choices["train"]
            return parser
    raise AssertionError("build_parser() has no subcommands")


def _parses(args: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["train", *args])


def _sample(action: argparse.Action) -> list[str]:
    """A value the option accepts."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(next(iter(action.choices)))]
    if action.type is int:
        return ["1"]
    return ["0.5"] if action.type is float else ["x"]


@pytest.mark.parametrize(
    "row", [r for r in LEGACY_FLAGS if r.equivalent], ids=lambda r: f"{r.script}:{r.flag}"
)
def test_every_equivalent_is_an_option_of_train(row: LegacyFlag) -> None:
    options = _train_parser()._option_string_actions
    assert row.equivalent is not None
    for option in row.equivalent.split():
        assert option in options, f"{row.flag}: {option} is not a train option"
        _parses([option, *_sample(options[option])])


def test_the_table_covers_both_scripts_once_per_flag() -> None:
    for script in SCRIPTS:
        flags = [r.flag for r in LEGACY_FLAGS if r.script == script]
        assert len(flags) == len(set(flags)), script
    counts = {s: sum(r.script == s for r in LEGACY_FLAGS) for s in SCRIPTS}
    assert counts == {SGP: 40, ADPSGD: 34}
    for row in LEGACY_FLAGS:
        assert row.flag.startswith("--") and row.note, row
        if row.equivalent is None:  # the note says what translate_2019 does with it
            assert "Dropped" in row.note or "raise" in row.note, row


# srun lines of the 2019 job scripts (SGP, D-PSGD, AD-PSGD over Ethernet; AR over IB)
SGP_ETH = (
    "srun python -u gossip_sgd.py --batch_size 256 --distributed True --lr 0.1 "
    "--num_dataloader_workers 16 --num_epochs 90 --nesterov True --warmup True "
    "--push_sum True --graph_type 0 --schedule 30 0.1 60 0.1 80 0.1 --backend 'tcp' "
    "--train_fast False --master_port 40100 --tag 'SGP_ETH' --print_freq 100 "
    "--verbose False --single_threaded False --overlap False"
)
DPSGD_ETH = (
    "--resume True --batch_size 256 --distributed True --lr 0.1 --num_dataloader_workers 16 "
    "--num_epochs 90 --nesterov True --warmup True --push_sum False --graph_type 1 "
    "--schedule 30 0.1 60 0.1 80 0.1 --backend 'tcp' --train_fast False --master_port 40100 "
    "--tag 'DPSGD_ETH' --print_freq 100 --verbose False --single_threaded False "
    "--overlap False --all_reduce False --seed 1"
)
AR_IB = (
    "--batch_size 256 --lr 0.1 --num_dataloader_workers 16 --num_epochs 90 --nesterov True "
    "--warmup True --push_sum False --schedule 30 0.1 60 0.1 80 0.1 --train_fast False "
    "--master_port 40100 --tag 'AR-SGD-IB' --print_freq 100 --verbose False "
    "--graph_type -1 --all_reduce True --seed 1 --network_interface_type 'infiniband' "
    "--checkpoint_dir /ckpt --dataset_dir /data/imagenet"
)
ADPSGD_ETH = (
    "srun python -u gossip_sgd_adpsgd.py --batch_size 256 --distributed True --lr 0.1 "
    "--num_dataloader_workers 16 --num_epochs 90 --nesterov True --warmup True "
    "--push_sum False --graph_type 1 --schedule 30 0.1 60 0.1 80 0.1 --backend 'tcp' "
    "--train_fast True --master_port 40100 --tag 'ADPSGD_ETH' --print_freq 50 "
    "--verbose True --bilat True --single_threaded False --overlap False "
    "--all_reduce False --shared_fpath 'results_dir/itr32.txt'"
)
COMMON = (
    "--batch-size 256 --lr 0.1 --nesterov --epochs 90 --lr-schedule '30:0.1 60:0.1 80:0.1' "
    "--warmup-epochs 5 --workers 16"
)

EXPECTED = [
    pytest.param(
        SGP_ETH, SGP, True,
        "--algorithm sgp --topology 0 --legacy-schedule " + COMMON
        + " --seed 47 --backend gloo --checkpoint-all --print-freq 100",
        id="sgp-job-script",
    ),
    pytest.param(
        DPSGD_ETH, SGP, True,
        "--algorithm dpsgd --topology 1 --legacy-schedule " + COMMON
        + " --seed 1 --backend gloo --resume auto --checkpoint-all --print-freq 100",
        id="dpsgd-job-script",
    ),
    pytest.param(
        AR_IB, SGP, True,
        "--algorithm ar --batch-size 256 --lr 0.1 --nesterov --epochs 90 "
        "--lr-schedule '30:0.1 60:0.1 80:0.1' --warmup-epochs 5 --data /data/imagenet "
        "--workers 16 --seed 1 --checkpoint-dir /ckpt/AR-SGD-IB --checkpoint-all "
        "--log-dir /ckpt/AR-SGD-IB --print-freq 100",
        id="ar-job-script",
    ),
    pytest.param(
        ADPSGD_ETH, SGP, True,  # the script named in the command wins
        "--algorithm adpsgd --topology 1 --legacy-schedule " + COMMON
        + " --seed 47 --backend gloo --checkpoint-all --print-freq 50",
        id="adpsgd-job-script",
    ),
    pytest.param(
        "--push_sum True --overlap True --synch_freq 2 --graph_type=5 "
        "--peers_per_itr_schedule 0 1 30 2 --nesterov False",
        SGP, False,
        "--algorithm osgp --topology 5 --peers-per-itr-schedule '0:1 30:2' --synch-freq 2 "
        "--no-nesterov",
        id="osgp",
    ),
    pytest.param(
        "--push_sum False --synch_freq 0 --peers_per_itr_schedule 0 2", SGP, False,
        "--algorithm dpsgd --peers-per-itr-schedule 0:2",
        id="dpsgd-drops-synch-freq-0",
    ),
    pytest.param(
        "--all_reduce True --graph_type 5 --peers_per_itr_schedule 0 2 --overlap True",
        SGP, False, "--algorithm ar", id="ar-ignores-gossip-flags",
    ),
    pytest.param(
        "--graph_type 3 --peers_per_itr_schedule 0 1 30 4 --mixing_strategy 0 --bilat True",
        ADPSGD, False, "--algorithm adpsgd --topology 3", id="adpsgd-only-epoch-0-peers",
    ),
    pytest.param(
        "--schedule 60 0.1 30 0.1 80 0.1 --peers_per_itr_schedule 30 2 0 1 60 4",
        SGP, False,
        "--algorithm sgp --peers-per-itr-schedule '0:1 30:2 60:4' "
        "--lr-schedule '30:0.1 60:0.1 80:0.1'",
        id="schedules-sorted",
    ),
    pytest.param(
        "--schedule=30.5 0.1 -1 0.5 90.0 1e-2", SGP, False,
        "--algorithm sgp --lr-schedule '0:0.5 31:0.1 90:1e-2'",
        id="schedule-fractional-and-negative-epochs",
    ),
    pytest.param(
        "--schedule 30 0.1 30 0.2", SGP, False,  # 2019 kept the last of a repeated epoch
        "--algorithm sgp --lr-schedule 30:0.2", id="schedule-repeated-epoch",
    ),
    pytest.param(
        "--batch 64 --fp16 --amp --apex_ddp --num_iterations_per_training_epoch 5 "
        "--backend mpi --resume False --checkpoint_all False --weight_decay 5e-5",
        SGP, True,
        "--algorithm sgp --legacy-schedule --batch-size 64 --no-nesterov --weight-decay 5e-5 "
        "--warmup-epochs 0 --max-iters-per-epoch 5 --amp fp16 --seed 47",
        id="prefix-fp16-and-pins",
    ),
    pytest.param(
        "--num_iterations_per_training_epoch -1 --checkpoint_dir /c --warmup False",
        SGP, False,
        "--algorithm sgp --warmup-epochs 0 --checkpoint-dir /c --log-dir /c",
        id="whole-epochs",
    ),
    pytest.param(
        "", SGP, True,
        "--algorithm sgp --legacy-schedule --batch-size 32 --no-nesterov --warmup-epochs 0 "
        "--seed 47 --checkpoint-all",
        id="2019-defaults",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("command", "script", "exact", "expected"), EXPECTED)
def test_translations(command: str, script: str, exact: bool, expected: str) -> None:
    translated = translate_2019(shlex.split(command), script, exact=exact)
    assert translated == shlex.split(expected)
    _parses(translated)


def test_the_translation_means_what_2019_did() -> None:
    args = _parses(translate_2019(shlex.split(SGP_ETH)))
    assert (args.algorithm, args.topology, args.legacy_schedule) == ("sgp", "0", True)
    assert (args.batch_size, args.nesterov, args.warmup_epochs, args.seed) == (256, True, 5, 47)
    assert args.lr_schedule == "30:0.1 60:0.1 80:0.1" and args.checkpoint_all


def test_script_given_as_a_path() -> None:
    out = translate_2019(
        ["--graph_type", "1"], "/old/stochastic_gradient_push/gossip_sgd_adpsgd.py"
    )
    assert out[:2] == ["--algorithm", "adpsgd"]


NO_EQUIVALENT_SAMPLES = {"bool": "True", "int": "0", "str": "x", "ints": "0 1", "floats": "0 1"}


@pytest.mark.parametrize(
    "row", [r for r in LEGACY_FLAGS if r.equivalent is None], ids=lambda r: f"{r.script}:{r.flag}"
)
def test_flags_without_equivalent_are_dropped_for_harmless_values(row: LegacyFlag) -> None:
    value = "False" if row.flag == "--all_reduce" else NO_EQUIVALENT_SAMPLES.get(row.value, "")
    baseline = translate_2019([], row.script, exact=False)
    assert translate_2019([row.flag, *value.split()], row.script, exact=False) == baseline


ERRORS = [
    (["--distributed", "False"], SGP, "--distributed"),
    (["--resume_epoch", "3"], SGP, "--resume_epoch"),
    (["--mixing_strategy", "2"], SGP, "--mixing_strategy"),
    (["--mixing_strategy", "-1", "--graph_type", "1"], ADPSGD, "--mixing_strategy"),
    (["--push_sum", "False", "--overlap", "True"], SGP, "--overlap"),
    (["--synch_freq", "2"], SGP, "--synch_freq"),  # sgp that need not wait for gossip
    (["--push_sum", "False", "--synch_freq", "1"], SGP, "--synch_freq"),
    (["--graph_type", "-1"], SGP, "--graph_type"),
    (["--graph_type", "7"], SGP, "--graph_type"),
    (["--bilat", "False", "--graph_type", "1"], ADPSGD, "--bilat"),
    (["--all_reduce", "True", "--graph_type", "1"], ADPSGD, "--all_reduce"),
    (["--graph_type", "0"], ADPSGD, "--graph_type"),
    ([], ADPSGD, "--graph_type"),  # exact: the script's default graph is not bipartite
    (["--graph_type", "1", "--peers_per_itr_schedule", "0", "2"], ADPSGD, "--peers_per_itr"),
    (["--peers_per_itr_schedule", "10", "2"], SGP, "--peers_per_itr_schedule"),
    (["--peers_per_itr_schedule", "0", "0"], SGP, "--peers_per_itr_schedule"),
    (["--peers_per_itr_schedule", "0", "1.5"], SGP, "--peers_per_itr_schedule"),
    (["--schedule", "30", "0.1", "60"], SGP, "--schedule"),
    (["--schedule"], SGP, "--schedule"),
    (["--nesterov", "true"], SGP, "--nesterov"),
    (["--verbose", "yes"], SGP, "--verbose"),
    (["--batch_size", "x"], SGP, "--batch_size"),
    (["--batch_size"], SGP, "--batch_size"),
    (["--batch_size", "--lr", "0.1"], SGP, "--batch_size"),
    (["--fp16=True"], SGP, "--fp16"),
    (["--backend", "tcpip"], SGP, "--backend"),
    (["--no_such_flag", "1"], SGP, "--no_such_flag"),
    (["--fp16"], ADPSGD, "--fp16"),  # a gossip_sgd.py flag only
    (["--num", "1"], SGP, "--num"),  # ambiguous prefix
    (["256"], SGP, "256"),
]


@pytest.mark.parametrize(("argv", "script", "flag"), ERRORS, ids=lambda v: str(v))
def test_errors_name_the_flag(argv: list[str], script: str, flag: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(flag)}"):
        translate_2019(argv, script)


def test_unknown_script() -> None:
    with pytest.raises(ValueError, match=r"^script: .*gossip_sgd_v2\.py"):
        translate_2019([], "gossip_sgd_v2.py")


def test_docstring_examples() -> None:
    result = doctest.testmod(legacy, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
