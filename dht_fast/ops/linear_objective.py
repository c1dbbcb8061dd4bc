"""The teaching objective of a softmax-regression learner, as a dispatched custom op.

``linear_teaching_objective`` validates its inputs, picks a backend (see
:mod:`dht_fast.ops.backends`) and calls ``dht_fast::linear_objective``, a ``torch.library``
custom op with a fake implementation (so ``torch.compile`` traces it) and an autograd formula
for the three per-sample scalars with respect to ``x``, ``y`` (soft), ``weight``, ``bias``,
``weight_star`` and ``bias_star``. The returned ``grad_x`` and ``grad_y`` are not differentiable.
The ``func`` backend (the torch.func oracle) bypasses the custom op and is differentiated by
autograd directly.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from dht_fast.kernels import triton_linear
from dht_fast.ops import validation as V
from dht_fast.ops.backends import Backend, Dispatcher, cpu_kernel_why_not, extension_reason
from dht_fast.references.linear import (
    linear_objective_backward,
    linear_objective_closed_form,
    linear_objective_func,
)


class TeachingObjective(NamedTuple):
    """Per-sample teaching quantities. ``B`` samples, ``D`` features, ``C`` classes.

    grad_norm_sq: ``(B,)`` ``||g_i||^2``; inner: ``(B,)`` ``<w - w*, g_i>``;
    objective: ``(B,)`` ``lr^2 ||g_i||^2 - 2 lr <w - w*, g_i>`` (lower teaches better);
    grad_x: ``(B, D)`` d objective / d x_i, or None;
    grad_y: ``(B, C)`` d objective / d y_i, or None.
    """

    grad_norm_sq: torch.Tensor
    inner: torch.Tensor
    objective: torch.Tensor
    grad_x: Optional[torch.Tensor]
    grad_y: Optional[torch.Tensor]


# ---- backends -------------------------------------------------------------------------------
# Extensions load once at import: dispatch then reads plain values, which torch.compile traces.
_CPP_MISSING = extension_reason("dht_fast._C", "dht_fast_C", "linear_objective_fwd")
_CUDA_MISSING = extension_reason("dht_fast._C_cuda", "dht_fast_cuda", "linear_objective_fwd")


def _cpp_why_not(x, weight, **_):
    return cpu_kernel_why_not(x, _CPP_MISSING)


def _cuda_why_not(x, weight, **_):
    if x.device.type != "cuda":
        return f"it runs on CUDA tensors, got {x.device.type}"
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"it takes float32, float16 or bfloat16, got {x.dtype}"
    return _CUDA_MISSING


def _triton_why_not(x, weight, **_):
    return triton_linear.triton_unsupported_reason(x, weight)


def _always(**_):
    return None


DISPATCH = Dispatcher(
    "linear_teaching_objective",
    [Backend("func", _always), Backend("torch", _always), Backend("cpp", _cpp_why_not),
     Backend("triton", _triton_why_not), Backend("cuda", _cuda_why_not)],
    preference={"cuda": ["triton", "cuda", "torch"], "default": ["cpp", "torch"]},
)


def _run_backend(backend, x, y, weight, bias, vdiff, vbias, lr, want_gx, want_gy):
    if backend == "torch":
        return linear_objective_closed_form(x, y, weight, bias, vdiff, vbias, lr, want_gx, want_gy)
    if backend == "triton":
        return triton_linear.linear_objective_triton(x, y, weight, bias, vdiff, vbias, lr,
                                                     want_gx, want_gy)
    lib = torch.ops.dht_fast_C if backend == "cpp" else torch.ops.dht_fast_cuda
    out = lib.linear_objective_fwd(x, y, weight, bias, vdiff, vbias, lr, want_gx, want_gy)
    return tuple(out[:3]) + (out[3] if want_gx else None, out[4] if want_gy else None)


# ---- custom op ------------------------------------------------------------------------------

@torch.library.custom_op("dht_fast::linear_objective", mutates_args=())
def _linear_objective_op(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    weight_star: torch.Tensor, bias_star: Optional[torch.Tensor], lr: float,
    want_grad_x: bool, want_grad_y: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    vdiff = weight - weight_star
    vbias = None if bias is None else bias - bias_star
    out = _run_backend(backend, x, y, weight, bias, vdiff, vbias, lr, want_grad_x, want_grad_y)
    # Custom ops cannot return None: an unrequested gradient is an empty tensor.
    return tuple(o if o is not None else x.new_empty(0) for o in out)


@_linear_objective_op.register_fake
def _(x, y, weight, bias, weight_star, bias_star, lr, want_grad_x, want_grad_y, backend):
    b = x.shape[0]
    gx = x.new_empty(b, x.shape[1]) if want_grad_x else x.new_empty(0)
    gy = x.new_empty(b, weight.shape[0]) if want_grad_y else x.new_empty(0)
    return x.new_empty(b), x.new_empty(b), x.new_empty(b), gx, gy


def _setup_context(ctx, inputs, output):
    x, y, weight, bias, weight_star, bias_star, lr = inputs[:7]
    ctx.save_for_backward(x, y, weight, bias, weight_star, bias_star)
    ctx.lr = lr
    ctx.mark_non_differentiable(output[3], output[4])


def _backward(ctx, g_sq, g_inner, g_obj, _g_gx, _g_gy):
    x, y, weight, bias, weight_star, bias_star = ctx.saved_tensors
    vdiff = weight - weight_star
    vbias = None if bias is None else bias - bias_star
    dx, dy, dw, db, dws, dbs = linear_objective_backward(
        x, y, weight, bias, vdiff, vbias, ctx.lr, g_sq, g_inner, g_obj
    )
    return dx, dy, dw, db, dws, dbs, None, None, None, None


torch.library.register_autograd(
    "dht_fast::linear_objective", _backward, setup_context=_setup_context
)


# ---- public entry point ---------------------------------------------------------------------

def _validate(x, y, weight, bias, weight_star, bias_star, lr, check_values):
    V.check_tensor("x", x, ndim=2, dtypes=V.FLOATS)
    V.check_tensor("weight", weight, ndim=2, dtypes=V.FLOATS)
    b, d = x.shape
    c = weight.shape[0]
    V.check_shape("weight", weight, (c, d), "(C, D) with D = x.shape[1]")
    V.check_tensor("weight_star", weight_star, dtypes=V.FLOATS)
    V.check_shape("weight_star", weight_star, (c, d), "(C, D) like weight")
    if (bias is None) != (bias_star is None):
        raise ValueError("bias and bias_star must both be tensors or both be None")
    if bias is not None:
        V.check_tensor("bias", bias, dtypes=V.FLOATS)
        V.check_shape("bias", bias, (c,), "(C,) with C = weight.shape[0]")
        V.check_tensor("bias_star", bias_star, dtypes=V.FLOATS)
        V.check_shape("bias_star", bias_star, (c,), "(C,)")
    V.check_tensor("y", y)
    if y.dtype == torch.int64:
        V.check_shape("y", y, (b,), "(B,) class indices with B = x.shape[0]")
    elif y.dtype in V.FLOATS:
        V.check_shape("y", y, (b, c), "(B, C) soft targets")
    else:
        raise TypeError(f"y must be int64 class indices (B,) or floating (B, C), got {y.dtype}")
    floats = [("x", x), ("weight", weight), ("bias", bias), ("weight_star", weight_star),
              ("bias_star", bias_star)]
    V.check_same(floats)
    V.check_same([("x", x), ("y", y)], what=("device",))
    lr = V.check_lr(lr)
    if check_values:
        soft = [("y", y)] if y.is_floating_point() else []
        V.check_values(floats + soft, labels=None if soft else y, num_classes=c)
    return lr


def linear_teaching_objective(
    x, y, weight, bias, weight_star, bias_star, lr, *, grad_x=True, grad_y=False,
    backend="auto", check_values=True,
) -> TeachingObjective:
    """Per-sample teaching objective of a softmax-regression learner with cross-entropy loss.

    The learner's logits are ``x @ weight.T + bias``; its parameters ``w = (weight, bias)``
    move to ``w - lr g_i`` on sample ``i``. Returns, for every sample, ``||g_i||^2``,
    ``<w - w*, g_i>``, ``obj_i = lr^2 ||g_i||^2 - 2 lr <w - w*, g_i>`` (so that
    ``||w - lr g_i - w*||^2 = ||w - w*||^2 + obj_i``) and optionally its gradients with respect to
    the sample.

    Args:
        x: ``(B, D)`` samples. y: ``(B,)`` int64 class indices or ``(B, C)`` soft targets.
        weight, weight_star: ``(C, D)`` learner and target weights.
        bias, bias_star: ``(C,)`` each, or both None for a learner without bias.
        lr: the learner's SGD step, finite and > 0.
        grad_x, grad_y: also return ``d obj / d x`` ``(B, D)`` / ``d obj / d y`` ``(B, C)``.
        backend: ``"auto"``, ``"func"``, ``"torch"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.
        check_values: check for NaN/Inf and labels out of range (one host sync). Shapes,
            dtypes and devices are always checked; turn this off in inner loops whose inputs
            were checked once.

    A binary logistic learner ``sigmoid(w . x + b)`` with step ``lr`` is the softmax learner
    with ``weight = [-w/2; w/2]``, ``bias = [-b/2; b/2]`` and step ``lr / 2``, whose objective is
    half the logistic one; :func:`dht_fast.logistic_as_softmax` does the conversion.
    """
    lr = _validate(x, y, weight, bias, weight_star, bias_star, lr, check_values)
    name = DISPATCH.resolve(backend, x.device.type, x=x, weight=weight)
    if name == "func":
        out = linear_objective_func(x, y, weight, bias, weight_star, bias_star, lr, grad_x, grad_y)
        return TeachingObjective(*out)
    out = _linear_objective_op(x, y, weight, bias, weight_star, bias_star, lr, grad_x, grad_y,
                               name)
    return TeachingObjective(out[0], out[1], out[2], out[3] if grad_x else None,
                             out[4] if grad_y else None)


def logistic_as_softmax(w, b, w_star, b_star, lr):
    """Map a binary logistic learner to the equivalent two-class softmax learner.

    Args: ``w, w_star`` ``(D,)``; ``b, b_star`` scalars (0-dim tensors) or None; ``lr`` float.
    Returns ``(weight, bias, weight_star, bias_star, lr_softmax)`` for
    :func:`linear_teaching_objective`, with class 1 the positive class. The logistic objective
    and its gradients are twice the softmax ones.
    """
    weight = torch.stack([-w, w]) / 2
    weight_star = torch.stack([-w_star, w_star]) / 2
    bias = bias_star = None
    if b is not None:
        bias = torch.stack([-b, b]).reshape(2) / 2
        bias_star = torch.stack([-b_star, b_star]).reshape(2) / 2
    return weight, bias, weight_star, bias_star, lr / 2
