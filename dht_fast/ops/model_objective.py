"""The teaching objective for any ``nn.Module`` learner, with a fast path for MLPs.

Backends:

* ``func``: :func:`dht_fast.references.model.model_objective_func` (any model).
* ``ghost``: MLPs (``nn.Sequential`` of ``nn.Linear``, elementwise activations, ``Flatten`` and
  ``Dropout``). One forward and one backward of the summed loss give every Linear layer's input
  ``a_l (B, in)`` and output gradient ``d_l (B, out)``; since the per-sample gradient of a layer
  is the outer product ``d_l a_l^T`` (plus ``d_l`` for the bias),

      ||g_i||^2       = sum_l ||a_l,i||^2 ||d_l,i||^2 + ||d_l,i||^2
      <w - w*, g_i>   = sum_l d_l,i . (V_l a_l,i + v_l)

  so nothing of size ``B x P`` is formed; memory grows as ``B x`` (widths). The second line is
  the directional derivative ``d/de l_i(w + e (w - w*))``, the quantity a forward-mode pass
  gives; here the reverse pass that the norms need already holds it.
  ``grad_x`` differentiates these per-sample sums once more through the same graph.
* ``linear``: a single ``nn.Linear`` with the default loss goes to
  :func:`dht_fast.linear_teaching_objective` and its fused kernels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jvp

from dht_fast.ops import validation as V
from dht_fast.ops.backends import Backend, Dispatcher
from dht_fast.ops.linear_objective import TeachingObjective, linear_teaching_objective
from dht_fast.references.model import default_loss, model_objective_func

ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU,
               nn.Softplus, nn.Identity, nn.Dropout, nn.Flatten, nn.Mish, nn.Hardtanh)


def _mlp_layers(model):
    """The layers of a supported MLP, else None."""
    layers = [model] if isinstance(model, nn.Linear) else list(model.children())
    if not isinstance(model, (nn.Sequential, nn.Linear)) or not layers:
        return None
    for i, m in enumerate(layers):
        if isinstance(m, nn.Flatten) and i > 0:
            return None
        if isinstance(m, nn.Dropout) and m.training and m.p > 0:
            return None
        if not isinstance(m, (nn.Linear,) + ELEMENTWISE):
            return None
    return layers if any(isinstance(m, nn.Linear) for m in layers) else None


def _ghost_why_not(model, loss_fn, **_):
    if _mlp_layers(model) is None:
        return ("it takes an nn.Sequential of nn.Linear layers and elementwise activations "
                f"(Dropout only in eval mode), got {type(model).__name__}")
    return None


def _linear_why_not(model, loss_fn, **_):
    if not isinstance(model, nn.Linear):
        return f"it takes a single nn.Linear, got {type(model).__name__}"
    if loss_fn is not None:
        return "it takes only the default cross-entropy loss"
    return None


DISPATCH = Dispatcher(
    "teaching_objective",
    [Backend("func", lambda **_: None), Backend("ghost", _ghost_why_not),
     Backend("linear", _linear_why_not)],
    preference={"default": ["linear", "ghost", "func"]},
)


def _row_sq(t: torch.Tensor) -> torch.Tensor:
    """``||t_i||^2`` per row, ``(B,)``. The norm kernel reduces without a ``(B, n)`` temporary;
    inside a graph the plain product keeps a zero row's derivative at 0 rather than NaN."""
    if t.requires_grad:
        return (t * t).sum(1)
    return torch.linalg.vector_norm(t, dim=1).square()


def _ghost_pass(layers, x, y, loss_fn, create_graph):
    """One forward and one backward of the summed loss.

    Returns ``[(linear, a_l (B, in), d_l (B, out))]`` for every Linear layer: its input and the
    gradient of the loss w.r.t. its output (per sample, as samples are independent).
    """
    acts, pres = [], []
    h = x
    for m in layers:
        if isinstance(m, nn.Linear):
            acts.append(h)
            # Detached weights: only activations need gradients here.
            bias = None if m.bias is None else m.bias.detach()
            h = F.linear(h, m.weight.detach(), bias)
            if not h.requires_grad:
                h.requires_grad_(True)
            pres.append(h)
        else:
            h = m(h)
    deltas = torch.autograd.grad(loss_fn(h, y).sum(), pres, create_graph=create_graph)
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    return list(zip(linears, acts, deltas))


def _ghost(layers, x, y, star, lr, loss_fn, want_grad_x):
    x = x.detach().requires_grad_(want_grad_x)
    with torch.enable_grad():
        sq = inner = 0.0
        for m, a, d in _ghost_pass(layers, x, y, loss_fn, want_grad_x):
            # Frozen parameters (absent from ``star``) contribute nothing.
            vw, vb = star[m]
            dsq = _row_sq(d)
            if vw is not None:
                sq = sq + _row_sq(a) * dsq
                inner = inner + (d * (a @ vw.T)).sum(1)
            if vb is not None:
                sq = sq + dsq
                inner = inner + d @ vb
        objective = lr * lr * sq - 2.0 * lr * inner
        gx = torch.autograd.grad(objective.sum(), x)[0] if want_grad_x else None
    return TeachingObjective(sq.detach(), inner.detach(), objective.detach(), gx, None)


