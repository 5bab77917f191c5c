"""Image classification data for training Para-Former: one loader API over five datasets.

docs/method.md section 5 reports accuracy against the number of parallel layers, and says that
data *scale* and *diversity* strongly influence it. This module gives every experiment the
same data path:

    splits = load_data("digits", fraction=0.25, seed=0)   # or per_class=..., num_classes=...
    train, val, test = splits.loaders(batch_size=64, seed=0)
    create_model("pf-1-8", **splits.model_kwargs())        # image_size, in_channels, num_classes

Datasets: `digits` (scikit-learn's bundled 8x8 digits: the default, never needs a network),
and `mnist`, `fashion-mnist`, `cifar10`, `cifar100` through torchvision, cached under a data
root (argument `root`, else the DUAT_DATA environment variable, else `data/`).

Splits are fixed: the test set (torchvision's test files; for digits a stratified 20 %
drawn with a constant seed) and a stratified validation slice of the training pool never
change with the experiment's seed. The seed only chooses *which* training examples a subset
keeps (`fraction`, `per_class`) and which classes (`num_classes`). Subsets are stratified,
drawn from the training split only, and nested: for one seed the 10 % subset is inside the
25 % one.

Images stay in memory as tensors (uint8 where the source is), are scaled to [0, 1] and
normalised per channel with the training pool's mean and std, batch by batch. The 32x32
colour sets get light augmentation on the training split: random crop (4-pixel zero
padding) and horizontal flip, drawn from the loader's own seeded generator.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torchvision.datasets as tvd
from sklearn.datasets import load_digits

from duat.checks import real, whole

DATA_ENV = "DUAT_DATA"
DEFAULT_ROOT = "data"
SPLIT_SEED = 0          # the test / validation split: the same for every experiment seed
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_size: int      # images are image_size x image_size
    in_channels: int     # 1 grey, 3 colour
    num_classes: int
    torchvision: str | None  # torchvision.datasets class, None for the bundled digits
    augment: bool        # light augmentation on the training split by default
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 8, 1, 10, None, False,
                          "1,797 handwritten digits, 8x8 grey (scikit-learn, bundled, offline)"),
    "mnist": DatasetInfo("mnist", 28, 1, 10, "MNIST", False,
                         "70,000 handwritten digits, 28x28 grey"),
    "fashion-mnist": DatasetInfo("fashion-mnist", 28, 1, 10, "FashionMNIST", False,
                                 "70,000 clothing images, 28x28 grey"),
    "cifar10": DatasetInfo("cifar10", 32, 3, 10, "CIFAR10", True,
                           "60,000 colour images, 32x32, 10 classes"),
    "cifar100": DatasetInfo("cifar100", 32, 3, 100, "CIFAR100", True,
                            "60,000 colour images, 32x32, 100 classes"),
}


class DatasetUnavailableError(FileNotFoundError):
    """The files of a torchvision dataset are not on disk and could not be downloaded."""


def list_datasets() -> list[str]:
    return list(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The fixed facts about a dataset (input shape, classes); ValueError for unknown names."""
    if not isinstance(name, str) or name.strip().lower() not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name.strip().lower()]


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets are cached: `root`, else $DUAT_DATA, else ./data."""
    chosen = root if root is not None else (os.environ.get(DATA_ENV) or DEFAULT_ROOT)
    return Path(chosen).expanduser()


# ----------------------------------------------------------------------------- raw arrays

def _load_digits() -> tuple[torch.Tensor, torch.Tensor, float]:
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8), 0..16
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    return images, labels, 1.0 / 16.0


def _load_torchvision(info: DatasetInfo, root: Path, train: bool, download: bool):
    cls = getattr(tvd, info.torchvision)
    folder = _expected_folder(info, root)
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError:  # "Dataset not found": try a download if allowed
        if not download:
            raise DatasetUnavailableError(_missing_message(info, folder, "downloads are off")) from None
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as err:  # no network, proxy refused, server down, ...
            raise DatasetUnavailableError(
                _missing_message(info, folder, f"the download failed: {err}")) from err
    data = torch.as_tensor(np.asarray(ds.data))           # (N, H, W) or (N, H, W, C), uint8
    images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return images.contiguous(), labels, 1.0 / 255.0


def _expected_folder(info: DatasetInfo, root: Path) -> Path:
    """The folder torchvision reads: root/MNIST/raw, root/cifar-10-batches-py, ..."""
    base = {"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python"}
    return root / base[info.torchvision] if info.torchvision in base else root / info.torchvision / "raw"


def _missing_message(info: DatasetInfo, folder: Path, why: str) -> str:
    return (f"dataset {info.name!r} is not available: its files were not found under "
            f"{folder.resolve()} and {why}. Either allow the download on a machine with a "
            f"network, or copy torchvision's {info.torchvision} files into that folder "
            f"(choose another root with root=..., --data-root or ${DATA_ENV}); see data/README.md. "
            f"The dataset 'digits' is bundled with scikit-learn and works offline.")


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): `fraction` of every class held out, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


# ----------------------------------------------------------------------------- subsets

def subset_indices(labels, *, fraction: float | None = None, per_class: int | None = None,
                   seed: int = 0) -> np.ndarray:
    """Stratified, seeded subset of positions into `labels` (sorted).

    fraction: keep round(fraction * count) examples of every class (at least one);
    per_class: keep exactly that many of every class. Give one of them, or neither (all).
    For one seed, subsets are nested: a smaller fraction keeps a prefix of a larger one's.
    """
    labels = np.asarray(labels)
    if fraction is not None and per_class is not None:
        raise ValueError("give either fraction or per_class, not both")
    if fraction is not None:
        _check_fraction(fraction)
    counts = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    if per_class is not None:
        per_class = whole("per_class", per_class)
        smallest = min(counts.values())
        if per_class > smallest:
            raise ValueError(f"per_class={per_class} is more than the smallest class holds "
                             f"({smallest} training examples); expected at most {smallest}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c, count in counts.items():
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(count)]
        if fraction is not None:
            k = max(1, int(round(fraction * count)))
        elif per_class is not None:
            k = per_class
        else:
            k = count
        chosen.append(idx[:k])
    return np.sort(np.concatenate(chosen))


def _check_fraction(fraction) -> None:
    real("fraction", fraction, 0, 1, low_open=True)


def choose_classes(total: int, num_classes: int, seed: int) -> list[int]:
    """`num_classes` distinct class ids out of range(total), chosen by `seed` (sorted)."""
    num_classes = whole("num_classes", num_classes, minimum=None)
    if not 2 <= num_classes <= total:
        raise ValueError(f"num_classes={num_classes} is not possible: the dataset has {total} "
                         f"classes; expected 2 <= num_classes <= {total}")
    rng = np.random.default_rng(seed)
    return sorted(int(c) for c in rng.choice(total, size=num_classes, replace=False))


# ----------------------------------------------------------------------------- tensors

class TensorImages(torch.utils.data.Dataset):
    """Images (N, C, H, W) and labels (N,) in memory; normalised on the way out.

    `indices` are the positions of these examples in their source pool (the dataset's
    training files, or its test files; for digits, the one bundled array).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, scale: float,
                 mean: torch.Tensor, std: torch.Tensor, indices: np.ndarray, pool: str,
                 augment: bool = False):
        if images.dim() != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"expected images (N, C, H, W) and labels (N,), got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        self.images, self.labels = images, labels
        self.scale, self.mean, self.std = scale, mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        self.indices, self.pool, self.augment = np.asarray(indices), pool, augment

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x, y = self.batch(torch.tensor([i]))
        return x[0], y[0]

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw.float() * self.scale - self.mean) / self.std          # (B, C, H, W)

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None):
        """Normalised images and labels at positions idx; augmented if enabled and a
        generator is given (the training loader passes one)."""
        x = self.normalise(self.images[idx])
        if self.augment and generator is not None:
            x = random_crop_flip(x, pad=4, generator=generator)
        return x, self.labels[idx]

    def image(self, i: int) -> np.ndarray:
        """Example i for display: (H, W) or (H, W, C), floats in [0, 1]."""
        img = (self.images[i].float() * self.scale).clamp(0, 1)
        return (img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy()

    def class_counts(self) -> dict[int, int]:
        values, counts = torch.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop after zero padding, and a random horizontal flip. (B,C,H,W)."""
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))                 # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    rows = (dy[:, None] + torch.arange(H))[:, :, None]                         # (B, H, 1)
    cols = (dx[:, None] + torch.arange(W))[:, None, :]                         # (B, 1, W)
    b = torch.arange(B)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)       # (B, C, H, W)
    flip = torch.rand(B, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out.contiguous()


class BatchLoader:
    """Batches straight from a TensorImages, shuffled by a seeded per-epoch generator.

    Iterating yields (x, y). The order of epoch e depends only on (seed, e), so a resumed
    run sees the same batches as an uninterrupted one; the trainer calls set_epoch(e).
    """

    def __init__(self, dataset: TensorImages, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False):
        batch_size = whole("batch_size", batch_size)
        if len(dataset) == 0:
            raise ValueError("cannot make batches from an empty dataset")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch) if self.shuffle else None
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.dataset.batch(idx, generator=g)


# ----------------------------------------------------------------------------- splits

@dataclass
class DataSplits:
    """Train / validation / test sets of one dataset, and what they were drawn with."""

    info: DatasetInfo      # num_classes is the number kept (after num_classes / classes)
    train: TensorImages
    val: TensorImages
    test: TensorImages
    classes: list[int]     # original class ids, in the order of the new labels 0..k-1
    config: dict           # the arguments that made these splits (for result records)

    def model_kwargs(self) -> dict:
        """The input shape a model needs: image_size, in_channels, num_classes."""
        return dict(image_size=self.info.image_size, in_channels=self.info.in_channels,
                    num_classes=self.info.num_classes)

    def loaders(self, batch_size: int = 64, seed: int = 0, eval_batch_size: int | None = None):
        """(train, val, test) loaders; only the training one shuffles (and augments)."""
        eval_bs = eval_batch_size or max(batch_size, 256)
        return (BatchLoader(self.train, batch_size, shuffle=True, seed=seed),
                BatchLoader(self.val, eval_bs),
                BatchLoader(self.test, eval_bs))

    def summary(self) -> dict:
        return {"dataset": self.info.name, "classes": self.classes, "train": len(self.train),
                "val": len(self.val), "test": len(self.test),
                "train_per_class": self.train.class_counts()}


def load_data(name: str = "digits", *, root: str | os.PathLike | None = None,
              download: bool = True, val_fraction: float = 0.1,
              fraction: float | None = None, per_class: int | None = None,
              num_classes: int | None = None, classes: Sequence[int] | None = None,
              seed: int = 0, augment: bool | None = None) -> DataSplits:
    """Load a dataset and cut its splits.

    name: one of list_datasets(). root: cache folder (default $DUAT_DATA or data/).
    download: fetch missing torchvision files (digits never needs it).
    val_fraction: stratified share of the training pool held out for validation (fixed).
    fraction / per_class: a stratified subset of the training split (scale study).
    num_classes: keep that many classes, chosen by `seed` (diversity study); or `classes`:
    exactly these class ids. Labels are renumbered 0..k-1 in every split.
    seed: chooses the subset and the classes; the test and validation sets never change.
    augment: random crop + flip on the training split (default: on for the 32x32 sets).
    """
    info = dataset_info(name)
    whole("seed", seed, minimum=0)
    real("val_fraction", val_fraction, 0, 0.5, low_open=True, high_open=True)
    if fraction is not None:
        _check_fraction(fraction)
    if num_classes is not None and classes is not None:
        raise ValueError("give either num_classes or classes, not both")

    # Which classes (checked before any file is read, so bad input fails fast).
    if classes is not None:
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < info.num_classes]
        if bad or len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError(f"classes must be at least 2 distinct ids in 0..{info.num_classes - 1} "
                             f"({info.name} has {info.num_classes} classes), got {classes}")
        kept = sorted(classes)
    elif num_classes is not None:
        kept = choose_classes(info.num_classes, num_classes, seed)
    else:
        kept = list(range(info.num_classes))

    # The fixed pools: (images, labels) for training and test.
    if info.torchvision is None:
        images, labels, scale = _load_digits()
        train_pos, test_pos = _stratified_split(labels.numpy(), DIGITS_TEST_FRACTION, SPLIT_SEED)
        train_x, train_y, test_x, test_y = images[train_pos], labels[train_pos], images[test_pos], labels[test_pos]
        pool_train, pool_test, train_pool = train_pos, test_pos, "all"
        test_pool = "all"
    else:
        rootp = data_root(root)
        train_x, train_y, scale = _load_torchvision(info, rootp, True, download)
        test_x, test_y, _ = _load_torchvision(info, rootp, False, download)
        pool_train, pool_test = np.arange(len(train_y)), np.arange(len(test_y))
        train_pool, test_pool = "train", "test"

    # Per-channel normalisation from the whole training pool (never the test set).
    pixels = train_x.float() * scale                                        # (N, C, H, W)
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-6)
    del pixels

    fit_pos, val_pos = _stratified_split(train_y.numpy(), val_fraction, SPLIT_SEED)

    def restrict(pos: np.ndarray, y: torch.Tensor) -> np.ndarray:  # keep the chosen classes
        return pos[np.isin(y[pos].numpy(), kept)]

    fit_pos, val_pos = restrict(fit_pos, train_y), restrict(val_pos, train_y)
    test_keep = restrict(np.arange(len(test_y)), test_y)
    if fraction is not None or per_class is not None:
        fit_pos = fit_pos[subset_indices(train_y[fit_pos].numpy(), fraction=fraction,
                                         per_class=per_class, seed=seed)]

    relabel = torch.full((info.num_classes,), -1, dtype=torch.int64)
    relabel[kept] = torch.arange(len(kept))
    augment = info.augment if augment is None else bool(augment)
    common = dict(scale=scale, mean=mean, std=std)

    def make(x, y, pos, source, pool, aug=False):
        return TensorImages(x[pos], relabel[y[pos]], indices=source[pos], pool=pool,
                            augment=aug, **common)

    splits = DataSplits(
        info=replace(info, num_classes=len(kept)),
        train=make(train_x, train_y, fit_pos, pool_train, train_pool, augment),
        val=make(train_x, train_y, val_pos, pool_train, train_pool),
        test=make(test_x, test_y, test_keep, pool_test, test_pool),
        classes=kept,
        config=dict(dataset=info.name, val_fraction=val_fraction, fraction=fraction,
                    per_class=per_class, num_classes=len(kept), classes=kept, seed=seed,
                    augment=augment, split_seed=SPLIT_SEED),
    )
    return splits
