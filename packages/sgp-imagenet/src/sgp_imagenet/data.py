"""Datasets and sharded loaders for ``sgp-imagenet``.

Three data sets share one shape of result, a :class:`DataBundle`:

* ``imagefolder``: a directory with ``train/`` and ``val/`` in torchvision's ImageFolder
  layout (one folder per class), with the standard ResNet augmentation.
* ``synthetic``: random tensors generated lazily from ``(seed, index)``, for timing runs
  and tests without data on disk.
* ``digits``: scikit-learn's bundled 8x8 handwritten digits, upsampled to RGB images; small
  enough to train to a meaningful accuracy on a laptop.

:func:`make_loader` shards any of them across ranks with a `ResumableSampler`, a
``DistributedSampler`` that can start an epoch part-way (resuming mid-epoch without
loading the skipped batches). Training samples are drawn through `SeededSamples`, which
seeds the random augmentation of each sample from ``(seed, epoch, index)``: the same
image gets the same crop whichever worker loads it, so a resumed run sees exactly the
batches of an uninterrupted one.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torchvision import datasets, transforms  # type: ignore[import-untyped]
from torchvision.datasets.folder import IMG_EXTENSIONS  # type: ignore[import-untyped]

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataBundle",
    "ResumableSampler",
    "SeededSamples",
    "build_datasets",
    "check_classes",
    "make_loader",
]

DATASETS = ("imagefolder", "synthetic", "digits")
"""The names :func:`build_datasets` accepts."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean of the ImageNet training set, for ``transforms.Normalize``."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of the ImageNet training set."""

_DEFAULT_SIZE = {"imagefolder": 224, "synthetic": 224, "digits": 32}
_DIGITS_CLASSES = 10


@dataclass(frozen=True)
class DataBundle:
    """A training set, a validation set, and what a model needs to know about them.

    Attributes:
        train: The training split; items are ``(image, label)`` with ``image`` a
            ``3 x image_size x image_size`` float tensor and ``label`` an ``int``.
        val: The validation split, same item shape.
        num_classes: Labels lie in ``[0, num_classes)``.
        image_size: Side length of the square images the loaders yield.
    """

    train: Dataset[Any]
    val: Dataset[Any]
    num_classes: int
    image_size: int


def build_datasets(
    name: str,
    data_dir: str | Path | None = None,
    *,
    image_size: int | None = None,
    synthetic_classes: int = 1000,
    synthetic_train: int = 1024,
    synthetic_val: int = 256,
    seed: int = 0,
) -> DataBundle:
    """Build the training and validation sets of one of :data:`DATASETS`.

    Args:
        name: ``"imagefolder"``, ``"synthetic"`` or ``"digits"``.
        data_dir: For ``imagefolder``, the root holding ``train/`` and ``val/``; ignored
            otherwise.
        image_size: Side of the square images; defaults to 224 (``imagefolder``,
            ``synthetic``) or 32 (``digits``).
        synthetic_classes: Number of classes of the ``synthetic`` set.
        synthetic_train: Number of ``synthetic`` training images.
        synthetic_val: Number of ``synthetic`` validation images.
        seed: Seed of the ``synthetic`` images; the other data sets are fixed.

    Returns:
        The two splits with their class count and image size.

    Raises:
        ValueError: If ``name`` is unknown, a size or count is not positive, ``seed`` is
            negative for ``synthetic``, or (for
            ``imagefolder``) the directory is missing, has no classes or images, or its
            two splits disagree on the class list. The message names the path.
        ImportError: If ``name`` is ``"digits"`` and scikit-learn is not installed.

    Examples:
        >>> bundle = build_datasets("synthetic", image_size=32, synthetic_classes=5)
        >>> image, label = bundle.train[0]
        >>> tuple(image.shape), 0 <= label < 5
        ((3, 32, 32), True)
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    size = _DEFAULT_SIZE[name] if image_size is None else image_size
    if size < 1:
        raise ValueError(f"image_size must be >= 1; got {size}")
    if name == "imagefolder":
        return _image_folder(data_dir, size)
    if name == "synthetic":
        for arg, value in (
            ("synthetic_classes", synthetic_classes),
            ("synthetic_train", synthetic_train),
            ("synthetic_val", synthetic_val),
        ):
            if value < 1:
                raise ValueError(f"{arg} must be >= 1; got {value}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 for the synthetic data set; got {seed}")
        return DataBundle(
            train=_SyntheticImages(synthetic_train, synthetic_classes, size, seed=seed, split=0),
            val=_SyntheticImages(synthetic_val, synthetic_classes, size, seed=seed, split=1),
            num_classes=synthetic_classes,
            image_size=size,
        )
    return _digits(size)