def _diffs(model, params_star):
    """``{name: w - w*}`` for every trainable parameter; clear errors for missing/mismatched."""
    named = {k: p for k, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(named) - set(params_star))
    if missing:
        raise ValueError(f"params_star is missing parameters {missing}")
    out = {}
    for k, p in named.items():
        s = params_star[k]
        V.check_tensor(f"params_star[{k!r}]", s)
        V.check_shape(f"params_star[{k!r}]", s, tuple(p.shape), f"like parameter {k}")
        V.check_same([(f"parameter {k}", p), (f"params_star[{k!r}]", s)])
        out[k] = (p.detach() - s.detach())
    return named, out


def teaching_objective(model, x, y, params_star, lr, *, loss_fn=None, grad_x=True,
                       backend="auto") -> TeachingObjective:
    """Per-sample teaching objective of any learner ``model`` trained by SGD with step ``lr``.

    Args:
        model: the learner (samples must be independent: BatchNorm in eval mode).
        x: ``(B, ...)`` inputs; y: ``(B,)`` class indices or ``(B, C)`` soft targets, or
            whatever ``loss_fn`` takes.
        params_star: ``{name: tensor}`` target parameters, as ``model.named_parameters()``.
        lr: the learner's SGD step, finite and > 0.
        loss_fn: ``loss_fn(output (B, ...), y) -> (B,)`` per-sample losses; default
            cross-entropy.
        grad_x: also return ``d obj_i / d x_i`` ``(B, ...)``.
        backend: ``"auto"``, ``"func"``, ``"ghost"`` or ``"linear"``.

    Returns :class:`TeachingObjective` (``grad_y`` is None; the linear op provides it).
    """
    V.check_tensor("x", x, dtypes=V.FLOATS)
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension, got a 0-dim tensor")
    lr = V.check_lr(lr)
    named, diffs = _diffs(model, params_star)
    V.check_values([("x", x)] + [(f"params_star[{k!r}]", params_star[k]) for k in named])
    name = DISPATCH.resolve(backend, x.device.type, model=model, loss_fn=loss_fn)
    if name == "linear":
        bias = model.bias
        bias_star = None if bias is None else params_star["bias"]
        return linear_teaching_objective(x, y, model.weight.detach(),
                                         None if bias is None else bias.detach(),
                                         params_star["weight"], bias_star, lr, grad_x=grad_x)
    loss_fn = loss_fn or default_loss
    if x.shape[0] == 0:
        e = x.new_zeros(0)
        return TeachingObjective(e, e.clone(), e.clone(), x.new_zeros(x.shape) if grad_x else
                                 None, None)
    if name == "ghost":
        layers = _mlp_layers(model)
        star = {}
        key = {id(p): k for k, p in model.named_parameters()}
        for m in (m for m in layers if isinstance(m, nn.Linear)):
            star[m] = (diffs.get(key[id(m.weight)]),
                       None if m.bias is None else diffs.get(key[id(m.bias)]))
        return _ghost(layers, x, y, star, lr, loss_fn, grad_x)
    params = {k: p.detach() for k, p in named.items()}
    star = {k: params_star[k].detach() for k in named}
    buffers = dict(model.named_buffers())
    out = model_objective_func(model, params, star, buffers, x, y, lr, loss_fn, grad_x)
    return TeachingObjective(*out, None)


def directional_inner(model, x, y, params_star, *, loss_fn=None) -> torch.Tensor:
    """``<w - w*, g_i>`` for every sample of any model in one forward-mode pass, ``(B,)``.

    The directional derivative ``d/de l_i(w + e (w - w*))`` at ``e = 0`` via ``torch.func.jvp``;
    no per-sample gradient is formed.
    """
    named, diffs = _diffs(model, params_star)
    loss_fn = loss_fn or default_loss
    params = {k: p.detach() for k, p in named.items()}
    buffers = dict(model.named_buffers())

    def losses(p):
        return loss_fn(functional_call(model, (p, buffers), (x,)), y)

    return jvp(losses, (params,), (diffs,))[1]


def per_sample_grad_norm_sq(model, x, y, *, loss_fn=None, backend="auto") -> torch.Tensor:
    """``||g_i||^2`` ``(B,)`` over the trainable parameters of ``model``, for every sample.

    The ``ghost`` backend (MLPs) needs one forward and one backward of activation gradients
    only: no parameter gradient and no ``B x P`` per-sample gradient is formed. Other models
    use torch.func. Arguments as :func:`teaching_objective`.
    """
    V.check_tensor("x", x, dtypes=V.FLOATS)
    name = DISPATCH.resolve(backend, x.device.type, model=model, loss_fn=loss_fn)
    if name != "ghost" or x.shape[0] == 0:
        star = {k: p.detach() for k, p in model.named_parameters()}
        return teaching_objective(model, x, y, star, 1.0, loss_fn=loss_fn, grad_x=False,
                                  backend="func" if name == "ghost" else name).grad_norm_sq
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    sq = 0.0
    with torch.enable_grad():
        for m, a, d in _ghost_pass(_mlp_layers(model), x.detach(), y, loss_fn or default_loss,
                                   False):
            dsq = _row_sq(d)
            if id(m.weight) in trainable:
                sq = sq + _row_sq(a) * dsq
            if m.bias is not None and id(m.bias) in trainable:
                sq = sq + dsq
    return sq
