"""Microbenchmarks of each op and backend on small, odd shapes (pytest-benchmark).

    python -m pytest benchmarks/test_bench_ops.py --benchmark-enable   # time them
    python -m pytest benchmarks/test_bench_ops.py                      # run each once as a test

The project's pytest options include ``--benchmark-disable``, under which every benchmark body
runs once; each test then checks that result against the float64 torch.func reference, so these
are correctness tests too. A backend that cannot run here is skipped with its reason.
"""
import copy

import pytest
import torch
from torch import nn

import dht_fast
from dht_fast.ops.linear_objective import DISPATCH as LINEAR
from dht_fast.ops.model_objective import DISPATCH as MODEL

B, D, C, HIDDEN = 64, 37, 5, 19
LR = 0.1
FIELDS = ("grad_norm_sq", "inner", "objective", "grad_x")


def _assert_matches(got, ref):
    """float32 results against the float64 reference, tolerance scaled by the reference."""
    for field in FIELDS:
        g, r = getattr(got, field), getattr(ref, field)
        if g is None:
            assert r is None, f"{field} missing"
            continue
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5 * r.abs().max().item(),
                                   msg=lambda m, f=field: f"{f}: {m}")


@pytest.fixture
def linear_inputs():
    torch.manual_seed(0)
    weight = torch.randn(C, D) / D**0.5
    return {"x": torch.randn(B, D), "y": torch.randint(0, C, (B,)), "weight": weight,
            "bias": torch.randn(C) * 0.1, "weight_star": weight + 0.05 * torch.randn(C, D),
            "bias_star": torch.randn(C) * 0.1}


@pytest.fixture
def mlp_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
                          nn.Linear(HIDDEN, C))
    star = {k: (p + 0.05 * torch.randn_like(p)).detach() for k, p in model.named_parameters()}
    return {"model": model, "star": star, "x": torch.randn(B, D),
            "y": torch.randint(0, C, (B,))}


def _double_mlp(inp):
    model = copy.deepcopy(inp["model"]).double()
    star = {k: v.double() for k, v in inp["star"].items()}
    return model, star, inp["x"].double()


@pytest.mark.benchmark(group="linear_teaching_objective")
@pytest.mark.parametrize("grad_x", [True, False], ids=["grad_x", "norms"])
@pytest.mark.parametrize("backend", LINEAR.names)
def test_linear_objective(benchmark, linear_inputs, backend, grad_x):
    inp = linear_inputs
    reason = LINEAR.why_not(backend, x=inp["x"], weight=inp["weight"])
    if reason is not None:
        pytest.skip(f"backend {backend!r} cannot run here: {reason}")
    args = (inp["x"], inp["y"], inp["weight"], inp["bias"], inp["weight_star"], inp["bias_star"])
    got = benchmark(dht_fast.linear_teaching_objective, *args, LR, grad_x=grad_x,
                    backend=backend)
    ref = dht_fast.linear_teaching_objective(
        *(a.double() if a.is_floating_point() else a for a in args), LR, grad_x=grad_x,
        backend="func")
    _assert_matches(got, ref)


@pytest.mark.benchmark(group="teaching_objective MLP")
@pytest.mark.parametrize("grad_x", [True, False], ids=["grad_x", "norms"])
@pytest.mark.parametrize("backend", [n for n in MODEL.names if n != "linear"])
def test_mlp_objective(benchmark, mlp_inputs, backend, grad_x):
    inp = mlp_inputs
    got = benchmark(dht_fast.teaching_objective, inp["model"], inp["x"], inp["y"], inp["star"],
                    LR, grad_x=grad_x, backend=backend)
    model, star, x = _double_mlp(inp)
    ref = dht_fast.teaching_objective(model, x, inp["y"], star, LR, grad_x=grad_x,
                                      backend="func")
    _assert_matches(got, ref)


@pytest.mark.benchmark(group="teaching_objective nn.Linear")
def test_linear_module_objective(benchmark, linear_inputs):
    inp = linear_inputs
    model = nn.Linear(D, C)
    with torch.no_grad():
        model.weight.copy_(inp["weight"])
        model.bias.copy_(inp["bias"])
    star = {"weight": inp["weight_star"], "bias": inp["bias_star"]}
    got = benchmark(dht_fast.teaching_objective, model, inp["x"], inp["y"], star, LR,
                    backend="linear")
    ref = dht_fast.teaching_objective(model.double(), inp["x"].double(), inp["y"],
                                      {k: v.double() for k, v in star.items()}, LR,
                                      backend="func")
    _assert_matches(got, ref)


@pytest.mark.benchmark(group="directional_inner")
def test_directional_inner(benchmark, mlp_inputs):
    inp = mlp_inputs
    got = benchmark(dht_fast.directional_inner, inp["model"], inp["x"], inp["y"], inp["star"])
    model, star, x = _double_mlp(inp)
    ref = dht_fast.teaching_objective(model, x, inp["y"], star, LR, grad_x=False,
                                      backend="func")
    torch.testing.assert_close(got.double(), ref.inner, rtol=1e-4,
                               atol=1e-5 * ref.inner.abs().max().item())


PROJECT = dht_fast.ops.performative.PROJECT_DISPATCH
SOLVE = dht_fast.ops.performative.SOLVE_DISPATCH


@pytest.mark.benchmark(group="sphere_project")
@pytest.mark.parametrize("backend", PROJECT.names)
def test_sphere_project(benchmark, linear_inputs, backend):
    x = linear_inputs["x"]
    anchor = x + 0.3 * torch.randn_like(x)
    reason = PROJECT.why_not(backend, x=x)
    if reason is not None:
        pytest.skip(reason)
    got = benchmark(dht_fast.sphere_project, x, anchor, 0.1, backend=backend)
    ref = dht_fast.sphere_project(x.double(), anchor.double(), 0.1, backend="torch")
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.benchmark(group="performative_solve")
@pytest.mark.parametrize("backend", SOLVE.names)
def test_performative_solve(benchmark, linear_inputs, backend):
    inp = linear_inputs
    reason = SOLVE.why_not(backend, x=inp["x"], weight=inp["weight"])
    if reason is not None:
        pytest.skip(reason)
    args = (inp["x"], inp["y"], inp["weight"], inp["bias"], inp["weight_star"], inp["bias_star"],
            LR)
    kw = dict(eps=0.1, steps=15, step_size=0.0133)
    got = benchmark(dht_fast.performative_solve, *args, **kw, backend=backend)
    ref = dht_fast.performative_solve(*(a.double() if a.is_floating_point() else a
                                        for a in args[:6]), LR, **kw, backend="torch")
    # The objective reached rather than the point: near-ties between iterates may resolve
    # differently in float32 (see tests/test_performative_solve.py).
    star = [a.double() for a in args[2:6]]

    def objective(f):
        return dht_fast.linear_teaching_objective(f, inp["y"], *star, LR, grad_x=False).objective

    start, reached, best = objective(inp["x"].double()), objective(got.double()), objective(ref)
    scale = start.abs().max().item()
    assert (reached <= start + 1e-6 * scale).all()
    torch.testing.assert_close(reached, best, rtol=0, atol=1e-3 * scale)
    torch.testing.assert_close(got.double().norm(dim=1), inp["x"].double().norm(dim=1),
                               rtol=1e-5, atol=1e-6)
