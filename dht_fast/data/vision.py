"""Image datasets for the neural learners, through torchvision, held as uint8 tensors in memory.

* ``mnist``: the idx files found by :func:`dht_fast.data.mnist.find_mnist`, unpacked once into
  the cache in the ``MNIST/raw`` layout that ``torchvision.datasets.MNIST`` reads.
* ``cifar10``: the JPEG archive of ``../shared/data/cifar10-jpeg`` (or ``data_root``), extracted
  once into the cache and read with ``torchvision.datasets.ImageFolder``; the decoded images are
  cached as one uint8 tensor per split.
* ``cifar100``: ``torchvision.datasets.CIFAR100`` from a user path holding ``cifar-100-python``.
* ``generated``: deterministic data of CIFAR-100's shape (3 x 32 x 32, 100 classes): a smooth
  random prototype per class plus pixel noise, learnable, for smoke tests and benchmarks.

The cache is ``$DHT_FAST_CACHE`` or ``~/.cache/dht_fast``; every cache entry is written under a
temporary name and renamed, so a killed extraction never leaves a half-written entry.
CIFAR training splits are augmented by a random crop (padding 4) and a horizontal flip, drawn
from torch's global RNG (so a checkpoint of that RNG state makes a resumed run repeatable). The
crop and flip are the distribution of ``v2.RandomCrop(32, padding=4)`` + ``v2.RandomHorizontalFlip``
applied per image, done for the whole batch in one gather: per-image transform calls cost
~0.2 ms each, 25 ms for a batch of 128.
"""
from __future__ import annotations

import gzip
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets
from torchvision.transforms import v2

from dht_fast.data.base import DatasetNotFound
from dht_fast.data.mnist import find_mnist

log = logging.getLogger(__name__)

