"""Two interleaving half circles, as scikit-learn's ``make_moons`` draws them (no sklearn needed).

The authors' setting: 1000 points, noise 0.2, 800 train / 200 test, two features.
"""
from __future__ import annotations

import math

import torch

from dht_fast.data.base import Domain, TeachingData


def make_moons(n: int, *, noise: float = 0.2, generator: torch.Generator | None = None):
    """``n`` points: ``x`` ``(n, 2)`` float32 and ``y`` ``(n,)`` int64, shuffled.

    Class 0 is the upper arc ``(cos t, sin t)``, class 1 the lower ``(1 - cos t, 0.5 - sin t)``,
    ``t`` evenly spaced in ``[0, pi]``; Gaussian noise of std ``noise`` is added to every point.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    n_upper = n // 2
    n_lower = n - n_upper
    t_up = torch.linspace(0, math.pi, n_upper, dtype=torch.float64)
    t_lo = torch.linspace(0, math.pi, n_lower, dtype=torch.float64)
    upper = torch.stack([t_up.cos(), t_up.sin()], 1)
    lower = torch.stack([1 - t_lo.cos(), 0.5 - t_lo.sin()], 1)
    x = torch.cat([upper, lower])
    y = torch.cat([torch.zeros(n_upper, dtype=torch.int64), torch.ones(n_lower, dtype=torch.int64)])
    order = torch.randperm(n, generator=generator)
    x = x[order] + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x.float(), y[order]


def moons_task(*, n: int = 1000, noise: float = 0.2, n_train: int = 800, seed: int = 0):
    """The half-moons task; its domain is the bounding box of the training points."""
    if not 0 < n_train < n:
        raise ValueError(f"n_train must be in (0, n) = (0, {n}), got {n_train}")
    x, y = make_moons(n, noise=noise, generator=torch.Generator().manual_seed(seed))
    x_train, y_train = x[:n_train], y[:n_train]
    domain = Domain(x_train.min(0).values, x_train.max(0).values)
    return TeachingData("moons", x_train, y_train, x[n_train:], y[n_train:], 2, domain)
