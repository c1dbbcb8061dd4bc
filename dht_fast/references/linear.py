"""Reference computations of the teaching objective for a softmax-regression learner.

Notation (per sample ``i``; ``B`` samples, ``D`` features, ``C`` classes):

* logits ``z = W x + b``, ``p = softmax(z)``, loss ``l = -sum_c y_c log p_c``;
* ``s = sum_c y_c`` (1 for one-hot and proper soft targets) and ``r = s p - y`` = dl/dz;
* the per-sample gradient ``g = (r x^T, r)`` over ``w = (W, b)``;
* ``V = W - W*``, ``v = b - b*``, ``u = V x + v``, ``n = ||x||^2 + 1`` (``||x||^2`` without bias).

Then ``||g||^2 = ||r||^2 n``, ``<w - w*, g> = r . u`` and
``obj = lr^2 ||g||^2 - 2 lr <w - w*, g>``. With ``J = diag(p) - p p^T`` (so ``dr/dz = s J``)

    grad_x obj = s W^T J a + 2 lr^2 ||r||^2 x - 2 lr V^T r,   a = 2 lr^2 n r - 2 lr u
    grad_y obj = (t . p) 1 - t,                                t = 2 lr^2 n r - 2 lr u

(the second because ``dr_c/dy_k = p_c - [c = k]``). Two functions live here: the closed form in
batched torch ops (the ``torch`` backend, and the float64 oracle's second opinion) and the
torch.func computation from autograd alone (the ``func`` backend and the test oracle).
"""
from __future__ import annotations

import torch
from torch.func import grad, vmap


