"""Performative teaching (Algorithm 1) as a drop-in teacher for any extractor + linear head.

Inside a training loop::

    teacher = PerformativeTeacher(model.head, eps=0.1, steps=15, lookahead=5)
    feats = model.features(x)                      # (B, D)
    logits = model.head(teacher(feats, y, lr=lr))  # taught features, same shape and dtype
    loss = F.cross_entropy(logits, y)

For each mini-batch the teacher takes a moving target ``w*`` from ``lookahead`` SGD steps of the
head alone on the (detached) batch features, starting from the head's current weights (the head
itself is not changed), then moves *each* row to the point of its own hypersphere cap
``{z : ||z|| = ||f_i||, ||z/||z|| - f_i/||f_i|| || <= eps}`` that ``steps`` projected-gradient
steps on that row's greedy teaching objective prefer (:func:`dht_fast.ops.performative
.performative_solve`). ``policy="random"`` replaces the solve by a uniformly random point of the
same cap (:func:`random_cap_point`).

Gradient path: the taught features are ``f + stop_gradient(f~ - f)`` for both policies, so the
loss is the head's loss at ``f~`` and the extractor receives that loss's gradient at ``f~``
unchanged (straight through the solve). The head's parameters get their gradient at ``f~``.

Precision: the lookahead and the solve run in float32 with autocast disabled (float64 stays
float64); the result is cast back to the input's dtype, so bf16 autocast works unchanged.

Distributed: when ``torch.distributed`` is initialized with more than one rank, the lookahead
runs on the features and labels all-gathered from every rank (the global batch), and the head's
weights are identical on every rank (DDP keeps them so), so ``w*`` is identical on every rank and
equal to the one a single process would compute on the whole global batch; each rank then solves
only its own rows. Every rank must call the teacher with the same local batch size (what
``DistributedSampler`` gives).

torch.compile: the DHT path is traced (the solve is a custom op with a fake implementation);
:func:`random_cap_point` draws by rejection, a data-dependent loop, and runs eagerly (one graph
break). ``lr`` is a Python float: each distinct value compiles once, so schedules with few steps
are cheap and per-iteration warmup recompiles (mark it dynamic or warm up uncompiled).
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import nn

from dht_fast.ops.performative import head_lookahead, performative_solve

log = logging.getLogger(__name__)

POLICIES = ("dht", "random")


@torch.compiler.disable
def random_cap_point(x: torch.Tensor, eps: float, *,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per row, a point drawn uniformly from its cap ``{z : ||z|| = ||x_i||,
    ||z/||z|| - x_i/||x_i|| || <= eps}`` (uniform in the surface measure of the sphere).

    Sampling: with ``u = x_i / ||x_i||`` and ``theta`` the angle to ``u``, a uniform point of the
    cap is ``cos(theta) u + sin(theta) v`` with ``v`` uniform on the unit sphere of the tangent
    space (a Gaussian vector made orthogonal to ``u``, normalized) and ``theta`` of density
    proportional to ``sin(theta)^(D-2)`` on ``[0, theta_max]``, ``theta_max = 2 asin(eps / 2)``.
    For ``theta_max <= pi/2``, ``w = sin(theta)^2`` is a Beta((D-1)/2, 1/2) variable truncated to
    ``[0, m]``, ``m = sin(theta_max)^2``, drawn exactly by rejection: from ``m U^(2/(D-1))``
    accepted with probability ``sqrt((1-m)/(1-w))`` when ``(1-m)(D-1) >= 1``, else from the
    untruncated Beta (``1 - g_1^2/||g||^2``, ``g ~ N(0, I_D)``) accepted when ``w <= m``. For
    ``eps > sqrt(2)`` the cap holds at least half the sphere and uniform points of the whole
    sphere are accepted when inside it. Every proposal is accepted with probability >= ~0.3.

    Args:
        x: ``(B, D)`` with ``D >= 2``, floating; eps: chord radius ``>= 0`` (``>= 2``: sphere).
        generator: optional ``torch.Generator`` on ``x``'s device.

    Returns:
        ``(B, D)`` in ``x``'s dtype (drawn in at least float32); zero rows stay zero.
    """
    if x.dim() != 2 or x.shape[1] < 2:
        raise ValueError(f"x must be (B, D) with D >= 2, got shape {tuple(x.shape)}")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    cd = torch.promote_types(x.dtype, torch.float32)
    xc = x.detach().to(cd)
    b, d = xc.shape
    radius = xc.norm(dim=1, keepdim=True)
    u = xc / torch.where(radius > 0, radius, torch.ones_like(radius))
    eps = min(eps, 2.0)
    theta_max = 2.0 * math.asin(eps / 2.0)

    def normal(n, cols):
        return torch.randn(n, cols, generator=generator, device=x.device, dtype=cd)

    if theta_max > math.pi / 2:
        out = torch.empty_like(xc)
        todo = torch.arange(b, device=x.device)
        while len(todo):
            g = normal(len(todo), d)
            g = g / g.norm(dim=1, keepdim=True)
            ok = (g - u[todo]).norm(dim=1) <= eps
            out[todo[ok]] = g[ok]
            todo = todo[~ok]
        return (radius * out).to(x.dtype)

    m = math.sin(theta_max) ** 2
    w = torch.empty(b, device=x.device, dtype=cd)
    todo = torch.arange(b, device=x.device)
    while len(todo):
        n = len(todo)
        if (1.0 - m) * (d - 1) >= 1.0:
            uni = torch.rand(n, 2, generator=generator, device=x.device, dtype=cd)
            cand = m * uni[:, 0] ** (2.0 / (d - 1))
            ok = uni[:, 1] <= torch.sqrt((1.0 - m) / (1.0 - cand))
        else:
            g2 = normal(n, d) ** 2
            cand = 1.0 - g2[:, 0] / g2.sum(1)
            ok = cand <= m
        w[todo[ok]] = cand[ok]
        todo = todo[~ok]
    sin = w.sqrt()[:, None]
    cos = (1.0 - w).sqrt()[:, None]
    g = normal(b, d)
    # Two Gram-Schmidt passes keep v orthogonal to u when g is nearly parallel to it.
    for _ in range(2):
        g = g - (g * u).sum(1, keepdim=True) * u
    v = g / g.norm(dim=1, keepdim=True)
    return (radius * (cos * u + sin * v)).to(x.dtype)


