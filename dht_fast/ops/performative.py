"""Performative teaching (Algorithm 1) as dispatched custom ops.

* :func:`sphere_project`: each row's closest point of its hypersphere cap
  (``dht_fast::sphere_project``, differentiable w.r.t. ``x`` and ``anchor``);
* :func:`head_lookahead`: the moving target ``w*``, a few closed-form SGD steps of the head;
* :func:`performative_solve`: each row's constrained greedy solve on its teaching objective
  (``dht_fast::performative_solve``).

The math, the step rule and the conventions at ambiguous points are in
:mod:`dht_fast.references.performative`. Backends as in :mod:`dht_fast.ops.backends`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from dht_fast.kernels import triton_performative
from dht_fast.ops import validation as V
from dht_fast.ops.backends import Backend, Dispatcher, cpu_kernel_why_not, extension_reason
from dht_fast.references.performative import (
    compute_dtype,
    head_lookahead_ref,
    performative_solve_ref,
    sphere_project_ref,
    sphere_project_vjp,
)

GRAD_MODES = ("straight_through", "unroll")

# ---- backends -------------------------------------------------------------------------------


def _always(**_):
    return None


# Looked up once at import: torch.compile cannot trace an import inside the dispatch.
_CPP_REASON = extension_reason("dht_fast._C", "dht_fast_C", "performative_solve_fwd")


def _cpp_why_not(x, **_):
    return cpu_kernel_why_not(x, _CPP_REASON)


def _triton_solve_why_not(x, weight, **_):
    return triton_performative.triton_unsupported_reason(x, weight)


def _triton_project_why_not(x, **_):
    return triton_performative.triton_unsupported_reason(x)


PROJECT_DISPATCH = Dispatcher(
    "sphere_project",
    [Backend("torch", _always), Backend("cpp", _cpp_why_not),
     Backend("triton", _triton_project_why_not)],
    preference={"cuda": ["triton", "torch"], "default": ["cpp", "torch"]},
)

SOLVE_DISPATCH = Dispatcher(
    "performative_solve",
    [Backend("torch", _always), Backend("cpp", _cpp_why_not),
     Backend("triton", _triton_solve_why_not)],
    preference={"cuda": ["triton", "torch"], "default": ["cpp", "torch"]},
)


# ---- sphere_project custom op ---------------------------------------------------------------

@torch.library.custom_op("dht_fast::sphere_project", mutates_args=())
def _sphere_project_op(
    x: torch.Tensor, anchor: torch.Tensor, eps: torch.Tensor, backend: str
) -> torch.Tensor:
    if backend == "triton":
        return triton_performative.sphere_project_triton(x, anchor, eps)
    if backend == "cpp":
        return torch.ops.dht_fast_C.sphere_project_fwd(x, anchor, eps)
    return sphere_project_ref(x, anchor, eps)


@_sphere_project_op.register_fake
def _(x, anchor, eps, backend):
    return torch.empty_like(x)


def _project_setup_context(ctx, inputs, output):
    x, anchor, eps, _ = inputs
    ctx.save_for_backward(x, anchor, eps)


def _project_backward(ctx, grad_out):
    x, anchor, eps = ctx.saved_tensors
    gx, ga = sphere_project_vjp(x, anchor, eps, grad_out)
    return gx, ga, None, None


torch.library.register_autograd(
    "dht_fast::sphere_project", _project_backward, setup_context=_project_setup_context
)


# ---- performative_solve custom op -----------------------------------------------------------

def _run_solve(backend, feats, y, weight, bias, vdiff, vbias, eps, lr, steps, step_size):
    if backend == "torch":
        return performative_solve_ref(feats, y, weight, bias, vdiff, vbias, eps, lr, steps,
                                      step_size)
    if backend == "triton":
        return triton_performative.performative_solve_triton(
            feats, y, weight, bias, vdiff, vbias, eps, lr, steps, step_size)
    return torch.ops.dht_fast_C.performative_solve_fwd(
        feats, y, weight, bias, vdiff, vbias, eps, lr, steps, step_size
    )


@torch.library.custom_op("dht_fast::performative_solve", mutates_args=())
def _performative_solve_op(
    feats: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    weight_star: torch.Tensor, bias_star: Optional[torch.Tensor], eps: torch.Tensor, lr: float,
    steps: int, step_size: float, backend: str,
) -> torch.Tensor:
    vdiff, vbias = _differences(feats, weight, bias, weight_star, bias_star)
    if backend == "cpp":
        # The C++ kernel takes one dtype throughout.
        weight, bias = weight.to(feats.dtype), None if bias is None else bias.to(feats.dtype)
    return _run_solve(backend, feats, y, weight, bias, vdiff, vbias, eps, lr, steps, step_size)


@_performative_solve_op.register_fake
def _(feats, y, weight, bias, weight_star, bias_star, eps, lr, steps, step_size, backend):
    return torch.empty_like(feats)


def _solve_backward(ctx, grad_out):
    # Straight-through: the taught features pass the gradient on to feats unchanged.
    return grad_out, None, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("dht_fast::performative_solve", _solve_backward)


def _differences(feats, weight, bias, weight_star, bias_star):
    """``W - W*`` and ``b - b*`` in the compute dtype of ``feats`` (exact for low precision)."""
    cd = compute_dtype(feats.dtype)
    vdiff = weight.to(cd) - weight_star.to(cd)
    vbias = None if bias is None else bias.to(cd) - bias_star.to(cd)
    return vdiff, vbias


# ---- validation -----------------------------------------------------------------------------

def _check_eps(eps, x, name_x):
    """eps: float, 0-dim or ``(B,)`` tensor, ``>= 0``, not NaN -> ``(B,)`` in the compute dtype."""
    b, cd = x.shape[0], compute_dtype(x.dtype)
    if isinstance(eps, torch.Tensor):
        if eps.dim() == 0:
            eps = eps.reshape(1).expand(b)
        V.check_tensor("eps", eps, ndim=1, dtypes=V.FLOATS)
        V.check_shape("eps", eps, (b,), f"(B,) with B = {name_x}.shape[0]")
        V.check_same([(name_x, x), ("eps", eps)], what=("device",))
        if V.values_checked() and eps.numel() and bool((torch.isnan(eps) | (eps < 0)).any()):
            bad = eps[torch.isnan(eps) | (eps < 0)][0].item()
            raise ValueError(f"eps must be >= 0 and not NaN in every row, got {bad}")
        return eps.detach().to(cd).contiguous()
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float or a (B,) tensor, got {type(eps).__name__}")
    if math.isnan(eps) or eps < 0:
        raise ValueError(f"eps must be >= 0 and not NaN, got {eps}")
    return torch.full((b,), float(eps), dtype=cd, device=x.device)


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _check_head(feats, y, weight, bias, weight_star=None, bias_star=None):
    """The head's inputs: shapes, dtypes, devices, finite values, labels in range."""
    V.check_tensor("feats", feats, ndim=2, dtypes=V.FLOATS)
    V.check_tensor("weight", weight, ndim=2, dtypes=V.FLOATS)
    b, d = feats.shape
    c = weight.shape[0]
    V.check_shape("weight", weight, (c, d), "(C, D) with D = feats.shape[1]")
    if c == 0:
        raise ValueError("weight must have at least one class (row), got shape (0, D)")
    if bias is not None:
        V.check_tensor("bias", bias, dtypes=V.FLOATS)
        V.check_shape("bias", bias, (c,), "(C,) with C = weight.shape[0]")
    extra = [(n, t) for n, t in (("weight_star", weight_star), ("bias_star", bias_star)) if
             t is not None]
    for name, t in extra:
        V.check_tensor(name, t, dtypes=V.FLOATS)
        V.check_shape(name, t, tuple(weight.shape if name == "weight_star" else (c,)),
                      "(C, D) like weight" if name == "weight_star" else "(C,) like bias")
    V.check_tensor("y", y)
    if y.dtype == torch.int64:
        V.check_shape("y", y, (b,), "(B,) class indices with B = feats.shape[0]")
    elif y.dtype in V.FLOATS:
        V.check_shape("y", y, (b, c), "(B, C) soft targets")
    else:
        raise TypeError(f"y must be int64 class indices (B,) or floating (B, C), got {y.dtype}")
    floats = [("feats", feats), ("weight", weight), ("bias", bias)]
    V.check_same(floats + extra, what=("device",))
    V.check_same([("weight", weight), ("bias", bias)] + extra)
    V.check_same([("feats", feats), ("y", y)], what=("device",))
    soft = [("y", y)] if y.is_floating_point() else []
    V.check_values(floats + extra + soft, labels=None if soft else y, num_classes=c)


