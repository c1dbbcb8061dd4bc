"""Every backend of linear_teaching_objective against the float64 torch.func oracle."""
import pytest
import torch

import dht_fast
from dht_fast.ops.linear_objective import DISPATCH, _linear_objective_op
from dht_fast.references.linear import linear_objective_closed_form, linear_objective_func
from tests._backends import require_or_skip

BACKENDS = ["func", "torch", "cpp", "triton"]
SHAPES = [(0, 5, 3), (1, 7, 3), (33, 37, 7), (17, 50, 100)]  # (B, D, C)
TOL = {torch.float32: (2e-4, 1e-5), torch.float64: (1e-9, 1e-11)}  # rtol, atol
FIELDS = ("grad_norm_sq", "inner", "objective", "grad_x", "grad_y")


def make_problem(b, d, c, *, soft, bias, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(b * 1000 + d * 10 + c)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = rnd(b, d) * scale
    w, ws = rnd(c, d) * 0.3, rnd(c, d) * 0.3
    bb, bs = (rnd(c), rnd(c)) if bias else (None, None)
    if soft:
        y = torch.softmax(rnd(b, c), 1)
    else:
        y = torch.randint(0, c, (b,), generator=g)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return dict(x=cast(x), y=cast(y) if soft else y, weight=cast(w), bias=cast(bb),
                weight_star=cast(ws), bias_star=cast(bs))


def oracle(p, lr, grad_y):
    d = {k: (v.double() if v is not None and v.is_floating_point() else v) for k, v in p.items()}
    return linear_objective_func(d["x"], d["y"], d["weight"], d["bias"], d["weight_star"],
                                 d["bias_star"], lr, True, grad_y)


def assert_close(out, ref, rtol, atol):
    for name, o, r in zip(FIELDS, out, ref):
        if r is None:
            assert o is None, name
            continue
        assert o.shape == r.shape, f"{name}: {tuple(o.shape)} vs {tuple(r.shape)}"
        torch.testing.assert_close(o.double(), r, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}D{}C{}".format(*s))
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_oracle(backend, shape, soft, bias, dtype):
    p = make_problem(*shape, soft=soft, bias=bias, dtype=dtype)
    require_or_skip(DISPATCH, backend, x=p["x"], weight=p["weight"])
    out = dht_fast.linear_teaching_objective(**p, lr=0.37, grad_y=soft, backend=backend)
    assert out.objective.dtype == dtype
    assert_close(out, oracle(p, 0.37, soft), *TOL[dtype])


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_bf16_error_within_torch_own(backend):
    """bf16 inputs: our error against the float64 oracle (on the same rounded inputs) is at most
    twice that of torch computing the same quantities in bf16."""
    p = make_problem(64, 40, 10, soft=False, bias=True, dtype=torch.bfloat16)
    require_or_skip(DISPATCH, backend, x=p["x"], weight=p["weight"])
    out = dht_fast.linear_teaching_objective(**p, lr=0.5, backend=backend)
    ref = oracle(p, 0.5, False)
    own = linear_objective_func(p["x"], p["y"], p["weight"], p["bias"], p["weight_star"],
                                p["bias_star"], 0.5, True, False)
    for name, o, t, r in zip(FIELDS[:4], out, own, ref):
        ours = (o.double() - r).abs().max().item()
        theirs = (t.double() - r).abs().max().item()
        assert ours <= 2 * theirs + 1e-3 * r.abs().max().item(), (name, ours, theirs)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_non_contiguous_inputs(backend):
    p = make_problem(9, 24, 5, soft=True, bias=True, dtype=torch.float32)
    require_or_skip(DISPATCH, backend, x=p["x"], weight=p["weight"])
    q = dict(p)
    q["x"] = torch.cat([p["x"], p["x"]], 1)[:, ::2]
    q["x"].copy_(p["x"])
    q["weight"] = p["weight"].T.contiguous().T
    q["y"] = p["y"].T.contiguous().T
    assert not q["x"].is_contiguous() and not q["weight"].is_contiguous()
    out = dht_fast.linear_teaching_objective(**q, lr=0.2, grad_y=True, backend=backend)
    assert_close(out, oracle(p, 0.2, True), *TOL[torch.float32])


def test_closed_form_matches_func_in_float64():
    p = make_problem(21, 13, 6, soft=True, bias=True)
    vb = p["bias"] - p["bias_star"]
    cf = linear_objective_closed_form(p["x"], p["y"], p["weight"], p["bias"],
                                      p["weight"] - p["weight_star"], vb, 0.3, True, True)
    assert_close(cf, oracle(p, 0.3, True), 1e-10, 1e-12)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck(backend, soft, bias):
    p = make_problem(4, 5, 3, soft=soft, bias=bias)
    require_or_skip(DISPATCH, backend, x=p["x"], weight=p["weight"])
    names = ["x", "y", "weight", "bias", "weight_star", "bias_star"]
    args = [p[n] for n in names]
    for a in args:
        if a is not None and a.is_floating_point():
            a.requires_grad_(True)

    def fn(*a):
        return _linear_objective_op(*a, 0.4, True, soft, backend)[:3]

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_opcheck(backend, dtype):
    p = make_problem(6, 11, 4, soft=True, bias=True, dtype=dtype)
    require_or_skip(DISPATCH, backend, x=p["x"], weight=p["weight"])
    for k in ("x", "weight", "bias"):
        p[k].requires_grad_(True)
    args = (p["x"], p["y"], p["weight"], p["bias"], p["weight_star"], p["bias_star"], 0.3,
            True, True, backend)
    torch.library.opcheck(_linear_objective_op, args)


def test_func_backend_is_differentiable():
    p = make_problem(5, 6, 3, soft=False, bias=True)
    p["x"].requires_grad_(True)
    a = dht_fast.linear_teaching_objective(**p, lr=0.3, backend="func").objective.sum()
    b = dht_fast.linear_teaching_objective(**p, lr=0.3, backend="torch").objective.sum()
    ga, = torch.autograd.grad(a, p["x"])
    gb, = torch.autograd.grad(b, p["x"])
    torch.testing.assert_close(ga, gb)


def test_objective_is_one_step_distance_change():
    """||w - lr g - w*||^2 - ||w - w*||^2 equals obj for every sample."""
    p = make_problem(7, 9, 4, soft=False, bias=True)
    lr = 0.25
    out = dht_fast.linear_teaching_objective(**p, lr=lr, grad_x=False)
    w, b, ws, bs = p["weight"], p["bias"], p["weight_star"], p["bias_star"]
    for i in range(7):
        z = w @ p["x"][i] + b
        r = torch.softmax(z, 0) - torch.nn.functional.one_hot(p["y"][i], 4)
        w1, b1 = w - lr * torch.outer(r, p["x"][i]), b - lr * r
        delta = ((w1 - ws) ** 2).sum() + ((b1 - bs) ** 2).sum()
        delta = delta - ((w - ws) ** 2).sum() - ((b - bs) ** 2).sum()
        torch.testing.assert_close(out.objective[i], delta)


def test_logistic_mapping():
    """A logistic learner's objective and grad_x are twice those of the mapped softmax learner."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    lab = torch.randint(0, 2, (8,), generator=g)
    w, ws = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g,
                                                                           dtype=torch.float64)
    b, bs = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.2, dtype=torch.float64)
    lr = 0.1
    x.requires_grad_(True)
    pr = torch.sigmoid(x @ w + b)
    gsq = (pr - lab) ** 2 * ((x * x).sum(1) + 1)
    inner = (pr - lab) * (x @ (w - ws) + (b - bs))
    obj = lr * lr * gsq - 2 * lr * inner
    gx, = torch.autograd.grad(obj.sum(), x)
    weight, bias, weight_star, bias_star, lr_s = dht_fast.logistic_as_softmax(w, b, ws, bs, lr)
    out = dht_fast.linear_teaching_objective(x.detach(), lab, weight, bias, weight_star,
                                             bias_star, lr_s)
    torch.testing.assert_close(2 * out.objective, obj.detach())
    torch.testing.assert_close(2 * out.grad_x, gx)
