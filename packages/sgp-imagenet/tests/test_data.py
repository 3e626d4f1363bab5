"""Tests for sgp_imagenet.data: real JPEG folders, synthetic and digits sets, sharding."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from sgp_imagenet.data import (
    DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataBundle,
    ResumableSampler,
    SeededSamples,
    build_datasets,
    check_classes,
    make_loader,
)

CLASSES = ("cat", "dog")


def _write_jpegs(folder: Path, count: int, colour: tuple[int, int, int], size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (size + 4 * i, size), colour).save(folder / f"img{i}.jpg", "JPEG")


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """2 classes x 4 training and 2 validation JPEGs; class 0 red, class 1 blue."""
    root = tmp_path / "imagenet"
    for cls, colour in zip(CLASSES, [(255, 0, 0), (0, 0, 255)], strict=True):
        _write_jpegs(root / "train" / cls, 4, colour)
        _write_jpegs(root / "val" / cls, 2, colour)
    return root


class _Indices(Dataset[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


# ------------------------------------------------------------------------ imagefolder


def test_imagefolder_shapes_labels_and_transforms(image_root: Path) -> None:
    bundle = build_datasets("imagefolder", image_root, image_size=32)
    assert isinstance(bundle, DataBundle)
    assert (bundle.num_classes, bundle.image_size) == (2, 32)
    assert (len(bundle.train), len(bundle.val)) == (8, 4)  # type: ignore[arg-type]
    for split in (bundle.train, bundle.val):
        labels = []
        for i in range(len(split)):  # type: ignore[arg-type]
            image, label = split[i]
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32
            labels.append(label)
        assert sorted(set(labels)) == [0, 1]
    # Validation is deterministic and normalised: a solid red image maps to the
    # normalised (1, 0, 0) everywhere (JPEG may shift a colour value by a few levels).
    image, label = bundle.val[0]
    assert label == 0
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = ((torch.tensor([1.0, 0.0, 0.0]) - mean) / std)[:, None, None].expand(3, 32, 32)
    torch.testing.assert_close(image, expected, rtol=0, atol=0.1)
    torch.testing.assert_close(bundle.val[0][0], image, rtol=0, atol=0)


def test_imagefolder_default_size_is_224(image_root: Path) -> None:
    bundle = build_datasets("imagefolder", str(image_root))
    assert bundle.image_size == 224
    assert bundle.train[0][0].shape == (3, 224, 224)
    assert bundle.val[0][0].shape == (3, 224, 224)


def test_imagefolder_needs_a_directory() -> None:
    with pytest.raises(ValueError, match="--data: the imagefolder data set needs a directory"):
        build_datasets("imagefolder", None)


def test_imagefolder_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=re.escape(f"{missing} is not a directory")):
        build_datasets("imagefolder", missing)


def test_imagefolder_missing_val(tmp_path: Path) -> None:
    _write_jpegs(tmp_path / "train" / "cat", 1, (0, 0, 0))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'val'} is not a directory")):
        build_datasets("imagefolder", tmp_path)


def test_imagefolder_split_without_class_folders(image_root: Path) -> None:
    val = image_root / "val"
    for cls in CLASSES:
        for f in (val / cls).iterdir():
            f.unlink()
        (val / cls).rmdir()
    (val / "stray.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"{val} has no class folders")):
        build_datasets("imagefolder", image_root)


def test_imagefolder_empty_class_folder(image_root: Path) -> None:
    empty = image_root / "train" / "zebra"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(f"class folder {empty} has no images")):
        build_datasets("imagefolder", image_root)


def test_imagefolder_mismatched_classes(image_root: Path) -> None:
    _write_jpegs(image_root / "val" / "eel", 1, (0, 255, 0))
    with pytest.raises(ValueError, match="must hold the same class folders") as info:
        build_datasets("imagefolder", image_root)
    message = str(info.value)
    assert str(image_root / "train") in message and str(image_root / "val") in message
    assert "only in train: none; only in val: eel" in message


def test_imagefolder_corrupt_jpeg_names_the_file(image_root: Path) -> None:
    bad = image_root / "val" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG body")
    bundle = build_datasets("imagefolder", image_root, image_size=16)  # lazily loaded
    val = bundle.val
    index = [i for i, (path, _) in enumerate(val.samples) if path == str(bad)]  # type: ignore[attr-defined]
    assert len(index) == 1
    with pytest.raises(ValueError, match=re.escape(f"cannot read image {bad}: ")):
        val[index[0]]


# ------------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic_and_lazy() -> None:
    a = build_datasets("synthetic", image_size=16, synthetic_classes=7, seed=3)
    b = build_datasets("synthetic", image_size=16, synthetic_classes=7, seed=3)
    c = build_datasets("synthetic", image_size=16, synthetic_classes=7, seed=4)
    assert (a.num_classes, a.image_size) == (7, 16)
    assert (len(a.train), len(a.val)) == (1024, 256)  # type: ignore[arg-type]
    for i in (0, 5, 1023):
        image, label = a.train[i]
        assert image.shape == (3, 16, 16) and 0 <= label < 7
        torch.testing.assert_close(image, b.train[i][0], rtol=0, atol=0)
        torch.testing.assert_close(image, a.train[i][0], rtol=0, atol=0)  # same on re-read
        assert label == b.train[i][1]
        assert not torch.equal(image, c.train[i][0])
    assert not torch.equal(a.train[0][0], a.train[1][0])
    assert not torch.equal(a.train[0][0], a.val[0][0])  # the splits are different streams
    labels = {a.train[i][1] for i in range(200)}
    assert labels == set(range(7))


def test_synthetic_sizes_and_bounds() -> None:
    bundle = build_datasets("synthetic", synthetic_train=10, synthetic_val=3)
    assert bundle.image_size == 224 and bundle.num_classes == 1000
    assert (len(bundle.train), len(bundle.val)) == (10, 3)  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        bundle.val[3]
    with pytest.raises(ValueError, match="synthetic_train must be >= 1; got 0"):
        build_datasets("synthetic", synthetic_train=0)
    with pytest.raises(ValueError, match="image_size must be >= 1; got 0"):
        build_datasets("synthetic", image_size=0)


# ------------------------------------------------------------------------ digits


def test_digits_split_classes_and_range() -> None:
    bundle = build_datasets("digits")
    assert (bundle.num_classes, bundle.image_size) == (10, 32)
    assert (len(bundle.train), len(bundle.val)) == (1437, 360)  # type: ignore[arg-type]
    images = torch.stack([bundle.train[i][0] for i in range(64)])
    assert images.shape == (64, 3, 32, 32)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() == -1.0  # the background is 0 before normalisation
    torch.testing.assert_close(images[:, 0], images[:, 2], rtol=0, atol=0)
    val_labels = [bundle.val[i][1] for i in range(len(bundle.val))]  # type: ignore[arg-type]
    counts = torch.bincount(torch.tensor(val_labels), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: about 36 per class
    again = build_datasets("digits", image_size=12)
    assert again.train[0][0].shape == (3, 12, 12)
    assert again.train[0][1] == bundle.train[0][1]  # the same fixed split


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="imagefolder, synthetic, digits; got 'cifar'"):
        build_datasets("cifar")
    assert DATASETS == ("imagefolder", "synthetic", "digits")


# ------------------------------------------------------------------------ loaders


def _indices(loader: torch.utils.data.DataLoader[int]) -> list[int]:
    return [int(i) for batch in loader for i in batch]


def test_validation_shards_are_disjoint_and_cover() -> None:
    data = _Indices(10)
    shards = [
        _indices(make_loader(data, batch_size=3, rank=r, world_size=2, seed=0, train=False))
        for r in range(2)
    ]
    assert set(shards[0]).isdisjoint(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(10))
    assert shards[0] == sorted(shards[0])  # validation keeps the order


def test_validation_pads_an_uneven_split() -> None:
    data = _Indices(7)
    shards = [
        _indices(make_loader(data, batch_size=4, rank=r, world_size=2, seed=0, train=False))
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 4
    assert set(shards[0]) | set(shards[1]) == set(range(7))


def test_training_shuffles_per_epoch_and_drops_the_tail() -> None:
    data = _Indices(9)
    loaders = [
        make_loader(data, batch_size=2, rank=r, world_size=2, seed=5, train=True) for r in range(2)
    ]
    orders = []
    for epoch in (0, 1):
        shards = []
        for loader in loaders:
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            shards.append(_indices(loader))
        assert len(shards[0]) == len(shards[1]) == 4
        assert set(shards[0]).isdisjoint(shards[1])
        orders.append(shards[0])
    assert orders[0] != orders[1]
    again = make_loader(data, batch_size=2, rank=0, world_size=2, seed=5, train=True)
    assert _indices(again) == orders[0]  # epoch 0 order depends only on the seed
    kept = make_loader(
        data, batch_size=2, rank=0, world_size=2, seed=5, train=True, drop_last=False
    )
    assert len(_indices(kept)) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1; got 0"),
        ({"workers": -1}, "workers must be >= 0; got -1"),
        ({"world_size": 0}, "world_size must be >= 1; got 0"),
        ({"rank": 2}, re.escape("rank must be in [0, world_size=2); got 2")),
    ],
)
def test_make_loader_rejects_bad_arguments(kwargs: dict[str, int], message: str) -> None:
    args = {"batch_size": 2, "rank": 0, "world_size": 2, "workers": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_loader(
            _Indices(4),
            batch_size=args["batch_size"],
            rank=args["rank"],
            world_size=args["world_size"],
            seed=0,
            train=False,
            workers=args["workers"],
        )


def test_check_classes_names_where() -> None:
    check_classes(10, 10, where="ckpt.pt")
    with pytest.raises(ValueError, match=r"ckpt\.pt: the model outputs 1000 classes but the data"):
        check_classes(10, 1000, where="ckpt.pt")


# ------------------------------------------------------------ resuming mid-epoch


def test_a_loader_started_part_way_yields_the_rest_of_the_same_epoch() -> None:
    data = _Indices(40)
    loader = make_loader(data, batch_size=3, rank=1, world_size=2, seed=9, train=True)
    sampler = loader.sampler
    assert isinstance(sampler, ResumableSampler)
    sampler.set_epoch(4)
    whole = [b.tolist() for b in loader]
    sampler.set_epoch(4)
    sampler.start_at(2 * 3)  # two batches already trained
    assert [b.tolist() for b in loader] == whole[2:]
    assert [b.tolist() for b in loader] == whole  # only the next pass is shortened
    with pytest.raises(ValueError, match=r"position must be in \[0, 20\]"):
        sampler.start_at(21)


class _RandomCrop(Dataset[torch.Tensor]):
    """A random 'augmentation' of each index: what RandomResizedCrop does to an image."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> torch.Tensor:
        return index + torch.rand(2)


