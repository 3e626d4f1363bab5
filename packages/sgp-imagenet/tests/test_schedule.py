"""The learning-rate and peers schedules, against values worked out by hand."""

from __future__ import annotations

import doctest
import itertools
import re
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sgp_imagenet import schedule as schedule_module
from sgp_imagenet.schedule import (
    LARGE_GLOBAL_BATCH,
    LRSchedule,
    PeersSchedule,
    large_batch_warning,
    parse_epoch_pairs,
    scaling_line,
)

REL = 1e-12


def approx(x: float) -> object:
    return pytest.approx(x, rel=REL, abs=1e-15)


# --- parse_epoch_pairs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "30:0.1 60:0.1 80:0.1",
        "30:0.1,60:0.1,80:0.1",
        " 30:0.1 ,  60:0.1\t80:0.1 ",
        ["30:0.1", "60:0.1", "80:0.1"],
        ("30:0.1 60:0.1", "80:0.1"),
    ],
)
def test_parse_accepts_spaces_commas_and_lists(spec: str | list[str]) -> None:
    assert parse_epoch_pairs(spec, flag="--lr-schedule", value=float) == {
        30: 0.1,
        60: 0.1,
        80: 0.1,
    }


def test_parse_keeps_written_order_and_converts_with_value() -> None:
    pairs = parse_epoch_pairs("0:1 10:2 25:4", flag="--peers-per-itr-schedule", value=int)
    assert pairs == {0: 1, 10: 2, 25: 4}
    assert list(pairs) == [0, 10, 25]
    assert all(type(v) is int for v in pairs.values())


@pytest.mark.parametrize("spec", ["", "   ", " , ", []])
def test_parse_empty_is_empty(spec: str | list[str]) -> None:
    assert parse_epoch_pairs(spec, flag="--lr-schedule", value=float) == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("30-0.1", "--lr-schedule: '30-0.1' is not EPOCH:VALUE"),
        ("30:", "--lr-schedule: '30:' is not EPOCH:VALUE"),
        (":0.1", "--lr-schedule: ':0.1' is not EPOCH:VALUE"),
        ("-1:0.1", "--lr-schedule: epoch '-1' in '-1:0.1' must be an integer >= 0"),
        ("1.5:0.1", "--lr-schedule: epoch '1.5' in '1.5:0.1' must be an integer >= 0"),
        ("30:abc", "--lr-schedule: value 'abc' in '30:abc' is not a valid float"),
        (
            "60:0.1 30:0.1",
            "--lr-schedule: epochs must be strictly increasing; '30:0.1' comes after epoch 60",
        ),
        (
            "30:0.1 30:0.2",
            "--lr-schedule: epochs must be strictly increasing; '30:0.2' comes after epoch 30",
        ),
    ],
)
def test_parse_errors_name_flag_and_item(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_epoch_pairs(spec, flag="--lr-schedule", value=float)
    assert str(info.value) == message


def test_parse_reports_int_conversion_against_flag() -> None:
    with pytest.raises(ValueError, match=r"^--peers: value '1\.5' in '3:1\.5' is not a valid int"):
        parse_epoch_pairs("3:1.5", flag="--peers", value=int)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="--lr-schedule"):
        parse_epoch_pairs([30], flag="--lr-schedule", value=float)  # type: ignore[list-item]


@given(st.dictionaries(st.integers(0, 10_000), st.integers(-(10**6), 10**6), max_size=12))
def test_parse_round_trips_any_increasing_pairs(pairs: dict[int, int]) -> None:
    ordered = dict(sorted(pairs.items()))
    text = " ".join(f"{e}:{v}" for e, v in ordered.items())
    assert parse_epoch_pairs(text, flag="--x", value=int) == ordered
    assert parse_epoch_pairs(text.replace(" ", ","), flag="--x", value=int) == ordered


# --- LRSchedule -------------------------------------------------------------------------


def test_peak_lr_is_linear_scaling() -> None:
    assert LRSchedule(reference_lr=0.1, global_batch=1024).peak_lr == approx(0.4)
    assert LRSchedule(reference_lr=0.1, global_batch=256).peak_lr == approx(0.1)
    assert LRSchedule(reference_lr=0.1, global_batch=128).peak_lr == approx(0.05)
    assert LRSchedule(reference_lr=0.2, global_batch=8192, reference_batch=512).peak_lr == approx(
        3.2
    )


