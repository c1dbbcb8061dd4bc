"""A linear softmax-regression learner trained by SGD, and the target ``w*`` it is taught toward.

Logits ``z = x @ weight.T + bias``; loss ``l = -sum_c y_c log softmax(z)_c`` for one-hot or soft
targets ``y``; on a batch of ``B`` samples one SGD step moves ``w = (weight, bias)`` by
``-lr * mean_i g_i``. A binary task is a two-class softmax, not a logistic learner: see
:func:`dht_fast.logistic_as_softmax` for the exact map (a logistic learner with step ``2 lr``).

Softmax is unchanged when the same vector is added to every row of ``weight`` (and the same number
to every entry of ``bias``), and SGD never moves that component (each ``g_i`` sums to zero over
the classes). The initial weights are therefore centred over the classes, like ``w*`` trained from
zero: learner and target then live in the same teachable subspace, and ``||w_t - w*||`` can reach 0.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from dht_fast.references.linear import as_targets

log = logging.getLogger(__name__)


@dataclass
class LinearLearner:
    """Learner state that teachers read. weight: ``(C, D)``; bias: ``(C,)`` or None; lr: > 0."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    lr: float

    @classmethod
    def init(cls, num_classes: int, dim: int, *, lr: float, bias: bool = True,
             scale: float = 1.0, generator: torch.Generator | None = None,
             dtype=torch.float32, device="cpu") -> "LinearLearner":
        """Random ``N(0, scale^2)`` weights (and bias), centred over the classes."""
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        w = scale * torch.randn(num_classes, dim + (1 if bias else 0), generator=generator,
                                dtype=torch.float64)
        w = (w - w.mean(0)).to(dtype=dtype, device=device)
        if bias:
            return cls(w[:, :dim].contiguous(), w[:, dim].contiguous(), lr)
        return cls(w, None, lr)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> ``(B, C)``."""
        z = x @ self.weight.T
        return z if self.bias is None else z + self.bias

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fraction of samples ``(B, D)`` whose top logit is their label ``(B,)``; 0-dim tensor."""
        return (self.logits(x).argmax(1) == y).to(self.weight.dtype).mean()

    def gradient(self, x: torch.Tensor, y: torch.Tensor):
        """Mean loss gradient over the batch: ``(dweight (C, D), dbias (C,) or None)``.

        x: ``(B, D)``; y: ``(B,)`` class indices or ``(B, C)`` soft targets.
        """
        t = as_targets(y, self.weight.shape[0], self.weight.dtype)
        p = torch.softmax(self.logits(x), 1)
        r = (t.sum(1, keepdim=True) * p - t) / x.shape[0]
        return r.T @ x, (None if self.bias is None else r.sum(0))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One SGD step on the batch ``(x, y)``, in place."""
        dw, db = self.gradient(x, y)
        self.weight = self.weight - self.lr * dw
        if self.bias is not None:
            self.bias = self.bias - self.lr * db

    def flat(self) -> torch.Tensor:
        """All parameters as one vector ``(C * D + C,)`` (``(C * D,)`` without bias)."""
        if self.bias is None:
            return self.weight.flatten()
        return torch.cat([self.weight.flatten(), self.bias])


@dataclass(frozen=True)
class Target:
    """The teaching target ``w*``: weight ``(C, D)``, bias ``(C,)`` or None."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]

    def flat(self) -> torch.Tensor:
        if self.bias is None:
            return self.weight.flatten()
        return torch.cat([self.weight.flatten(), self.bias])


def distance(learner: LinearLearner, target: Target) -> torch.Tensor:
    """``||w_t - w*||`` over weight and bias; a 0-dim tensor."""
    return torch.linalg.vector_norm(learner.flat() - target.flat())


def direction_gap(learner: LinearLearner, target: Target) -> torch.Tensor:
    """``||w*/||w*|| - w_t/||w_t|| ||^2`` in ``[0, 4]``; a 0-dim tensor."""
    w, ws = learner.flat(), target.flat()
    diff = ws / torch.linalg.vector_norm(ws) - w / torch.linalg.vector_norm(w)
    return (diff * diff).sum()


def train_target(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, bias: bool = True,
                 lr: float = 0.05, epochs: int = 50, batch_size: int = 32,
                 generator: torch.Generator | None = None) -> Target:
    """``w*``: the learner trained from zero by mini-batch SGD on ``(x (N, D), y (N,))``."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    learner = LinearLearner(x.new_zeros(num_classes, x.shape[1]),
                            x.new_zeros(num_classes) if bias else None, lr)
    n = x.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            learner.step(x[idx], y[idx])
    log.debug("trained w* for %d epochs: train accuracy %.3f", epochs,
              float(learner.accuracy(x, y)))
    return Target(learner.weight, learner.bias)