def test_seeded_samples_draw_the_same_augmentation_whatever_the_worker() -> None:
    seeded = SeededSamples(_RandomCrop(), seed=5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = seeded[(3, 7)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is untouched
    torch.rand(5)  # whatever else the process drew in between
    assert torch.equal(seeded[(3, 7)], first)
    assert not torch.equal(seeded[(4, 7)], first)  # another epoch, another crop
    assert not torch.equal(seeded[(3, 8)] - 1, first)
    in_process = make_loader(_RandomCrop(), batch_size=4, rank=0, world_size=1, seed=5,
                             train=True)  # fmt: skip
    two_workers = make_loader(_RandomCrop(), batch_size=4, rank=0, world_size=1, seed=5,
                              train=True, workers=2)  # fmt: skip
    for loader in (in_process, two_workers):
        loader.sampler.set_epoch(1)  # type: ignore[attr-defined]
    assert torch.equal(torch.cat(list(in_process)), torch.cat(list(two_workers)))


@pytest.mark.parametrize("drop_last", [False, True])
def test_a_resharded_sampler_samples_as_a_new_one_would(drop_last: bool) -> None:
    from torch.utils.data import DistributedSampler

    data = list(range(103))  # not a multiple of any world size below
    sampler = ResumableSampler(data, num_replicas=4, rank=3, seed=7, drop_last=drop_last)
    for rank, world in ((0, 3), (2, 3), (4, 5), (1, 2)):
        sampler.reshard(rank, world)
        fresh = DistributedSampler(data, num_replicas=world, rank=rank, seed=7, drop_last=drop_last)
        for epoch in (0, 5):
            sampler.set_epoch(epoch)
            fresh.set_epoch(epoch)
            assert list(sampler) == list(fresh) and len(sampler) == len(fresh)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\); got 3"):
        sampler.reshard(3, 3)
