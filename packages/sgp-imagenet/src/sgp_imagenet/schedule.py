"""Epoch schedules: the learning rate (warm-up, then step decays) and the peers per step.

The learning rate is quoted for 256 images and scaled linearly with the global batch
(`LRSchedule`); `scaling_line` says at start-up what that gives, and
`large_batch_warning` warns when the global batch is above the largest with which linear
scaling has been shown to keep ResNet-50's accuracy (`LARGE_GLOBAL_BATCH`).

Both schedules are keyed by epoch milestones written on the command line as
``EPOCH:VALUE`` pairs, for example ``--lr-schedule "30:0.1 60:0.1 80:0.1"``;
[`parse_epoch_pairs`][sgp_imagenet.schedule.parse_epoch_pairs] reads them. The module is
pure Python: it decides *what* the rate or the peer count is at an epoch, and the trainer
decides *when* to ask.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

__all__ = [
    "LARGE_GLOBAL_BATCH",
    "LRSchedule",
    "PeersSchedule",
    "large_batch_warning",
    "parse_epoch_pairs",
    "scaling_line",
]

LARGE_GLOBAL_BATCH = 8192
"""The largest global batch (images per step, all ranks together) with which Goyal et al.
2017 ("Accurate, Large Minibatch SGD", arXiv:1706.02677) trained ResNet-50 on ImageNet
to small-batch accuracy with the linearly scaled rate and warm-up; larger ones lost
accuracy. It is also the 2019 recipe's largest: 32 images per GPU on 256 GPUs. Above it,
`large_batch_warning` warns."""

_T = TypeVar("_T")

_SEPARATORS = re.compile(r"[\s,]+")
_EPOCH = re.compile(r"[0-9]+")


def parse_epoch_pairs(
    spec: str | Sequence[str], *, flag: str, value: Callable[[str], _T]
) -> dict[int, _T]:
    """Parse ``EPOCH:VALUE`` pairs such as ``"30:0.1 60:0.1 80:0.1"``.

    Args:
        spec: One string of pairs separated by spaces or commas, or a sequence of such
            strings (what ``argparse`` gives for ``nargs="+"``). Empty means no pairs.
        flag: The command-line flag the pairs came from, used in error messages.
        value: Converts each value, for example ``float`` or ``int``; a ``ValueError``
            or ``TypeError`` it raises is reported against ``flag``.

    Returns:
        The pairs in the order written, as ``{epoch: value}``.

    Raises:
        TypeError: If ``spec`` is neither a string nor a sequence of strings.
        ValueError: If an item is not ``EPOCH:VALUE``, an epoch is not an integer
            ``>= 0``, a value does not convert, or the epochs are not strictly increasing.

    Examples:
        >>> parse_epoch_pairs("30:0.1, 60:0.1", flag="--lr-schedule", value=float)
        {30: 0.1, 60: 0.1}
        >>> parse_epoch_pairs(["0:1", "10:2"], flag="--peers-per-itr-schedule", value=int)
        {0: 1, 10: 2}
    """
    if isinstance(spec, str):
        chunks: Sequence[str] = [spec]
    elif isinstance(spec, Sequence) and all(isinstance(s, str) for s in spec):
        chunks = spec
    else:
        raise TypeError(
            f"{flag}: expected a string or a sequence of strings of EPOCH:VALUE pairs; "
            f"got {type(spec).__name__} {spec!r}"
        )
    items = [item for chunk in chunks for item in _SEPARATORS.split(chunk) if item]
    result: dict[int, _T] = {}
    previous: int | None = None
    for item in items:
        epoch_text, colon, value_text = item.partition(":")
        if not colon or not epoch_text or not value_text:
            raise ValueError(f"{flag}: {item!r} is not EPOCH:VALUE")
        if not _EPOCH.fullmatch(epoch_text):
            raise ValueError(f"{flag}: epoch {epoch_text!r} in {item!r} must be an integer >= 0")
        epoch = int(epoch_text)
        if previous is not None and epoch <= previous:
            raise ValueError(
                f"{flag}: epochs must be strictly increasing; {item!r} comes after epoch {previous}"
            )
        try:
            result[epoch] = value(value_text)
        except (TypeError, ValueError) as err:
            kind = getattr(value, "__name__", "value")
            raise ValueError(
                f"{flag}: value {value_text!r} in {item!r} is not a valid {kind}"
            ) from err
        previous = epoch
    return result


def _default_decays() -> dict[int, float]:
    return {30: 0.1, 60: 0.1, 80: 0.1}


def _check_positive_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def _check_real(name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if positive and result <= 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")
    if not positive and result < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    return result


def _check_position(epoch: object, fraction: object) -> tuple[int, float]:
    epoch = _check_positive_int("epoch", epoch, minimum=0)
    frac = _check_real("fraction", fraction, positive=False)
    if frac >= 1.0:
        raise ValueError(f"fraction must be in [0, 1); got {fraction!r}")
    return epoch, frac


@dataclass(frozen=True, kw_only=True)
class LRSchedule:
    """Linear warm-up to a linearly scaled peak, then step decays at epoch milestones.

    The recipe of Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in
    1 Hour" (arXiv:1706.02677): the peak rate is ``reference_lr`` scaled by
    ``global_batch / reference_batch``; during the first ``warmup_epochs`` the rate
    rises linearly, iteration by iteration, from ``reference_lr`` to the peak; after
    that it is the peak times every decay factor whose milestone has been reached.

    Decays apply only once warm-up is over: a milestone inside the warm-up is legal but
    takes effect only at its end, and a ``UserWarning`` says so.

    Attributes:
        reference_lr: The rate for ``reference_batch`` images per step, ``> 0``.
        global_batch: Images per step summed over all ranks, ``>= 1``.
        warmup_epochs: Length of the warm-up in epochs, ``>= 0``; 0 means none.
        decays: ``{epoch: factor}``; from the start of each milestone epoch on, the rate
            is multiplied by its factor (factors ``> 0``, cumulative).
        reference_batch: The batch size ``reference_lr`` is quoted for, ``>= 1``.

    Raises:
        TypeError: If a field has the wrong type.
        ValueError: If a rate, a batch size or a factor is not positive, the warm-up is
            negative, or a milestone epoch is negative.

    Examples:
        >>> s = LRSchedule(reference_lr=0.1, global_batch=1024)
        >>> s.peak_lr
        0.4
        >>> s.lr_at(0), s.lr_at(2, 0.5), s.lr_at(5), s.lr_at(30)
        (0.1, 0.25, 0.4, 0.04000000000000001)
    """

    reference_lr: float
    global_batch: int
    warmup_epochs: float = 5.0
    decays: Mapping[int, float] = field(default_factory=_default_decays)
    reference_batch: int = 256

    def __post_init__(self) -> None:
        _check_real("reference_lr", self.reference_lr, positive=True)
        _check_positive_int("global_batch", self.global_batch, minimum=1)
        _check_positive_int("reference_batch", self.reference_batch, minimum=1)
        warmup = _check_real("warmup_epochs", self.warmup_epochs, positive=False)
        if not isinstance(self.decays, Mapping):
            raise TypeError(
                f"decays must be a mapping of epoch to factor; got {type(self.decays).__name__}"
            )
        decays: dict[int, float] = {}
        for epoch, factor in sorted(self.decays.items()):
            _check_positive_int(f"decays epoch {epoch!r}", epoch, minimum=0)
            decays[epoch] = _check_real(f"decays[{epoch}]", factor, positive=True)
        early = [epoch for epoch in decays if epoch < warmup]
        if early:
            warnings.warn(
                f"decay milestones {early} fall inside the {warmup:g}-epoch warm-up; they "
                "take effect only when warm-up ends",
                UserWarning,
                stacklevel=3,
            )
        object.__setattr__(self, "decays", MappingProxyType(decays))

    @property
    def peak_lr(self) -> float:
        """``reference_lr * global_batch / reference_batch``: the rate after warm-up."""
        return self.reference_lr * self.global_batch / self.reference_batch

    @property
    def warms_up(self) -> bool:
        """Whether the rate ramps up: only towards a peak above ``reference_lr`` (a global
        batch above ``reference_batch``), and only with ``warmup_epochs > 0``."""
        # a global batch below the reference one scales the rate down, and then there is
        # nothing to ramp up to
        return self.warmup_epochs > 0 and self.peak_lr > self.reference_lr

    def lr_at(self, epoch: int, fraction: float = 0.0) -> float:
        """The learning rate at a point of training.

        Args:
            epoch: The epoch, counted from 0.
            fraction: How far into ``epoch`` the step is, in ``[0, 1)``; for iteration
                ``i`` of ``n`` pass ``i / n``. Only the warm-up uses it.

        Returns:
            The rate for that step.

        Raises:
            TypeError: If ``epoch`` is not an int or ``fraction`` not a real number.
            ValueError: If ``epoch < 0`` or ``fraction`` is outside ``[0, 1)``.

        Examples:
            >>> LRSchedule(reference_lr=0.1, global_batch=512, warmup_epochs=0).lr_at(60)
            0.0020000000000000005
        """
        epoch, fraction = _check_position(epoch, fraction)
        position = epoch + fraction
        peak = self.peak_lr
        if self.warms_up and position < self.warmup_epochs:
            return self.reference_lr + (peak - self.reference_lr) * position / self.warmup_epochs
        rate = peak
        for milestone, factor in self.decays.items():
            if milestone <= epoch:
                rate *= factor
        return rate


def _global_batch(schedule: LRSchedule, batch_size: int, world_size: int) -> int:
    """``batch_size * world_size``, checked against the batch ``schedule`` was built for."""
    _check_positive_int("batch_size", batch_size, minimum=1)
    _check_positive_int("world_size", world_size, minimum=1)
    if batch_size * world_size != schedule.global_batch:
        raise ValueError(
            f"the schedule is for a global batch of {schedule.global_batch}, not "
            f"{batch_size} per rank x {world_size} ranks = {batch_size * world_size}"
        )
    return schedule.global_batch


def scaling_line(schedule: LRSchedule, *, batch_size: int, world_size: int) -> str:
    """What rank 0 prints at start-up: the batch per rank and in all, and the rate the
    schedule scales ``--lr`` to.

    Args:
        schedule: The run's learning-rate schedule, built for ``batch_size *
            world_size`` images per step.
        batch_size: Images per rank and step (``--batch-size``).
        world_size: Ranks in the job.

    Returns:
        One line: the global batch, the scaled rate (`LRSchedule.peak_lr`) and how it is
        reached (a warm-up, or from the first step).

    Raises:
        TypeError: If ``batch_size`` or ``world_size`` is not an int.
        ValueError: If either is below 1, or ``schedule`` is for another global batch.

    Examples:
        >>> schedule = LRSchedule(reference_lr=0.1, global_batch=32 * 32)
        >>> print(scaling_line(schedule, batch_size=32, world_size=32))
        batch 32 per rank x 32 ranks = 1,024 images per step; lr 0.1 per 256 images
        x 1,024/256 = 0.4, warmed up from 0.1 over 5 epochs
        >>> schedule = LRSchedule(reference_lr=0.1, global_batch=32 * 4)
        >>> print(scaling_line(schedule, batch_size=32, world_size=4))
        batch 32 per rank x 4 ranks = 128 images per step; lr 0.1 per 256 images
        x 128/256 = 0.05 from the first step (no warm-up at 256 images or fewer)
    """
    total = _global_batch(schedule, batch_size, world_size)
    ref = schedule.reference_batch
    if schedule.warms_up:
        epochs = schedule.warmup_epochs
        how = (
            f", warmed up from {schedule.reference_lr:g} over {epochs:g} "
            f"epoch{'' if epochs == 1 else 's'}"
        )
    elif schedule.warmup_epochs > 0:
        how = f" from the first step (no warm-up at {ref:,} images or fewer)"
    else:
        how = " from the first step (--warmup-epochs 0)"
    return (
        f"batch {batch_size:,} per rank x {world_size:,} rank{'' if world_size == 1 else 's'}"
        f" = {total:,} images per step; lr {schedule.reference_lr:g} per {ref:,} images"
        f" x {total:,}/{ref:,} = {schedule.peak_lr:g}{how}"
    )


def large_batch_warning(schedule: LRSchedule, *, batch_size: int, world_size: int) -> str | None:
    """The warning rank 0 prints when the global batch is above `LARGE_GLOBAL_BATCH`.

    Args:
        schedule: The run's learning-rate schedule, built for ``batch_size *
            world_size`` images per step.
        batch_size: Images per rank and step (``--batch-size``).
        world_size: Ranks in the job.

    Returns:
        One line naming the global batch, its factors, the scaled rate and the
        ``--batch-size`` that stays within the limit; ``None`` at or below the limit.

    Raises:
        TypeError: If ``batch_size`` or ``world_size`` is not an int.
        ValueError: If either is below 1, or ``schedule`` is for another global batch.

    Examples:
        >>> schedule = LRSchedule(reference_lr=0.1, global_batch=256 * 256)
        >>> print(large_batch_warning(schedule, batch_size=256, world_size=256))
        sgp-imagenet: warning: a global batch of 65,536 images (--batch-size 256 per rank
        x 256 ranks) is above 8,192, beyond which linear scaling lost accuracy in Goyal
        et al. 2017, and scales the learning rate to 25.6; --batch-size 32 or less keeps
        it at 8,192 or below
        >>> large_batch_warning(LRSchedule(reference_lr=0.1, global_batch=8192),
        ...                     batch_size=32, world_size=256) is None
        True
    """
    total = _global_batch(schedule, batch_size, world_size)
    if total <= LARGE_GLOBAL_BATCH:
        return None
    fits = LARGE_GLOBAL_BATCH // world_size
    advice = (
        f"--batch-size {fits:,} or less keeps it at {LARGE_GLOBAL_BATCH:,} or below"
        if fits >= 1
        else f"even --batch-size 1 exceeds it on {world_size:,} ranks"
    )
    return (
        f"sgp-imagenet: warning: a global batch of {total:,} images (--batch-size "
        f"{batch_size:,} per rank x {world_size:,} rank{'' if world_size == 1 else 's'}) is "
        f"above {LARGE_GLOBAL_BATCH:,}, beyond which linear scaling lost accuracy in Goyal "
        f"et al. 2017, and scales the learning rate to {schedule.peak_lr:g}; "
        f"{advice}"
    )


def _check_peers(milestones: object, name: str) -> dict[int, int]:
    if not isinstance(milestones, Mapping):
        raise TypeError(
            f"{name} must be a mapping of epoch to peers; got {type(milestones).__name__}"
        )
    checked: dict[int, int] = {}
    for epoch, peers in sorted(milestones.items()):
        _check_positive_int(f"{name}: epoch {epoch!r}", epoch, minimum=0)
        checked[epoch] = _check_positive_int(f"{name}: peers at epoch {epoch}", peers, minimum=1)
    return checked


@dataclass(frozen=True)
class PeersSchedule:
    """How many peers each rank sends to per step, changing at epoch milestones.

    Before the first milestone the count is 1, the SGP default.

    Attributes:
        milestones: ``{epoch: peers}``; from each milestone epoch on, each rank sends to
            ``peers`` peers per step (``epoch >= 0``, ``peers >= 1``).

    Raises:
        TypeError: If ``milestones`` is not a mapping of ints.
        ValueError: If an epoch is negative or a peer count below 1.

    Examples:
        >>> s = PeersSchedule({0: 1, 10: 2, 20: 2})
        >>> s.peers_at(5), s.peers_at(10), s.peers_at(25)
        (1, 2, 2)
        >>> s.changes_at(10), s.changes_at(20)
        (True, False)
    """

    milestones: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checked = _check_peers(self.milestones, "milestones")
        object.__setattr__(self, "milestones", MappingProxyType(checked))

    @classmethod
    def parse(
        cls, spec: str | Sequence[str], flag: str = "--peers-per-itr-schedule"
    ) -> PeersSchedule:
        """Build a schedule from ``EPOCH:PEERS`` pairs such as ``"0:1 30:2"``.

        Args:
            spec: The pairs, as for
                [`parse_epoch_pairs`][sgp_imagenet.schedule.parse_epoch_pairs].
            flag: The command-line flag, used in error messages.

        Returns:
            The schedule.

        Raises:
            TypeError: If ``spec`` is neither a string nor a sequence of strings.
            ValueError: If the pairs do not parse or a peer count is below 1.

        Examples:
            >>> PeersSchedule.parse("0:1,30:2").peers_at(40)
            2
        """
        pairs = parse_epoch_pairs(spec, flag=flag, value=int)
        return cls(_check_peers(pairs, flag))

    def peers_at(self, epoch: int) -> int:
        """Peers per step during ``epoch``: the latest milestone's value, else 1.

        Args:
            epoch: The epoch, counted from 0.

        Returns:
            The peer count.

        Raises:
            TypeError: If ``epoch`` is not an int.
            ValueError: If ``epoch < 0``.

        Examples:
            >>> PeersSchedule({3: 4}).peers_at(2)
            1
        """
        epoch = _check_positive_int("epoch", epoch, minimum=0)
        peers = 1
        for milestone, value in self.milestones.items():
            if milestone > epoch:
                break
            peers = value
        return peers

    def changes_at(self, epoch: int) -> bool:
        """Whether ``epoch`` is a milestone whose count differs from the epoch before.

        Epoch 0 is compared with the default of 1 peer.

        Args:
            epoch: The epoch, counted from 0.

        Returns:
            ``True`` when the trainer must switch to a new peer count at ``epoch``.

        Raises:
            TypeError: If ``epoch`` is not an int.
            ValueError: If ``epoch < 0``.

        Examples:
            >>> s = PeersSchedule({0: 1, 5: 2})
            >>> s.changes_at(0), s.changes_at(5), s.changes_at(6)
            (False, True, False)
        """
        epoch = _check_positive_int("epoch", epoch, minimum=0)
        if epoch not in self.milestones:
            return False
        before = self.peers_at(epoch - 1) if epoch > 0 else 1
        return self.milestones[epoch] != before