# ---- public entry points --------------------------------------------------------------------

def sphere_project(x, anchor, eps, *, backend="auto") -> torch.Tensor:
    """Closest point to each ``x_i`` of the hypersphere cap around ``anchor_i``.

    The cap is ``{z : ||z|| = ||a_i||, ||z / ||z|| - a_i / ||a_i|| || <= eps_i}``: chordal distance
    of unit vectors, an angular radius of ``2 asin(eps_i / 2)``, the whole sphere for
    ``eps_i >= 2``; ``eps_i = 0`` gives ``a_i`` itself. Defined at every input: a zero anchor
    row gives a zero row, a zero ``x_i`` gives ``a_i``, an ``x_i`` antipodal to ``a_i`` gives a
    fixed boundary point (see :mod:`dht_fast.references.performative`).

    Args:
        x: ``(B, D)`` points. anchor: ``(B, D)`` cap centres, same dtype and device.
        eps: chord radius, a float or a ``(B,)`` tensor, ``>= 0`` (not differentiated).
        backend: ``"auto"``, ``"torch"``, ``"cpp"`` or ``"triton"``.

    Returns:
        ``(B, D)`` in ``x``'s dtype, differentiable w.r.t. ``x`` and ``anchor``.
    """
    V.check_tensor("x", x, ndim=2, dtypes=V.FLOATS)
    V.check_tensor("anchor", anchor, ndim=2, dtypes=V.FLOATS)
    V.check_shape("anchor", anchor, tuple(x.shape), "(B, D) like x")
    V.check_same([("x", x), ("anchor", anchor)])
    eps = _check_eps(eps, x, "x")
    V.check_values([("x", x), ("anchor", anchor)])
    name = PROJECT_DISPATCH.resolve(backend, x.device.type, x=x)
    return _sphere_project_op(x, anchor, eps, name)