@pytest.mark.parametrize(
    ("epoch", "fraction", "expected"),
    [
        (0, 0.0, 0.1),  # warm-up starts at the reference rate
        (0, 0.5, 0.1 + 0.3 * 0.5 / 5),  # 0.13
        (2, 0.5, 0.25),  # 0.1 + 0.3 * 2.5 / 5
        (4, 0.75, 0.1 + 0.3 * 4.75 / 5),  # 0.385
        (5, 0.0, 0.4),  # warm-up over: peak
        (29, 0.99, 0.4),  # fraction no longer matters
        (30, 0.0, 0.04),
        (59, 0.5, 0.04),
        (60, 0.0, 0.004),
        (65, 0.0, 0.004),  # cumulative: 0.4 * 0.1 * 0.1
        (80, 0.0, 0.0004),
        (85, 0.0, 0.0004),
        (89, 0.9, 0.0004),
    ],
)
def test_lr_default_recipe_by_hand(epoch: int, fraction: float, expected: float) -> None:
    schedule = LRSchedule(reference_lr=0.1, global_batch=1024)
    assert schedule.lr_at(epoch, fraction) == approx(expected)


def test_warmup_is_linear_per_iteration() -> None:
    schedule = LRSchedule(reference_lr=0.1, global_batch=1024)
    iters = 10
    rates = [schedule.lr_at(e, i / iters) for e in range(5) for i in range(iters)]
    steps = [b - a for a, b in itertools.pairwise(rates)]
    assert all(step == approx(0.3 / 50) for step in steps)
    assert rates[-1] + steps[-1] == approx(schedule.lr_at(5))


def test_no_warmup_means_no_ramp() -> None:
    schedule = LRSchedule(reference_lr=0.1, global_batch=1024, warmup_epochs=0)
    assert schedule.lr_at(0) == approx(0.4)
    assert schedule.lr_at(0, 0.5) == approx(0.4)
    assert schedule.lr_at(31) == approx(0.04)


def test_no_ramp_when_peak_equals_reference() -> None:
    schedule = LRSchedule(reference_lr=0.1, global_batch=256)
    assert schedule.lr_at(0) == approx(0.1)
    assert schedule.lr_at(3, 0.5) == approx(0.1)
    assert schedule.lr_at(30) == approx(0.01)


def test_fractional_warmup_and_custom_decays() -> None:
    schedule = LRSchedule(
        reference_lr=0.1, global_batch=512, warmup_epochs=2.5, decays={10: 0.5, 20: 0.2}
    )
    # peak 0.2; halfway through warm-up (1.25 epochs) the rate is 0.15
    assert schedule.lr_at(1, 0.25) == approx(0.15)
    assert schedule.lr_at(2, 0.4) == approx(0.1 + 0.1 * 2.4 / 2.5)
    assert schedule.lr_at(2, 0.5) == approx(0.2)
    assert schedule.lr_at(10) == approx(0.1)
    assert schedule.lr_at(20) == approx(0.02)


def test_no_decays_keeps_peak() -> None:
    schedule = LRSchedule(reference_lr=0.1, global_batch=1024, decays={})
    assert schedule.lr_at(1000) == approx(0.4)


def test_decays_are_copied_sorted_and_read_only() -> None:
    source = {60: 0.1, 30: 0.5}
    schedule = LRSchedule(reference_lr=0.1, global_batch=256, decays=source)
    source[0] = 0.0
    assert list(schedule.decays) == [30, 60]
    with pytest.raises(TypeError):
        schedule.decays[5] = 0.5  # type: ignore[index]
    assert schedule.lr_at(61) == approx(0.1 * 0.5 * 0.1)


def test_decay_inside_warmup_warns_and_applies_after() -> None:
    with pytest.warns(UserWarning, match=r"decay milestones \[3\] fall inside the 5-epoch"):
        schedule = LRSchedule(reference_lr=0.1, global_batch=1024, decays={3: 0.1})
    assert schedule.lr_at(4) == approx(0.1 + 0.3 * 4 / 5)
    assert schedule.lr_at(5) == approx(0.04)


