"""duat.data: splits are fixed and disjoint, subsets stratified, seeded and nested, bad
input fails clearly, and the torchvision path works offline on files already on disk."""
import gzip
import struct

import numpy as np
import pytest
import torch

from duat import data
from duat.data import load_data, subset_indices


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_digits_shapes_and_model_kwargs(digits):
    assert digits.model_kwargs() == dict(image_size=8, in_channels=1, num_classes=10)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    x, y = next(iter(digits.loaders(batch_size=16)[0]))
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    # normalised with the training pool's statistics
    all_x = torch.cat([b for b, _ in digits.loaders(batch_size=256)[0]])
    assert abs(all_x.mean().item()) < 0.1 and abs(all_x.std().item() - 1) < 0.1


def test_splits_are_disjoint_and_fixed(digits):
    train, val, test = (set(s.indices.tolist()) for s in (digits.train, digits.val, digits.test))
    assert not train & test and not val & test and not train & val
    other = load_data("digits", seed=5, fraction=0.5)
    assert np.array_equal(other.test.indices, digits.test.indices)  # the seed never moves the test set
    assert np.array_equal(other.val.indices, digits.val.indices)
    assert set(other.train.indices.tolist()) <= train                  # subsets come from train only


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_fraction_subset_is_stratified_and_disjoint_from_test(digits, fraction):
    sub = load_data("digits", fraction=fraction, seed=3)
    full_counts = digits.train.class_counts()
    for c, n in sub.train.class_counts().items():
        assert abs(n - fraction * full_counts[c]) <= 1
    assert not set(sub.train.indices.tolist()) & set(digits.test.indices.tolist())
    assert abs(len(sub.train) - fraction * len(digits.train)) <= 10


def test_subsets_are_seeded_and_nested():
    a = load_data("digits", fraction=0.25, seed=1).train.indices
    b = load_data("digits", fraction=0.25, seed=1).train.indices
    c = load_data("digits", fraction=0.25, seed=2).train.indices
    small = load_data("digits", fraction=0.1, seed=1).train.indices
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(small.tolist()) <= set(a.tolist())


def test_per_class_and_num_classes():
    sub = load_data("digits", num_classes=5, per_class=40, seed=0)
    assert sub.info.num_classes == 5 and sub.model_kwargs()["num_classes"] == 5
    assert sub.train.class_counts() == {k: 40 for k in range(5)}
    # every split holds only the chosen classes, renumbered 0..4
    for split in (sub.val, sub.test):
        assert set(split.labels.tolist()) == set(range(5))
    assert sub.classes != load_data("digits", num_classes=5, per_class=40, seed=1).classes
    explicit = load_data("digits", classes=[3, 8])
    assert explicit.classes == [3, 8] and explicit.info.num_classes == 2


def test_subset_indices_counts():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    idx = subset_indices(labels, fraction=0.5, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 10, 15]
    idx = subset_indices(labels, per_class=7, seed=0)
    assert np.bincount(labels[idx]).tolist() == [7, 7, 7]


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.randn(8, 3, 32, 32)
    a = data.random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    b = data.random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_loader_order_depends_on_seed_and_epoch(digits):
    loader = digits.loaders(batch_size=64, seed=0)[0]
    first = next(iter(loader))[1]
    assert torch.equal(first, next(iter(loader))[1])
    loader.set_epoch(1)
    assert not torch.equal(first, next(iter(loader))[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="imagenet"), "known datasets: digits, mnist"),
    (dict(fraction=0.0), "fraction must be a number in (0, 1]"),
    (dict(fraction=1.5), "fraction must be a number in (0, 1]"),
    (dict(fraction=-0.1), "fraction must be a number in (0, 1]"),
    (dict(num_classes=11), "the dataset has 10 classes"),
    (dict(num_classes=1), "2 <= num_classes <= 10"),
    (dict(classes=[3, 12]), "has 10 classes"),
    (dict(per_class=500), "at most 125"),
    (dict(fraction=0.5, per_class=10), "not both"),
])
def test_bad_input_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError) as err:
        load_data(**kwargs)
    assert message in str(err.value)


def test_missing_files_offline_say_where_and_point_to_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("DUAT_DATA", str(tmp_path))
    with pytest.raises(data.DatasetUnavailableError) as err:
        load_data("cifar10", download=False)
    message = str(err.value)
    assert str(tmp_path) in message and "cifar-10-batches-py" in message and "'digits'" in message


def _write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(str(path) + ".gz", "wb") as f:  # torchvision also reads the .gz files
        f.write(header + array.tobytes())
    path.write_bytes(header + array.tobytes())


def test_torchvision_dataset_from_files_on_disk(tmp_path):
    """MNIST-format files written here: the torchvision path runs without a network."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    splits = load_data("mnist", root=tmp_path, download=False, per_class=5)
    assert splits.model_kwargs() == dict(image_size=28, in_channels=1, num_classes=10)
    assert len(splits.train) == 50 and len(splits.test) == 50
    x, _ = next(iter(splits.loaders(batch_size=8)[0]))
    assert x.shape == (8, 1, 28, 28)