def as_targets(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Class indices ``(B,)`` become one-hot rows ``(B, C)``; soft targets pass through."""
    if y.dtype == torch.int64:
        return torch.nn.functional.one_hot(y, num_classes).to(dtype)
    return y.to(dtype)


def linear_objective_closed_form(
    x, y, weight, bias, vdiff, vbias, lr, want_grad_x, want_grad_y
):
    """The teaching objective of a softmax learner in batched torch ops.

    Args:
        x: ``(B, D)`` samples.
        y: ``(B,)`` int64 class indices or ``(B, C)`` soft targets.
        weight: ``(C, D)`` learner weight ``W``; bias: ``(C,)`` or None.
        vdiff: ``(C, D)`` ``W - W*``; vbias: ``(C,)`` ``b - b*`` or None (iff bias is None).
        lr: learning rate (positive float).
        want_grad_x, want_grad_y: whether to compute the gradients w.r.t. the sample.

    Returns:
        ``(grad_norm_sq (B,), inner (B,), objective (B,), grad_x (B, D) | None,
        grad_y (B, C) | None)``, in the dtype of ``x`` (computed in at least float32).
    """
    out_dtype = x.dtype
    cdtype = torch.promote_types(x.dtype, torch.float32)
    x, weight, vdiff = x.to(cdtype), weight.to(cdtype), vdiff.to(cdtype)
    t = as_targets(y, weight.shape[0], cdtype)
    # One GEMM for the logits and the target direction: x @ [W; V]^T, shape (B, 2C).
    stacked = torch.cat([weight, vdiff], 0)
    zu = x @ stacked.T
    z, u = zu.split(weight.shape[0], dim=1)
    if bias is not None:
        z = z + bias.to(cdtype)
        u = u + vbias.to(cdtype)
    p = torch.softmax(z, dim=1)
    s = t.sum(1, keepdim=True)
    r = s * p - t
    xsq = (x * x).sum(1)
    n = xsq + 1.0 if bias is not None else xsq
    rsq = (r * r).sum(1)
    grad_norm_sq = rsq * n
    inner = (r * u).sum(1)
    objective = lr * lr * grad_norm_sq - 2.0 * lr * inner
    gx = gy = None
    if want_grad_x or want_grad_y:
        a = (2.0 * lr * lr) * n[:, None] * r - (2.0 * lr) * u
    if want_grad_x:
        # s J a, then one GEMM for W^T (s J a) - 2 lr V^T r, plus the x term.
        ja = s * p * (a - (p * a).sum(1, keepdim=True))
        coef = torch.cat([ja, (-2.0 * lr) * r], 1)
        gx = coef @ stacked + (2.0 * lr * lr) * rsq[:, None] * x
        gx = gx.to(out_dtype)
    if want_grad_y:
        gy = ((a * p).sum(1, keepdim=True) - a).to(out_dtype)
    return (grad_norm_sq.to(out_dtype), inner.to(out_dtype), objective.to(out_dtype), gx, gy)


def _sample_loss(params, x, t):
    z = params[0] @ x
    if len(params) > 1:
        z = z + params[1]
    return -(t * torch.log_softmax(z, 0)).sum()


def _sample_terms(params, star, lr, x, t):
    g = grad(_sample_loss)(params, x, t)
    sq = sum((gi * gi).sum() for gi in g)
    inner = sum(((p - q) * gi).sum() for p, q, gi in zip(params, star, g))
    return lr * lr * sq - 2.0 * lr * inner, (sq, inner)


def linear_objective_func(x, y, weight, bias, weight_star, bias_star, lr, want_grad_x,
                          want_grad_y):
    """The same quantities from autograd alone: ``vmap`` of ``grad`` of the per-sample loss.

    Per-sample gradients are materialized (``B x C x D`` memory); this is the oracle, not a fast
    path. Shapes and returns as :func:`linear_objective_closed_form`, but takes ``weight_star``
    and ``bias_star`` rather than the differences.
    """
    t = as_targets(y, weight.shape[0], x.dtype)
    params, star = (weight, bias), (weight_star, bias_star)
    if bias is None:
        params, star = params[:1], star[:1]
    if x.shape[0] == 0:
        e = x.new_zeros(0)
        return (e, e, e, x.new_zeros(0, x.shape[1]) if want_grad_x else None,
                t.new_zeros(0, weight.shape[0]) if want_grad_y else None)
    obj_fn = lambda xi, ti: _sample_terms(params, star, lr, xi, ti)  # noqa: E731
    if want_grad_x or want_grad_y:
        gfn = grad(obj_fn, argnums=(0, 1), has_aux=True)
        (gx, gy), (sq, inner) = vmap(gfn)(x, t)
    else:
        _, (sq, inner) = vmap(obj_fn)(x, t)
        gx = gy = None
    objective = lr * lr * sq - 2.0 * lr * inner
    return (sq, inner, objective, gx if want_grad_x else None, gy if want_grad_y else None)


def linear_objective_backward(x, y, weight, bias, vdiff, vbias, lr, g_sq, g_inner, g_obj):
    """Vector-Jacobian product of ``(grad_norm_sq, inner, objective)``.

    With upstream gradients ``a, b, c`` (each ``(B,)`` or None) the pulled-back scalar is
    ``sum_i alpha_i ||g_i||^2 + beta_i <w - w*, g_i>`` where ``alpha = a + lr^2 c`` and
    ``beta = b - 2 lr c``. Writing ``m = 2 alpha n r + beta u`` (its gradient w.r.t. ``r``) and
    ``dz = s J m``:

        d/dx  = W^T dz + beta V^T r + 2 alpha ||r||^2 x
        d/dW  = dz^T x + (beta r)^T x,   d/dW* = -(beta r)^T x
        d/db  = sum dz + sum beta r,     d/db* = -sum beta r
        d/dy  = (m . p) 1 - m            (soft targets only)

    Returns ``(dx, dy, dweight, dbias, dweight_star, dbias_star)`` (dbias* None without bias).
    """
    cdtype = torch.promote_types(x.dtype, torch.float32)
    xs, w, v = x.to(cdtype), weight.to(cdtype), vdiff.to(cdtype)
    t = as_targets(y, w.shape[0], cdtype)
    z, u = xs @ w.T, xs @ v.T
    if bias is not None:
        z, u = z + bias.to(cdtype), u + vbias.to(cdtype)
    p = torch.softmax(z, 1)
    s = t.sum(1, keepdim=True)
    r = s * p - t
    n = (xs * xs).sum(1) + (1.0 if bias is not None else 0.0)
    zero = xs.new_zeros(xs.shape[0])
    a = zero if g_sq is None else g_sq.to(cdtype)
    b = zero if g_inner is None else g_inner.to(cdtype)
    c = zero if g_obj is None else g_obj.to(cdtype)
    alpha, beta = a + lr * lr * c, b - 2.0 * lr * c
    m = 2.0 * (alpha * n)[:, None] * r + beta[:, None] * u
    dz = s * p * (m - (p * m).sum(1, keepdim=True))
    br = beta[:, None] * r
    dx = dz @ w + br @ v + (2.0 * alpha * (r * r).sum(1))[:, None] * xs
    dw_star = -(br.T @ xs)
    dw = dz.T @ xs - dw_star
    dy = None
    if y.is_floating_point():
        dy = ((m * p).sum(1, keepdim=True) - m).to(y.dtype)
    db = db_star = None
    if bias is not None:
        db_star = -br.sum(0)
        db = dz.sum(0) - db_star
        db, db_star = db.to(bias.dtype), db_star.to(bias.dtype)
    return (dx.to(x.dtype), dy, dw.to(weight.dtype), db, dw_star.to(weight.dtype), db_star)