def head_lookahead(feats, y, weight, bias, lr, steps):
    """The moving target ``w*`` of Algorithm 1: ``steps`` SGD steps of the head alone.

    Mean cross-entropy over the batch, closed-form gradients ``(p - y) feats^T / B``; no
    autograd and no gradient flows out (``w*`` is a target). The inputs are not modified.

    Args:
        feats: ``(B, D)`` features (detached). y: ``(B,)`` int64 or ``(B, C)`` soft targets.
        weight: ``(C, D)``; bias: ``(C,)`` or None. lr: step, finite and > 0. steps: int >= 0.

    Returns:
        ``(weight_star (C, D), bias_star (C,) | None)``; copies of ``(weight, bias)`` when
        ``B = 0`` or ``steps = 0``.
    """
    _check_head(feats, y, weight, bias)
    lr = V.check_lr(lr)
    steps = _check_count("steps", steps)
    return head_lookahead_ref(feats.detach(), y.detach(), weight.detach(),
                              None if bias is None else bias.detach(), lr, steps)


def performative_solve(feats, y, weight, bias, weight_star, bias_star, lr, *, eps, steps,
                       step_size, grad_mode="straight_through", backend="auto"):
    """Each row's constrained greedy solve of its teaching objective (Algorithm 1).

    Row ``i`` minimizes ``lr^2 ||g_i||^2 - 2 lr <w - w*, g_i>`` (its own objective, not a batch
    score) over its cap around ``feats_i`` by ``steps`` projected normalized-gradient steps of
    length ``step_size * ||feats_i||`` along the sphere, from ``feats_i``; it returns the best
    iterate, so no row's objective rises. The cap binds after about ``eps / step_size`` steps:
    ``step_size = 2 * min(eps, 2) / steps`` reaches the boundary halfway and then slides along it.

    Args:
        feats: ``(B, D)`` anchors. y: ``(B,)`` int64 or ``(B, C)`` soft targets.
        weight, weight_star: ``(C, D)`` head and target; bias, bias_star: ``(C,)`` or both None.
        lr: the learner's step, > 0. eps: chord radius, float or ``(B,)`` tensor, >= 0.
        steps: int >= 0. step_size: fraction of ``||feats_i||`` per step, finite and >= 0.
        grad_mode: ``"straight_through"``: d taught / d feats = identity (the extractor's gradient
            flows through the taught features; none reaches the head arguments);
            ``"unroll"``: exact autograd through the ``steps`` steps w.r.t. every tensor input
            (torch backend only; memory grows with ``steps``).
        backend: ``"auto"``, ``"torch"``, ``"cpp"`` or ``"triton"``.

    Returns:
        ``(B, D)`` taught features in ``feats``' dtype.
    """
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    if (bias is None) != (bias_star is None):
        raise ValueError("bias and bias_star must both be tensors or both be None")
    _check_head(feats, y, weight, bias, weight_star, bias_star)
    lr = V.check_lr(lr)
    steps = _check_count("steps", steps)
    step_size = float(step_size)
    if not math.isfinite(step_size) or step_size < 0:
        raise ValueError(f"step_size must be finite and >= 0, got {step_size}")
    eps = _check_eps(eps, feats, "feats")
    if grad_mode == "unroll":
        if backend not in ("auto", "torch"):
            raise ValueError(f"grad_mode='unroll' runs on the torch backend only, got {backend!r}")
        vdiff, vbias = _differences(feats, weight, bias, weight_star, bias_star)
        return performative_solve_ref(feats, y, weight, bias, vdiff, vbias, eps, lr, steps,
                                      step_size)
    name = SOLVE_DISPATCH.resolve(backend, feats.device.type, x=feats, weight=weight)
    return _performative_solve_op(feats, y, weight, bias, weight_star, bias_star, eps, lr, steps,
                                  step_size, name)