class ResumableSampler(DistributedSampler[Any]):
    """A ``DistributedSampler`` that can skip the start of one epoch.

    `start_at` drops the first ``position`` samples of this rank's share from the next
    pass only; later passes are whole again. With ``tag_epoch`` each index is yielded as
    ``(epoch, index)`` for `SeededSamples`.

    Args:
        dataset: The data set to sample from.
        tag_epoch: Yield ``(epoch, index)`` pairs instead of plain indices.
        **kwargs: Passed to ``DistributedSampler`` (``num_replicas``, ``rank``,
            ``shuffle``, ``seed``, ``drop_last``).

    Attributes:
        tag_epoch: Whether indices are yielded as ``(epoch, index)`` pairs.
    """

    def __init__(self, dataset: Dataset[Any], *, tag_epoch: bool = False, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.tag_epoch = tag_epoch
        self._start = 0

    def start_at(self, position: int) -> None:
        """Begin the next pass at this rank's ``position``-th sample (0: the start).

        Raises:
            ValueError: If ``position`` is negative or beyond this rank's share.
        """
        if isinstance(position, bool) or not isinstance(position, int):
            raise TypeError(f"position must be an int; got {type(position).__name__}")
        if not 0 <= position <= self.num_samples:
            raise ValueError(
                f"position must be in [0, {self.num_samples}] (this rank's samples per "
                f"epoch); got {position}"
            )
        self._start = position

    def reshard(self, rank: int, num_replicas: int) -> None:
        """Sample as ``rank`` of ``num_replicas`` from the next pass on (a fault-tolerant
        job re-shards over its members at an epoch's start); exactly what a new
        ``DistributedSampler`` with these two values would sample.

        Raises:
            ValueError: If ``rank`` is not in ``[0, num_replicas)``.
        """
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}); got {rank}")
        self.rank, self.num_replicas = rank, num_replicas
        size = len(self.dataset)  # type: ignore[arg-type]  # a sized map-style dataset
        if self.drop_last and size % num_replicas:
            self.num_samples = math.ceil((size - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(size / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Any:
        indices = list(super().__iter__())[self._start :]
        self._start = 0
        if self.tag_epoch:
            return iter([(self.epoch, i) for i in indices])
        return iter(indices)


class SeededSamples(Dataset[Any]):
    """Draw ``dataset[index]`` with torch's generator seeded from ``(seed, epoch, index)``.

    Random augmentations (crops, flips) then depend only on which sample of which epoch
    is loaded, not on the worker process or on how far the loader had got: a run
    resumed mid-epoch, or one with another ``--workers``, sees the same images. The
    calling process's own generator is left untouched. Items are ``(epoch, index)``
    pairs, as `ResumableSampler` yields them with ``tag_epoch=True``.

    Args:
        dataset: The data set to draw from.
        seed: The run's seed.
    """

    def __init__(self, dataset: Dataset[Any], seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
            return self.dataset[index]


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    train: bool,
    workers: int = 0,
    drop_last: bool | None = None,
) -> DataLoader[Any]:
    """A loader over this rank's shard of ``dataset``.

    Both splits are sharded: each rank sees ``1 / world_size`` of the data. The sampler is
    a `ResumableSampler` that shuffles only when ``train``; training samples are drawn
    through `SeededSamples`, so their augmentation is reproducible. Call
    ``loader.sampler.set_epoch(epoch)`` before each epoch, or every epoch repeats the
    first one's order.

    Without ``drop_last`` the sampler pads the data by repeating its first items until
    every rank has the same count, so up to ``world_size - 1`` validation images are
    counted twice in a metric averaged over ranks. With it, up to ``world_size - 1``
    images are left out. Either way every rank runs the same number of steps, which
    gossip needs.

    Args:
        dataset: The data set to shard; it must have a length.
        batch_size: Images per batch on this rank.
        rank: This rank, in ``[0, world_size)``.
        world_size: Number of ranks sharing the data.
        seed: Shuffling seed; must be the same on every rank so that shards are disjoint.
        train: Shuffle (training) or keep the order (validation).
        workers: Loader worker processes; 0 loads in the calling process.
        drop_last: Whether the sampler drops the tail that does not divide evenly among
            ranks; defaults to ``train``.

    Returns:
        The loader; its ``sampler`` is the `ResumableSampler`.

    Raises:
        ValueError: If ``batch_size < 1``, ``workers < 0``, ``world_size < 1`` or ``rank``
            is outside ``[0, world_size)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0; got {workers}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}); got {rank}")
    sampler = ResumableSampler(
        dataset,
        tag_epoch=train,
        num_replicas=world_size,
        rank=rank,
        shuffle=train,
        seed=seed,
        drop_last=train if drop_last is None else drop_last,
    )
    return DataLoader(
        SeededSamples(dataset, seed) if train else dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def check_classes(num_classes: int, model_classes: int, *, where: str) -> None:
    """Raise unless the data's class count matches the model's output size.

    Args:
        num_classes: Classes in the data set.
        model_classes: Outputs of the model's classifier, e.g. read from a checkpoint.
        where: What the model came from (a checkpoint path, ``--arch``), for the message.

    Raises:
        ValueError: If the two counts differ; the message names ``where``.
    """
    if num_classes != model_classes:
        raise ValueError(
            f"{where}: the model outputs {model_classes} classes but the data set has "
            f"{num_classes}; use data with the same classes, or start a fresh model"
        )


# --------------------------------------------------------------------------- imagefolder


def _read_rgb(path: str) -> Image.Image:
    """Open one image as RGB, naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMG_EXTENSIONS)


def _class_names(split: Path) -> list[str]:
    """Class folders of one split, checked to be non-empty and to hold images."""
    if not split.is_dir():
        raise ValueError(f"--data: {split} is not a directory; expected an ImageFolder split")
    classes = sorted(entry.name for entry in split.iterdir() if entry.is_dir())
    if not classes:
        raise ValueError(f"--data: {split} has no class folders; expected {split}/<class>/<image>")
    for cls in classes:
        if not any(_is_image(p) for p in (split / cls).rglob("*")):
            exts = ", ".join(IMG_EXTENSIONS)
            raise ValueError(f"--data: class folder {split / cls} has no images ({exts})")
    return classes


def _image_folder(data_dir: str | Path | None, size: int) -> DataBundle:
    if data_dir is None:
        raise ValueError("--data: the imagefolder data set needs a directory; got None")
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"--data: {root} is not a directory")
    train_dir, val_dir = root / "train", root / "val"
    train_classes, val_classes = _class_names(train_dir), _class_names(val_dir)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            f"--data: {train_dir} and {val_dir} must hold the same class folders; "
            f"only in train: {_few(only_train)}; only in val: {_few(only_val)}"
        )
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    val_tf = transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    train = datasets.ImageFolder(str(train_dir), transform=train_tf, loader=_read_rgb)
    val = datasets.ImageFolder(str(val_dir), transform=val_tf, loader=_read_rgb)
    return DataBundle(train=train, val=val, num_classes=len(train_classes), image_size=size)


