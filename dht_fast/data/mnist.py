"""MNIST from its idx ``.gz`` files, in the two settings the experiments use.

The files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``) are looked for in, in order: the
``data_root`` argument, the ``DHT_FAST_DATA`` environment variable, then ``../shared/data`` beside
the repository. A root may be the folder holding the files or one with an ``mnist/`` subfolder.
"""
from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import torch

from dht_fast.data.base import DatasetNotFound, Domain, TeachingData

log = logging.getLogger(__name__)

ENV_VAR = "DHT_FAST_DATA"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def find_mnist(data_root=None) -> Path:
    """The folder that holds the four MNIST files, or :class:`DatasetNotFound` saying how to
    provide one."""
    if data_root is not None:
        candidates, origin = [Path(data_root)], "--data-root"
    elif os.environ.get(ENV_VAR):
        candidates, origin = [Path(os.environ[ENV_VAR])], f"${ENV_VAR}"
    else:
        candidates, origin = [_DEFAULT_ROOT], "the default location"
    names = [n for pair in _FILES.values() for n in pair]
    for root in candidates:
        for folder in (root, root / "mnist"):
            if all((folder / n).is_file() for n in names):
                return folder
    raise DatasetNotFound(
        f"MNIST not found in {candidates[0]} ({origin}); put {', '.join(names)} there (or in an "
        f"mnist/ subfolder) and pass its path with --data-root or ${ENV_VAR}"
    )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def load_mnist(split: str, data_root=None):
    """``images`` ``(N, 784)`` float32 scaled to ``[-1, 1]`` and ``labels`` ``(N,)`` int64."""
    folder = find_mnist(data_root)
    img_name, lbl_name = _FILES[split]
    images = _read_idx(folder / img_name).reshape(-1, 28 * 28)
    labels = _read_idx(folder / lbl_name)
    log.debug("read MNIST %s from %s: %d images", split, folder, len(labels))
    x = torch.from_numpy(images.astype(np.float32)) / 127.5 - 1.0
    return x, torch.from_numpy(labels.astype(np.int64))


def _pick(x, y, digits, n, generator):
    """``n`` random samples of the given digits, relabelled ``0 .. len(digits) - 1``."""
    keep = torch.nonzero(torch.isin(y, torch.tensor(digits))).squeeze(1)
    if n > len(keep):
        raise ValueError(f"asked for {n} samples of digits {digits}, only {len(keep)} exist")
    idx = keep[torch.randperm(len(keep), generator=generator)[:n]]
    relabel = torch.full((10,), -1, dtype=torch.int64)
    relabel[torch.tensor(digits)] = torch.arange(len(digits))
    return x[idx], relabel[y[idx]]


def mnist_3v5_task(data_root=None, *, n_train: int = 1000, n_test: int = 200, dim: int = 24,
                   seed: int = 0) -> TeachingData:
    """The authors' binary task: digits 3 (class 0) vs 5 (class 1), pixels in ``[-1, 1]``, then a
    fixed Gaussian projection ``(784, dim)`` of std 0.1 drawn from ``seed``. The domain is the
    pixel box ``[-1, 1]^784`` seen through the projection."""
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr = _pick(*load_mnist("train", data_root), (3, 5), n_train, gen)
    x_te, y_te = _pick(*load_mnist("test", data_root), (3, 5), n_test, gen)
    projection = 0.1 * torch.randn(28 * 28, dim, generator=gen)
    domain = Domain(torch.full((784,), -1.0), torch.full((784,), 1.0), projection)
    return TeachingData("mnist", x_tr @ projection, y_tr, x_te @ projection, y_te, 2, domain)


def mnist_10class_task(data_root=None, *, n_train: int = 10000, n_test: int = 1000,
                       seed: int = 0) -> TeachingData:
    """The extension: all ten digits on the raw 784 pixels in ``[-1, 1]`` (domain: that box)."""
    gen = torch.Generator().manual_seed(seed)
    digits = tuple(range(10))
    x_tr, y_tr = _pick(*load_mnist("train", data_root), digits, n_train, gen)
    x_te, y_te = _pick(*load_mnist("test", data_root), digits, n_test, gen)
    domain = Domain(torch.full((784,), -1.0), torch.full((784,), 1.0))
    return TeachingData("mnist10", x_tr, y_tr, x_te, y_te, 10, domain)
