"""Reference computations of performative teaching (Algorithm 1) for a linear softmax head.

Notation per row ``i`` (``B`` rows, ``D`` features, ``C`` classes): the anchor ``a`` (the
extracted feature vector), ``R = ||a||``, ``a^ = a / R``; the cap of chord radius ``eps``

    S(a, eps) = {z : ||z|| = R, ||z / ||z|| - a^|| <= eps},

a spherical cap of angular radius ``theta = 2 asin(min(eps, 2) / 2)``, so
``cos theta = 1 - eps^2 / 2`` and ``sin theta = eps sqrt(1 - eps^2 / 4)`` (the whole sphere for
``eps >= 2``).

**Projection.** The closest point of ``S`` to ``x`` is ``R x^`` when ``x^ = x / ||x||`` lies in the
cap, else the boundary point on the great circle through ``a^`` and ``x^``:
``R (cos theta a^ + sin theta e)`` with ``e`` the unit component of ``x^`` orthogonal to ``a^``.
Ambiguous rows get fixed choices: ``a = 0`` gives ``0``; ``x = 0`` gives ``a``; an ``x`` within
``32`` ulps of the antipode (every boundary point is then equally close) takes for ``e`` the unit
component of the coordinate axis ``k = argmin_k |a^_k|`` (first index on ties) orthogonal to
``a^``; with ``D = 1`` the cap of ``eps < 2`` is ``{a}``. At those points the gradient treats the
chosen direction as fixed.

**Solve.** ``K`` projected-gradient steps per row on its teaching objective ``obj(x)`` (see
:mod:`dht_fast.references.linear`), from ``x_0 = a``:

    g_t = grad obj(x_k) - (grad obj(x_k) . x_k / ||x_k||^2) x_k       (tangent to the sphere)
    x_{k+1} = P_S(x_k - step_size R g_t / ||g_t||)                    (no move when g_t = 0)

Each step moves a fixed fraction ``step_size`` of the row's own radius, so the cap (at distance
about ``eps R`` from the anchor) binds after about ``eps / step_size`` steps whatever the scale of
the gradient. The result is the iterate of lowest objective among ``x_0 .. x_K``, so no row's
objective rises.
"""
from __future__ import annotations

import torch

from dht_fast.references.linear import as_targets, linear_objective_closed_form

# Rows whose component orthogonal to the anchor is below this many ulps count as antipodal.
ANTIPODAL_ULPS = 32.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den > 0``, ``num`` elsewhere: finite values and gradients."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def cap_cos_sin(eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos theta, sin theta)`` of the cap's angular radius, from chord radii ``eps``."""
    e = eps.clamp(max=2.0)
    return 1.0 - 0.5 * e * e, e * torch.sqrt((1.0 - 0.25 * e * e).clamp(min=0.0))


