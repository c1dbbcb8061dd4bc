"""What a teaching experiment needs from a dataset, and the registry of datasets by name.

A :class:`TeachingData` holds a train split (the teachers' pool and the target's training set),
a test split (for accuracy) and the :class:`Domain` inside which a synthesizing teacher may
hallucinate samples. The domain is a box in a *raw* space (pixels, for MNIST) that an optional
fixed linear map sends to the learner's features, so that synthesized samples are exactly the
images of valid inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


class DatasetNotFound(FileNotFoundError):
    """The files of a dataset are missing; the message says how to provide them."""


@dataclass(frozen=True)
class Domain:
    """The data domain: ``{u @ projection : lower <= u <= upper}``.

    lower, upper: ``(R,)`` bounds of the raw input. projection: ``(R, D)`` fixed map from raw
    inputs to the learner's ``D`` features, or None when the features are the raw inputs.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    projection: Optional[torch.Tensor] = None

    def features(self, u: torch.Tensor) -> torch.Tensor:
        """Raw inputs ``(B, R)`` to features ``(B, D)``."""
        return u if self.projection is None else u @ self.projection

    def pull_back(self, grad_features: torch.Tensor) -> torch.Tensor:
        """A gradient with respect to the features ``(B, D)`` as one w.r.t. the raw input."""
        return grad_features if self.projection is None else grad_features @ self.projection.T

    def to(self, device) -> "Domain":
        proj = None if self.projection is None else self.projection.to(device)
        return Domain(self.lower.to(device), self.upper.to(device), proj)


@dataclass(frozen=True)
class TeachingData:
    """A classification task for a linear learner.

    x_train: ``(N, D)``; y_train: ``(N,)`` int64 in ``[0, C)``; x_test: ``(M, D)``;
    y_test: ``(M,)``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    domain: Domain

    @property
    def dim(self) -> int:
        return self.x_train.shape[1]

    def to(self, device) -> "TeachingData":
        return TeachingData(self.name, self.x_train.to(device), self.y_train.to(device),
                            self.x_test.to(device), self.y_test.to(device), self.num_classes,
                            self.domain.to(device))


DATASETS = ("moons", "mnist", "mnist10")


def load_dataset(name: str, *, data_root=None, seed: int = 0) -> TeachingData:
    """Build a dataset by name: ``moons``, ``mnist`` (3 vs 5, projected to 24 dims, the authors'
    setting) or ``mnist10`` (all ten digits, 784 pixels). ``seed`` fixes the sampling, the split
    and the projection; ``data_root`` is where the MNIST files are (see :mod:`dht_fast.data.mnist`).
    """
    if name == "moons":
        from dht_fast.data.moons import moons_task

        return moons_task(seed=seed)
    if name == "mnist":
        from dht_fast.data.mnist import mnist_3v5_task

        return mnist_3v5_task(data_root, seed=seed)
    if name == "mnist10":
        from dht_fast.data.mnist import mnist_10class_task

        return mnist_10class_task(data_root, seed=seed)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