def _few(names: Sequence[str], limit: int = 5) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


# --------------------------------------------------------------------------- synthetic


class _SyntheticImages(Dataset[tuple[torch.Tensor, int]]):
    """Standard-normal images with uniform labels, each drawn from ``(seed, split, index)``.

    Nothing is stored: item ``i`` is regenerated on every access, identically.
    """

    def __init__(self, length: int, num_classes: int, size: int, *, seed: int, split: int):
        self._length = length
        self._num_classes = num_classes
        self._size = size
        self._seed = seed
        self._split = split

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} synthetic images")
        words = np.random.SeedSequence([self._seed, self._split, index]).generate_state(2)
        gen = torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))
        label = int(torch.randint(self._num_classes, (), generator=gen))
        image = torch.randn(3, self._size, self._size, generator=gen)
        return image, label


# --------------------------------------------------------------------------- digits


class _UpsampledDigits(Dataset[tuple[torch.Tensor, int]]):
    """8x8 grey digits in ``[0, 1]``, upsampled and normalised lazily per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int):
        self._images = images  # (N, 1, 8, 8), float32 in [0, 1]
        self._labels = labels
        self._size = size

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        grey = torch.nn.functional.interpolate(
            self._images[index : index + 1],
            size=(self._size, self._size),
            mode="bilinear",
            align_corners=False,
        )[0]
        return ((grey - 0.5) / 0.5).repeat(3, 1, 1), int(self._labels[index])


def _digits(size: int) -> DataBundle:
    load_digits: Callable[..., Any] = _sklearn("sklearn.datasets").load_digits
    split: Callable[..., Any] = _sklearn("sklearn.model_selection").train_test_split
    digits = load_digits()
    pixels = np.asarray(digits.data, dtype=np.float32) / 16.0
    labels = np.asarray(digits.target, dtype=np.int64)
    x_train, x_val, y_train, y_val = split(
        pixels, labels, test_size=0.2, stratify=labels, random_state=0
    )

    def part(x: Any, y: Any) -> _UpsampledDigits:
        images = torch.from_numpy(np.ascontiguousarray(x)).reshape(-1, 1, 8, 8)
        return _UpsampledDigits(images, torch.from_numpy(np.ascontiguousarray(y)), size)

    return DataBundle(
        train=part(x_train, y_train),
        val=part(x_val, y_val),
        num_classes=_DIGITS_CLASSES,
        image_size=size,
    )


def _sklearn(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            "the digits data set needs scikit-learn; install it with "
            "`pip install scikit-learn` or choose --dataset synthetic"
        ) from exc