def test_default_schedule_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LRSchedule(reference_lr=0.1, global_batch=1024)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"reference_lr": 0.0}, ValueError, "reference_lr must be > 0; got 0.0"),
        ({"reference_lr": -0.1}, ValueError, "reference_lr must be > 0"),
        ({"reference_lr": float("nan")}, ValueError, "reference_lr must be finite"),
        ({"reference_lr": "0.1"}, TypeError, "reference_lr must be a real number"),
        ({"global_batch": 0}, ValueError, "global_batch must be >= 1; got 0"),
        ({"global_batch": 256.0}, TypeError, "global_batch must be an int"),
        ({"global_batch": True}, TypeError, "global_batch must be an int"),
        ({"reference_batch": 0}, ValueError, "reference_batch must be >= 1; got 0"),
        ({"warmup_epochs": -1.0}, ValueError, "warmup_epochs must be >= 0; got -1.0"),
        ({"decays": {30: 0.0}}, ValueError, r"decays\[30\] must be > 0; got 0.0"),
        ({"decays": {30: -0.1}}, ValueError, r"decays\[30\] must be > 0"),
        ({"decays": {-1: 0.1}}, ValueError, "decays epoch -1 must be >= 0"),
        ({"decays": [30, 60]}, TypeError, "decays must be a mapping"),
    ],
)
def test_lr_schedule_validation(kwargs: dict[str, object], error: type, message: str) -> None:
    base: dict[str, object] = {"reference_lr": 0.1, "global_batch": 256}
    with pytest.raises(error, match=message):
        LRSchedule(**(base | kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("epoch", "fraction", "error", "message"),
    [
        (-1, 0.0, ValueError, "epoch must be >= 0; got -1"),
        (1.0, 0.0, TypeError, "epoch must be an int"),
        (1, 1.0, ValueError, r"fraction must be in \[0, 1\); got 1.0"),
        (1, -0.1, ValueError, "fraction must be >= 0"),
    ],
)
def test_lr_at_validation(epoch: object, fraction: object, error: type, message: str) -> None:
    schedule = LRSchedule(reference_lr=0.1, global_batch=256)
    with pytest.raises(error, match=message):
        schedule.lr_at(epoch, fraction)  # type: ignore[arg-type]


@given(
    st.integers(1, 4096),
    st.floats(0.0, 10.0),
    st.integers(0, 99),
    st.floats(0.0, 0.999),
)
def test_lr_stays_between_smallest_and_largest(
    batch: int, warmup: float, epoch: int, fraction: float
) -> None:
    schedule = LRSchedule(reference_lr=0.1, global_batch=batch, warmup_epochs=warmup, decays={})
    low, high = sorted((0.1, schedule.peak_lr))
    assert low * (1 - REL) <= schedule.lr_at(epoch, fraction) <= high * (1 + REL)


# --- PeersSchedule ----------------------------------------------------------------------


def test_peers_at_takes_latest_milestone_and_defaults_to_one() -> None:
    schedule = PeersSchedule({10: 2, 20: 4, 30: 4})
    assert [schedule.peers_at(e) for e in (0, 9, 10, 19, 20, 29, 30, 1000)] == [
        1,
        1,
        2,
        2,
        4,
        4,
        4,
        4,
    ]


def test_changes_at_only_where_the_count_moves() -> None:
    schedule = PeersSchedule({0: 1, 10: 2, 20: 2, 30: 1})
    changes = [e for e in range(40) if schedule.changes_at(e)]
    assert changes == [10, 30]


def test_changes_at_epoch_zero_compares_with_default_one() -> None:
    assert PeersSchedule({0: 2}).changes_at(0)
    assert not PeersSchedule({0: 1}).changes_at(0)
    assert not PeersSchedule({}).changes_at(0)
    assert PeersSchedule({}).peers_at(50) == 1


def test_peers_parse_uses_int_values_and_default_flag() -> None:
    schedule = PeersSchedule.parse("0:1 30:2,60:4")
    assert dict(schedule.milestones) == {0: 1, 30: 2, 60: 4}
    assert PeersSchedule.parse(["5:3"]).peers_at(6) == 3
    assert PeersSchedule.parse("") == PeersSchedule({})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0:0", "--peers-per-itr-schedule: peers at epoch 0 must be >= 1; got 0"),
        ("10:2.5", "--peers-per-itr-schedule: value '2.5' in '10:2.5' is not a valid int"),
        ("10=2", "--peers-per-itr-schedule: '10=2' is not EPOCH:VALUE"),
    ],
)
def test_peers_parse_errors_name_the_flag(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        PeersSchedule.parse(spec)
    assert str(info.value) == message


def test_peers_parse_custom_flag() -> None:
    with pytest.raises(ValueError, match=r"^--my-flag: "):
        PeersSchedule.parse("1:-2", flag="--my-flag")


def test_peers_constructor_validation() -> None:
    with pytest.raises(ValueError, match="milestones: peers at epoch 3 must be >= 1; got 0"):
        PeersSchedule({3: 0})
    with pytest.raises(ValueError, match="milestones: epoch -1 must be >= 0"):
        PeersSchedule({-1: 2})
    with pytest.raises(TypeError, match="milestones: peers at epoch 3 must be an int"):
        PeersSchedule({3: 2.0})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        PeersSchedule({}).peers_at(-1)


def test_peers_milestones_are_sorted_copies() -> None:
    source = {20: 4, 10: 2}
    schedule = PeersSchedule(source)
    source[0] = 8
    assert list(schedule.milestones) == [10, 20]
    assert schedule.peers_at(0) == 1


def test_a_global_batch_below_the_reference_one_has_no_warm_up() -> None:
    # 64 images: the rate scales down to 0.025 from the first step (no ramp from 0.1)
    s = LRSchedule(reference_lr=0.1, global_batch=64, warmup_epochs=5)
    assert s.lr_at(0, 0.0) == approx(0.025)
    assert s.lr_at(3, 0.5) == approx(0.025)
    assert s.lr_at(30) == approx(0.0025)


# --- what rank 0 prints at start-up ------------------------------------------------------

_LINE = re.compile(
    r"batch (?P<batch>[\d,]+) per rank x (?P<world>[\d,]+) ranks? = (?P<total>[\d,]+) images "
    r"per step; lr (?P<lr>\S+) per 256 images x (?P=total)/256 = (?P<peak>[\d.e+-]+)"
)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.parametrize(
    ("lr", "batch", "world"),
    [(0.1, 32, 1), (0.1, 32, 8), (0.1, 32, 32), (0.1, 32, 256), (0.8, 16, 4), (0.1, 256, 256)],
)
def test_the_start_up_line_gives_the_closed_form(lr: float, batch: int, world: int) -> None:
    s = LRSchedule(reference_lr=lr, global_batch=batch * world)
    line = scaling_line(s, batch_size=batch, world_size=world)
    match = _LINE.match(line)
    assert match, line
    numbers = {k: _number(v) for k, v in match.groupdict().items()}
    assert (numbers["batch"], numbers["world"], numbers["total"]) == (batch, world, batch * world)
    assert numbers["lr"] == lr
    closed_form = lr * batch * world / 256
    assert numbers["peak"] == pytest.approx(closed_form, rel=1e-5)  # (printed with %g)
    # what the schedule really uses once warm-up is over, before the first decay
    assert s.lr_at(5) == approx(closed_form)
    assert "\n" not in line


@pytest.mark.parametrize(
    ("global_batch", "warmup", "how"),
    [
        (1024, 5.0, ", warmed up from 0.1 over 5 epochs"),
        (1024, 1.0, ", warmed up from 0.1 over 1 epoch"),
        (1024, 0.0, " from the first step (--warmup-epochs 0)"),
        (256, 5.0, " from the first step (no warm-up at 256 images or fewer)"),
        (64, 5.0, " from the first step (no warm-up at 256 images or fewer)"),
    ],
)
def test_the_start_up_line_says_how_the_rate_is_reached(
    global_batch: int, warmup: float, how: str
) -> None:
    s = LRSchedule(reference_lr=0.1, global_batch=global_batch, warmup_epochs=warmup)
    assert scaling_line(s, batch_size=global_batch, world_size=1).endswith(how)
    # the same answer as the rates themselves: a ramp exactly when the line says so
    assert s.warms_up == (s.lr_at(0) < s.lr_at(int(warmup) + 1))


def test_the_start_up_line_refuses_another_global_batch() -> None:
    s = LRSchedule(reference_lr=0.1, global_batch=256)
    with pytest.raises(ValueError, match="global batch of 256, not 32 per rank x 4 ranks = 128"):
        scaling_line(s, batch_size=32, world_size=4)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        large_batch_warning(s, batch_size=256, world_size=0)


@pytest.mark.parametrize(
    ("batch", "world"),
    [(32, 256), (8192, 1), (1, 8192), (32, 8), (16, 512)],  # at or below the limit
)
def test_no_warning_at_or_below_the_limit(batch: int, world: int) -> None:
    assert batch * world <= LARGE_GLOBAL_BATCH == 8192
    s = LRSchedule(reference_lr=0.1, global_batch=batch * world)
    assert large_batch_warning(s, batch_size=batch, world_size=world) is None


@pytest.mark.parametrize(
    ("batch", "world", "fits"),
    [(256, 256, "32"), (8193, 1, "8,192"), (33, 256, "32"), (64, 200, "40"), (1025, 8, "1,024")],
)
def test_a_warning_above_the_limit_names_the_numbers_and_the_flag(
    batch: int, world: int, fits: str
) -> None:
    s = LRSchedule(reference_lr=0.1, global_batch=batch * world)
    line = large_batch_warning(s, batch_size=batch, world_size=world)
    assert line is not None and "\n" not in line
    assert line.startswith("sgp-imagenet: warning: a global batch of ")
    assert f"{batch * world:,} images (--batch-size {batch:,} per rank x {world:,} rank" in line
    assert "above 8,192" in line
    assert f"scales the learning rate to {0.1 * batch * world / 256:g};" in line
    assert line.endswith(f"--batch-size {fits} or less keeps it at 8,192 or below")


def test_a_warning_with_more_ranks_than_the_limit_says_so() -> None:
    s = LRSchedule(reference_lr=0.1, global_batch=10_000)
    line = large_batch_warning(s, batch_size=1, world_size=10_000)
    assert line is not None and line.endswith("even --batch-size 1 exceeds it on 10,000 ranks")


def test_the_module_examples_hold() -> None:
    result = doctest.testmod(schedule_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 20 and result.failed == 0