class PerformativeTeacher:
    """Replace each row of a feature batch by a taught point of its own hypersphere cap.

    Args:
        head: the learner's linear head ``nn.Linear(D, C)``; its current weights are read at
            every call (never modified).
        eps: chord radius of each row's cap (0.1 in the paper).
        steps: projected-gradient steps of the per-row solve (15 in the paper).
        lookahead: SGD steps of the head on the batch that give ``w*`` (5 in the paper).
        lr: the learner's learning rate, used by the lookahead and the teaching objective; None
            to pass it at every call (``teacher(feats, y, lr=...)``, e.g. from a scheduler).
        step_size: each solve step moves this fraction of the row's radius; default
            ``2 * min(eps, 2) / steps``: the solve reaches the cap's boundary halfway through
            its steps, then slides along it.
        policy: ``"dht"`` (the solve) or ``"random"`` (a uniform point of the cap).
        backend: backend of the solve (``"auto"``, or one that
            :func:`~dht_fast.ops.performative.performative_solve` accepts).
        generator: optional ``torch.Generator`` for the random policy.
    """

    def __init__(self, head: nn.Linear, eps: float = 0.1, steps: int = 15, lookahead: int = 5,
                 lr: Optional[float] = None, step_size: Optional[float] = None,
                 policy: str = "dht", backend: str = "auto",
                 generator: Optional[torch.Generator] = None):
        if not isinstance(head, nn.Linear):
            raise TypeError(f"head must be an nn.Linear, got {type(head).__name__}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        if steps < 0 or lookahead < 0:
            raise ValueError(f"steps and lookahead must be >= 0, got {steps} and {lookahead}")
        if lr is not None and not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be finite and > 0 (or None), got {lr}")
        if step_size is None:
            step_size = 2.0 * min(eps, 2.0) / max(steps, 1)
        self.step_size = float(step_size)
        if not (self.step_size >= 0 and math.isfinite(self.step_size)):
            raise ValueError(f"step_size must be finite and >= 0, got {step_size}")
        self.head, self.eps, self.steps, self.lookahead = head, float(eps), steps, lookahead
        self.lr, self.policy, self.backend, self.generator = lr, policy, backend, generator

    def __repr__(self) -> str:
        return (f"PerformativeTeacher(policy={self.policy!r}, eps={self.eps}, steps={self.steps}, "
                f"lookahead={self.lookahead}, step_size={self.step_size}, lr={self.lr})")

    def __call__(self, feats: torch.Tensor, y: torch.Tensor, *,
                 lr: Optional[float] = None) -> torch.Tensor:
        """``feats`` ``(B, D)``, ``y`` ``(B,)`` int64 -> taught features ``(B, D)``, same dtype."""
        lr = self.lr if lr is None else lr
        if lr is None:
            raise ValueError("lr: pass the learner's learning rate to PerformativeTeacher(lr=...) "
                             "or at each call, teacher(feats, y, lr=...)")
        d = self.head.in_features
        if feats.dim() != 2 or feats.shape[1] != d:
            raise ValueError(f"feats must have shape (B, D) with D = head.in_features = {d}, "
                             f"got {tuple(feats.shape)}")
        if y.shape != feats.shape[:1] or y.dtype != torch.int64:
            raise ValueError(f"y must be (B,) int64 class indices with B = {feats.shape[0]}, "
                             f"got {y.dtype} {tuple(y.shape)}")
        with torch.autocast(feats.device.type, enabled=False):
            f = feats.to(torch.promote_types(feats.dtype, torch.float32))
            if self.policy == "random":
                target = random_cap_point(f.detach(), self.eps, generator=self.generator)
                taught = f + (target - f).detach()
            else:
                taught = self._solve(f, y, float(lr))
        return taught.to(feats.dtype)

    def _solve(self, f: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        weight = self.head.weight.detach().to(f.dtype)
        bias = None if self.head.bias is None else self.head.bias.detach().to(f.dtype)
        f_all, y_all = _gather_batch(f.detach(), y)
        weight_star, bias_star = head_lookahead(f_all, y_all, weight, bias, lr, self.lookahead)
        return performative_solve(f, y, weight, bias, weight_star, bias_star, lr, eps=self.eps,
                                  steps=self.steps, step_size=self.step_size,
                                  backend=self.backend, grad_mode="straight_through")


def _gather_batch(f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch, rank by rank: ``(world * B, D)`` and ``(world * B,)``; the inputs
    themselves outside a multi-process group."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return f, y
    world = dist.get_world_size()
    f_all = f.new_empty(world * f.shape[0], f.shape[1])
    y_all = y.new_empty(world * y.shape[0])
    dist.all_gather_into_tensor(f_all, f.contiguous())
    dist.all_gather_into_tensor(y_all, y.contiguous())
    return f_all, y_all