VISION_DATASETS = ("mnist", "cifar10", "cifar100", "generated")
CACHE_ENV = "DHT_FAST_CACHE"
_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_CIFAR10_ARCHIVE = "cifar10-jpeg.tar.gz"
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "generated": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def crop_flip(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Per image: a random ``H x W`` crop of the zero-padded image, then a flip with probability
    1/2. ``images``: ``(b, C, H, W)``; returns the same shape and dtype."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (b, 1))
    left = torch.randint(0, 2 * pad + 1, (b, 1))
    flip = torch.rand(b, 1) < 0.5
    rows = top + torch.arange(h)
    cols = left + torch.arange(w)
    cols = torch.where(flip, cols.flip(1), cols)
    # shape: (b, C, H, W) by broadcasting (b,1,1,1), (1,C,1,1), (b,1,H,1), (b,1,1,W)
    return padded[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1),
                  rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class ImageTensorDataset(torch.utils.data.Dataset):
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64, normalized on access.

    ``dataset[i]`` is ``(image (C, H, W) float32, label)``; :meth:`batch` returns a whole
    mini-batch ``(x (b, C, H, W) float32, y (b,))`` without a DataLoader. ``augment``: a random
    crop with zero padding 4 and a random horizontal flip per image (:func:`crop_flip`).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, augment: bool):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        self.images, self.labels, self.augment = images, labels, augment
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``indices`` ``(b,)`` int64 -> ``(x (b, C, H, W) float32, y (b,) int64)``."""
        imgs = self.images[indices]
        if self.augment:
            imgs = crop_flip(imgs)
        return (imgs.float() - self.mean) / self.std, self.labels[indices]

    def __getitem__(self, i: int):
        x, y = self.batch(torch.tensor([i]))
        return x[0], int(y[0])


@dataclass(frozen=True)
class VisionData:
    """A train and a test split. ``in_shape``: ``(C, H, W)``."""

    name: str
    train: ImageTensorDataset
    test: ImageTensorDataset
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return self.train.shape


def cache_dir(path=None) -> Path:
    """Where extracted and decoded data lives: ``path``, ``$DHT_FAST_CACHE`` or
    ``~/.cache/dht_fast``."""
    root = path or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dht_fast"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished temporary entry into place; a concurrent winner is kept."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _mnist(data_root, cache: Path, split: str):
    root = cache / "mnist"
    raw = root / "MNIST" / "raw"
    if not raw.is_dir():
        src = find_mnist(data_root)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".mnist-"))
        (tmp / "MNIST" / "raw").mkdir(parents=True)
        for gz in sorted(src.glob("*-ubyte.gz")):
            with gzip.open(gz, "rb") as fin, open(tmp / "MNIST" / "raw" / gz.stem, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        root.mkdir(exist_ok=True)
        _publish(tmp / "MNIST", root / "MNIST")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("unpacked MNIST from %s into %s", src, raw)
    ds = datasets.MNIST(str(root), train=split == "train", download=False)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long(), 10


def _cifar10(data_root, cache: Path, split: str):
    tensor_file = cache / "cifar10-jpeg" / f"{split}_uint8.pt"
    if tensor_file.is_file():
        images, labels = torch.load(tensor_file, weights_only=True)
        return images, labels, 10
    folder = cache / "cifar10-jpeg"
    if not (folder / "test").is_dir():
        archive = Path(data_root or _SHARED / "cifar10-jpeg")
        if archive.is_dir():
            archive = archive / _CIFAR10_ARCHIVE
        if not archive.is_file():
            raise DatasetNotFound(
                f"CIFAR-10 archive not found at {archive}; pass the path of "
                f"{_CIFAR10_ARCHIVE} (or its folder) with --data-root"
            )
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".cifar10-"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        _publish(tmp, folder)
        log.info("extracted %s into %s", archive, folder)
    ds = datasets.ImageFolder(str(folder / split), transform=v2.PILToTensor())
    images = torch.stack([img for img, _ in ds])
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    fd, tmp_file = tempfile.mkstemp(dir=folder, suffix=".pt.tmp")
    os.close(fd)
    torch.save((images, labels), tmp_file)
    os.replace(tmp_file, tensor_file)
    return images, labels, 10


def _cifar100(data_root, split: str):
    if data_root is None:
        raise DatasetNotFound(
            "CIFAR-100 has no copy here: pass --data-root DIR, where DIR holds the python "
            "version as torchvision reads it (DIR/cifar-100-python/{train,test,meta})"
        )
    root = Path(data_root)
    if root.name == "cifar-100-python":
        root = root.parent
    if not (root / "cifar-100-python" / split).is_file():
        raise DatasetNotFound(
            f"CIFAR-100 not found: expected {root / 'cifar-100-python' / split} "
            "(torchvision's cifar-100-python layout)"
        )
    ds = datasets.CIFAR100(str(root), train=split == "train", download=False)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64), 100


def generated_images(n: int, *, num_classes: int = 100, seed: int = 0, split_seed: int = 0):
    """``n`` images ``(n, 3, 32, 32)`` uint8 with labels ``(n,)``: class prototypes (4x4 noise
    upsampled, fixed by ``seed``) plus pixel noise (drawn from ``split_seed``)."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, 3, 4, 4, generator=gen)
    protos = torch.nn.functional.interpolate(protos, size=(32, 32), mode="bilinear")
    gen.manual_seed(seed * 1_000_003 + split_seed + 1)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    noisy = protos[labels] * 0.6 + 0.2 + 0.15 * torch.randn(n, 3, 32, 32, generator=gen)
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8), labels


def load_vision(name: str, *, data_root=None, cache=None, limit_train: int | None = None,
                limit_test: int | None = None, generated_train: int = 50000,
                generated_test: int = 10000, augment: bool = True,
                seed: int = 0) -> VisionData:
    """Train and test splits of ``name`` (one of :data:`VISION_DATASETS`).

    ``limit_train`` / ``limit_test`` keep a random subset of that size (fixed by ``seed``);
    ``generated_*`` are the sizes of the generated dataset; ``augment=False`` turns off the crop
    and flip of the CIFAR-shaped training splits. Missing files raise
    :class:`~dht_fast.data.base.DatasetNotFound` saying where to put them.
    """
    if name not in VISION_DATASETS:
        raise ValueError(f"dataset must be one of {VISION_DATASETS}, got {name!r}")
    splits = {}
    for split in ("train", "test"):
        if name == "mnist":
            images, labels, classes = _mnist(data_root, cache_dir(cache), split)
        elif name == "cifar10":
            images, labels, classes = _cifar10(data_root, cache_dir(cache), split)
        elif name == "cifar100":
            images, labels, classes = _cifar100(data_root, split)
        else:
            n = generated_train if split == "train" else generated_test
            images, labels = generated_images(n, split_seed=int(split == "test"))
            classes = 100
        limit = limit_train if split == "train" else limit_test
        if limit is not None and limit < len(labels):
            keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
            images, labels = images[keep[:limit]], labels[keep[:limit]]
        flip = augment and split == "train" and name != "mnist"
        splits[split] = ImageTensorDataset(images, labels, *_STATS[name], augment=flip)
    return VisionData(name, splits["train"], splits["test"], classes)
