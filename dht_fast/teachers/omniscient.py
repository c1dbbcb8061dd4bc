"""Omniscient teachers of a linear softmax learner: they see ``w_t``, ``w*`` and ``lr``.

Every teacher answers ``next_batch(learner) -> (x, y)``: ``x`` ``(B, D)`` and ``y`` either ``(B,)``
int64 class indices or ``(B, C)`` soft targets, which the learner then takes one SGD step on.
The learner is :class:`dht_fast.learners.linear.LinearLearner` (a binary task is a two-class
softmax, not a logistic learner; :func:`dht_fast.logistic_as_softmax` gives the exact map).

The per-sample teaching objective ``obj = lr^2 ||g||^2 - 2 lr <w - w*, g>`` is the change of
``||w - w*||^2`` after one step on that sample, so teachers *minimize* it. With ``B > 1`` the
learner steps on the batch mean; each sample is still chosen by its own objective (the cross terms
of the batch are ignored, as in the single-sample analysis).
"""
from __future__ import annotations

from typing import Protocol

import torch

from dht_fast.data.base import Domain
from dht_fast.learners.linear import LinearLearner, Target
from dht_fast.ops.linear_objective import linear_teaching_objective


class Teacher(Protocol):
    def next_batch(self, learner: LinearLearner) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples ``x`` ``(B, D)`` and labels ``(B,)`` or ``(B, C)`` for the next step."""


def _check_pool(x_pool, y_pool, batch_size):
    if x_pool.dim() != 2 or y_pool.shape != (x_pool.shape[0],):
        raise ValueError(f"x_pool must be (N, D) and y_pool (N,), got {tuple(x_pool.shape)} and "
                         f"{tuple(y_pool.shape)}")
    if not 1 <= batch_size <= x_pool.shape[0]:
        raise ValueError(f"batch_size must be in [1, N = {x_pool.shape[0]}], got {batch_size}")


class RandomTeacher:
    """SGD: ``batch_size`` samples drawn uniformly (with replacement) from the pool.

    x_pool: ``(N, D)``; y_pool: ``(N,)``.
    """

    def __init__(self, x_pool, y_pool, *, batch_size: int = 1,
                 generator: torch.Generator | None = None):
        _check_pool(x_pool, y_pool, batch_size)
        self.x_pool, self.y_pool, self.batch_size = x_pool, y_pool, batch_size
        self.generator = generator

    def next_batch(self, learner):
        idx = torch.randint(self.x_pool.shape[0], (self.batch_size,), generator=self.generator)
        idx = idx.to(self.x_pool.device)
        return self.x_pool[idx], self.y_pool[idx]


class IMTTeacher:
    """Iterative machine teaching: the ``batch_size`` pool samples with the lowest objective.

    The whole pool (x_pool ``(N, D)``, y_pool ``(N,)``) is scored in one call of the op.
    """

    def __init__(self, x_pool, y_pool, target: Target, *, batch_size: int = 1,
                 backend: str = "auto"):
        _check_pool(x_pool, y_pool, batch_size)
        self.x_pool, self.y_pool, self.batch_size = x_pool, y_pool, batch_size
        self.target, self.backend = target, backend

    def scores(self, learner: LinearLearner) -> torch.Tensor:
        """The teaching objective of every pool sample, ``(N,)``."""
        out = linear_teaching_objective(
            self.x_pool, self.y_pool, learner.weight, learner.bias, self.target.weight,
            self.target.bias, learner.lr, grad_x=False, backend=self.backend)
        return out.objective

    def next_batch(self, learner):
        idx = torch.topk(self.scores(learner), self.batch_size, largest=False).indices
        return self.x_pool[idx], self.y_pool[idx]


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` ``(B, C)`` onto the probability simplex."""
    u = v.sort(1, descending=True).values
    css = u.cumsum(1) - 1
    k = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    rho = (u - css / k > 0).sum(1, keepdim=True)
    theta = css.gather(1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0)


class _Adam:
    """Adam's update direction for a tensor optimized by hand (no autograd, no host syncs)."""

    def __init__(self, like, step_size, betas, eps):
        self.m, self.v = torch.zeros_like(like), torch.zeros_like(like)
        self.step_size, self.betas, self.eps = step_size, betas, eps

    def update(self, grad: torch.Tensor, k: int) -> torch.Tensor:
        b1, b2 = self.betas
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v / (1 - b2 ** k)).sqrt_().add_(self.eps)
        return (self.step_size / (1 - b1 ** k)) * self.m / denom


