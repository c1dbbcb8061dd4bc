"""torch.func reference of the teaching objective for any ``nn.Module`` learner.

For each sample ``i`` the per-sample gradient ``g_i = grad_w l(f_w(x_i), y_i)`` is computed with
``vmap(grad(...))`` over ``functional_call``, which materializes ``B x P`` numbers: this is the
oracle and the fallback, not a fast path. Samples must be independent (BatchNorm in eval mode).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


def default_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``(B,)`` for class indices ``(B,)`` or soft targets ``(B, C)``."""
    return F.cross_entropy(output, y, reduction="none")


def model_objective_func(model, params, star, buffers, x, y, lr, loss_fn, want_grad_x):
    """Per-sample ``(grad_norm_sq, inner, objective, grad_x | None)`` for ``model``.

    Args:
        params, star: dicts name -> tensor, the current and target parameters.
        buffers: dict name -> tensor, passed to ``functional_call``.
        x: ``(B, ...)`` inputs; y: ``(B, ...)`` targets; loss_fn(output, y) -> ``(B,)``.
    """
    def sample_loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0)).sum()

    def sample_terms(xi, yi):
        g = grad(sample_loss)(params, xi, yi)
        sq = sum((gk * gk).sum() for gk in g.values())
        inner = sum(((params[k] - star[k]) * gk).sum() for k, gk in g.items())
        return lr * lr * sq - 2.0 * lr * inner, (sq, inner)

    if want_grad_x:
        gx, (sq, inner) = vmap(grad(sample_terms, has_aux=True))(x, y)
    else:
        _, (sq, inner) = vmap(sample_terms)(x, y)
        gx = None
    return sq, inner, lr * lr * sq - 2.0 * lr * inner, gx