def orthogonal_direction(ah: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` unit rows ``a^`` (``D >= 2``) -> ``(B, D)`` fixed unit rows orthogonal to them.

    The coordinate axis ``k = argmin_k |a^_k|``, minus its ``a^`` component, normalized; its norm
    is at least ``sqrt(1 - 1/D)``.
    """
    k = ah.abs().argmin(1, keepdim=True)
    e = torch.zeros_like(ah).scatter_(1, k, 1.0) - ah.gather(1, k) * ah
    return e / e.norm(dim=1, keepdim=True)


def sphere_project_ref(x: torch.Tensor, anchor: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Closest point of each row's cap, in batched torch ops (differentiable by autograd).

    Args:
        x: ``(B, D)`` points; anchor: ``(B, D)`` cap centres; eps: ``(B,)`` chord radii ``>= 0``.

    Returns:
        ``(B, D)`` in ``x``'s dtype, computed in at least float32.
    """
    out_dtype, cd = x.dtype, compute_dtype(x.dtype)
    x, a, eps = x.to(cd), anchor.to(cd), eps.to(cd)[:, None]
    radius = a.norm(dim=1, keepdim=True)
    ah = _safe_div(a, radius)
    nx = x.norm(dim=1, keepdim=True)
    xh = torch.where(nx > 0, _safe_div(x, nx), ah)
    # The chord itself, not 2 - 2 cos: accurate for small caps.
    inside = (((xh - ah) ** 2).sum(1, keepdim=True) <= eps * eps) | (eps >= 2.0)
    if x.shape[1] == 1:
        boundary = ah
    else:
        # Two Gram-Schmidt passes keep e orthogonal to a^ when x^ is near +-a^.
        o = xh - (xh * ah).sum(1, keepdim=True) * ah
        o = o - (o * ah).sum(1, keepdim=True) * ah
        on = o.norm(dim=1, keepdim=True)
        antipodal = on <= ANTIPODAL_ULPS * torch.finfo(cd).eps
        e = torch.where(antipodal, orthogonal_direction(ah).detach(), _safe_div(o, on))
        cos, sin = cap_cos_sin(eps)
        boundary = cos * ah + sin * e
    direction = torch.where(inside, xh, boundary)
    z = radius * _safe_div(direction, direction.norm(dim=1, keepdim=True))
    return torch.where(radius > 0, z, torch.zeros_like(z)).to(out_dtype)


def sphere_project_vjp(x, anchor, eps, grad_out):
    """``(grad_x, grad_anchor)`` of :func:`sphere_project_ref` for the upstream ``grad_out``.

    All ``(B, D)`` but eps ``(B,)``; eps gets no gradient.
    """
    _, vjp = torch.func.vjp(lambda xx, aa: sphere_project_ref(xx, aa, eps), x, anchor)
    return vjp(grad_out)


def head_lookahead_ref(feats, y, weight, bias, lr: float, steps: int):
    """``steps`` SGD steps of the head alone on the batch-mean cross-entropy.

    Per step, with ``r = s softmax(feats W^T + b) - t`` (``t`` the targets, ``s = sum_c t_c``):
    ``W <- W - lr r^T feats / B`` and ``b <- b - lr sum_i r_i / B``.

    Args:
        feats: ``(B, D)``; y: ``(B,)`` int64 or ``(B, C)`` soft targets; weight: ``(C, D)``;
        bias: ``(C,)`` or None; lr > 0; steps >= 0.

    Returns:
        ``(weight_star (C, D), bias_star (C,) | None)``, new tensors in the inputs' dtypes; with
        ``B = 0`` or ``steps = 0`` copies of the inputs. Not differentiable.
    """
    with torch.no_grad():
        cd = compute_dtype(weight.dtype)
        w = weight.to(cd).clone()
        b = None if bias is None else bias.to(cd).clone()
        n = feats.shape[0]
        if n > 0:
            x = feats.to(cd)
            t = as_targets(y, weight.shape[0], cd)
            s = t.sum(1, keepdim=True)
            for _ in range(steps):
                z = x @ w.T
                if b is not None:
                    z = z + b
                r = (s * torch.softmax(z, 1) - t) * (lr / n)
                w -= r.T @ x
                if b is not None:
                    b -= r.sum(0)
        w = w.to(weight.dtype)
        return w, (None if b is None else b.to(bias.dtype))


def performative_solve_ref(feats, y, weight, bias, vdiff, vbias, eps, lr: float, steps: int,
                           step_size: float) -> torch.Tensor:
    """The per-row constrained greedy solve, in batched torch ops (differentiable by autograd).

    Args:
        feats: ``(B, D)`` anchors; y: ``(B,)`` int64 or ``(B, C)`` soft targets;
        weight, vdiff: ``(C, D)`` head weight ``W`` and ``W - W*``; bias, vbias: ``(C,)`` or
        both None; eps: ``(B,)`` chord radii; lr > 0; steps >= 0; step_size >= 0.

    Returns:
        ``(B, D)`` taught features in ``feats``' dtype, computed in at least float32.
    """
    cd = compute_dtype(feats.dtype)
    a = feats.to(cd)
    radius = a.norm(dim=1, keepdim=True)
    x = best = a
    best_obj = None
    for k in range(steps + 1):
        last = k == steps
        _, _, obj, gx, _ = linear_objective_closed_form(
            x, y, weight, bias, vdiff, vbias, lr, not last, False
        )
        if best_obj is None:
            best_obj = obj
        else:
            better = obj < best_obj
            best = torch.where(better[:, None], x, best)
            best_obj = torch.where(better, obj, best_obj)
        if last:
            break
        radial = _safe_div((gx * x).sum(1, keepdim=True), (x * x).sum(1, keepdim=True))
        gt = gx - radial * x
        x = x - (step_size * radius) * _safe_div(gt, gt.norm(dim=1, keepdim=True))
        x = sphere_project_ref(x, a, eps)
    # A new tensor even when no step improved: custom ops must not alias their inputs.
    return best.to(feats.dtype, copy=True)