class GreedyTeacher:
    """Greedy data hallucination: draw ``y`` uniformly, synthesize ``x`` minimizing ``obj(x, y)``
    inside the data domain, optionally also a soft label (``soft_labels``, the "+ label" variant).

    For each of the ``batch_size`` labels, ``starts`` starting points are optimized together (one
    op call per optimizer step for all of them): the first is the raw input 0 (the authors' x0,
    clamped into the box), the others uniform in the box. Each step is Adam's update followed by a
    projection: clamping to the box for the raw input ``u`` (the learner sees
    ``domain.features(u)``), the Euclidean projection onto the simplex for a soft label. The sample
    kept is the iterate with the lowest objective over all steps and starts, so it is never worse
    than its start. The objective is minimized: its gradient is followed downhill.
    """

    def __init__(self, domain: Domain, num_classes: int, target: Target, *,
                 batch_size: int = 1, steps: int = 300, step_size: float = 0.02,
                 starts: int = 1, soft_labels: bool = False, label_step_size: float = 0.02,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 generator: torch.Generator | None = None, backend: str = "auto"):
        for name, value, low in (("batch_size", batch_size, 1), ("steps", steps, 0),
                                 ("starts", starts, 1), ("num_classes", num_classes, 2)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if step_size <= 0 or label_step_size <= 0:
            raise ValueError(f"step_size and label_step_size must be > 0, got {step_size} and "
                             f"{label_step_size}")
        self.domain, self.num_classes, self.target = domain, num_classes, target
        self.batch_size, self.steps, self.starts = batch_size, steps, starts
        self.step_size = step_size
        self.soft_labels, self.label_step_size = soft_labels, label_step_size
        self.betas, self.eps, self.generator, self.backend = betas, eps, generator, backend

    def starting_points(self, n: int) -> torch.Tensor:
        """``(starts * n, R)`` raw inputs, start-major: rows ``s * n .. s * n + n - 1``."""
        lo, hi = self.domain.lower, self.domain.upper
        zero = torch.zeros_like(lo).clamp(lo, hi).expand(n, -1)
        rand = torch.rand((self.starts - 1) * n, lo.shape[0], generator=self.generator)
        return torch.cat([zero, lo + rand.to(lo) * (hi - lo)])

    def _objective(self, learner, u, t, want_grads, check_values):
        return linear_teaching_objective(
            self.domain.features(u), t, learner.weight, learner.bias, self.target.weight,
            self.target.bias, learner.lr, grad_x=want_grads,
            grad_y=want_grads and self.soft_labels, backend=self.backend,
            check_values=check_values)

    def synthesize(self, learner: LinearLearner, y: torch.Tensor):
        """Samples for the labels ``y`` ``(B,)``: ``x`` ``(B, D)``, labels (``y``, or soft
        ``(B, C)`` with ``soft_labels``) and their objective ``(B,)``."""
        n = y.shape[0]
        lo, hi = self.domain.lower, self.domain.upper
        u = self.starting_points(n).to(learner.weight.dtype)
        yy = y.repeat(self.starts)
        t = yy
        if self.soft_labels:
            t = torch.nn.functional.one_hot(yy, self.num_classes).to(u.dtype)
        adam_u = _Adam(u, self.step_size, self.betas, self.eps)
        adam_t = _Adam(t, self.label_step_size, self.betas, self.eps) if self.soft_labels else None
        best_obj = torch.full((u.shape[0],), float("inf"), dtype=u.dtype, device=u.device)
        best_u, best_t = u, t
        for k in range(1, self.steps + 2):
            # Values are checked on the first step; later iterates stay in the box/simplex.
            out = self._objective(learner, u, t, want_grads=k <= self.steps,
                                  check_values=k == 1)
            # Keep the best iterate: projected Adam does not decrease the objective monotonically.
            better = out.objective < best_obj
            best_obj = torch.where(better, out.objective, best_obj)
            best_u = torch.where(better[:, None], u, best_u)
            if self.soft_labels:
                best_t = torch.where(better[:, None], t, best_t)
            if k > self.steps:
                break
            u = torch.clamp(u - adam_u.update(self.domain.pull_back(out.grad_x), k), lo, hi)
            if self.soft_labels:
                t = project_simplex(t - adam_t.update(out.grad_y, k))
        pick = best_obj.view(self.starts, n).argmin(0) * n + torch.arange(n, device=u.device)
        x = self.domain.features(best_u[pick])
        return x, (best_t[pick] if self.soft_labels else y), best_obj[pick]

    def next_batch(self, learner):
        y = torch.randint(self.num_classes, (self.batch_size,), generator=self.generator)
        x, labels, _ = self.synthesize(learner, y.to(learner.weight.device))
        return x, labels
