"""The GPU backends on CUDA tensors against the float64 oracle; skipped on machines without a GPU
(run by benchmarks/gpu_check.sh on a lent one). The other test files run the Triton kernels only
under the interpreter or on CPU tensors, so every kernel is checked here on the GPU, at shapes
that take several programs and several D chunks at the GPU block sizes."""
import pytest
import torch

import dht_fast
from dht_fast.ops.linear_objective import DISPATCH
from dht_fast.ops.performative import PROJECT_DISPATCH, SOLVE_DISPATCH, sphere_project
from dht_fast.references.performative import sphere_project_ref
from tests import test_performative_solve as solve_tests
from tests._backends import require_or_skip
from tests.test_linear_objective import FIELDS, SHAPES, assert_close, make_problem, oracle
from tests.test_sphere_project import rows

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = {torch.float32: (2e-4, 1e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (3e-2, 3e-2)}
# (B, D, C): C = 256 is both kernels' class limit and the Triton kernels' widest tile.
WIDE = [(4096, 784, 10), (300, 512, 100), (300, 130, 256)]


def _cuda(p):
    return {k: None if v is None else v.cuda() for k, v in p.items()}


def _assert_close_scaled(out, ref, rtol, atol):
    """Each output against the oracle with an absolute tolerance of ``atol`` times that output's
    largest entry: grad_x and the objective are differences of larger terms, and their scales
    differ by orders of magnitude from grad_norm_sq's."""
    for name, o, r in zip(FIELDS, out, ref):
        if r is None:
            assert o is None, name
            continue
        assert o.shape == r.shape, f"{name}: {tuple(o.shape)} vs {tuple(r.shape)}"
        scale = max(r.abs().max().item(), 1.0) if r.numel() else 1.0
        torch.testing.assert_close(o.double(), r, rtol=rtol, atol=atol * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda", "auto"])
@pytest.mark.parametrize("shape", SHAPES + WIDE, ids=lambda s: "B{}D{}C{}".format(*s))
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cuda_matches_oracle(backend, shape, soft, bias, dtype):
    p = make_problem(*shape, soft=soft, bias=bias, dtype=dtype)
    ref = oracle(p, 0.3, soft)
    q = _cuda(p)
    if backend != "auto":
        require_or_skip(DISPATCH, backend, x=q["x"], weight=q["weight"])
    out = dht_fast.linear_teaching_objective(**q, lr=0.3, grad_y=soft, backend=backend)
    _assert_close_scaled(type(out)(*(None if o is None else o.cpu() for o in out)), ref,
                         *TOL[dtype])


# float16 on the two kernels only, at few shapes: each Triton specialization compiles for seconds.
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("shape", [(33, 37, 7), (300, 512, 100)],
                         ids=lambda s: "B{}D{}C{}".format(*s))
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
def test_cuda_float16(backend, shape, soft):
    test_cuda_matches_oracle(backend, shape, soft, True, torch.float16)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_cuda_non_contiguous_inputs(backend):
    p = make_problem(33, 50, 100, soft=True, bias=True, dtype=torch.float32)
    ref = oracle(p, 0.3, True)
    q = _cuda(p)
    # Transposed x and y, every other column of weight.
    q["x"], q["y"] = q["x"].T.contiguous().T, q["y"].T.contiguous().T
    q["weight"] = torch.stack([q["weight"], q["weight"]], 2).flatten(1)[:, ::2]
    assert not any(q[k].is_contiguous() for k in ("x", "y", "weight"))
    require_or_skip(DISPATCH, backend, x=q["x"], weight=q["weight"])
    out = dht_fast.linear_teaching_objective(**q, lr=0.3, grad_y=True, backend=backend)
    assert_close(type(out)(*(o.cpu() for o in out)), ref, *TOL[torch.float32])


@pytest.mark.parametrize("shape", [(1000, 300), (70, 37), (33, 1)],
                         ids=lambda s: "B{}D{}".format(*s))
@pytest.mark.parametrize("eps", [0.0, 0.3, 1.99, 3.0])
def test_sphere_project_triton_matches_reference(shape, eps):
    x, a = rows(*shape, dtype=torch.float32)
    a[0], x[1] = 0, 0  # a zero anchor and a zero x
    require_or_skip(PROJECT_DISPATCH, "triton", x=x.cuda())
    z = sphere_project(x.cuda(), a.cuda(), eps, backend="triton").cpu()
    ref = sphere_project_ref(x.double(), a.double(),
                             torch.full((shape[0],), eps, dtype=torch.float64))
    torch.testing.assert_close(z.double(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(200, 300, 7), (200, 300, 100), (40, 130, 256)],
                         ids=lambda s: "B{}D{}C{}".format(*s))
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("steps", [1, 5])
def test_performative_solve_triton_matches_reference(shape, soft, bias, steps):
    """The checks of test_performative_solve.test_backend_matches_reference, on the GPU. Over
    several steps float32 rounding moves some iterates by a few percent of the objective (the
    float32 torch backend's own error reaches that at C = 256), so only one step gets the tight
    bound; five check the state carried across steps."""
    p = solve_tests.make_problem(*shape, soft=soft, bias=bias, dtype=torch.float32)
    q = _cuda(p)
    require_or_skip(SOLVE_DISPATCH, "triton", x=q["feats"], weight=q["weight"])
    out = solve_tests.solve(q, backend="triton", eps=0.2, steps=steps).cpu()
    assert out.dtype == torch.float32 and out.shape == p["feats"].shape
    p64 = {k: v.double() if v is not None and v.is_floating_point() else v
           for k, v in p.items()}
    ref = solve_tests.solve(p64, eps=0.2, steps=steps)
    own = solve_tests.solve(p, backend="torch", eps=0.2, steps=steps)
    obj_ref = solve_tests.objective(p64, ref)
    err = (solve_tests.objective(p64, out) - obj_ref).abs().max()
    own_err = (solve_tests.objective(p64, own) - obj_ref).abs().max()
    slack = 1e-3 if steps == 1 else 5e-2
    assert err <= 4 * own_err + slack * obj_ref.abs().mean(), \
        f"objective error {err} vs torch's own {own_err}"
    torch.testing.assert_close(out.double().norm(dim=1), ref.norm(dim=1), rtol=1e-5, atol=1e-5)
    assert bool((solve_tests.chord(out.double(), p64["feats"]) <= 0.2 + 1e-5).all())


def test_performative_solve_triton_edge_cases():
    """eps = 0, steps = 0 and step_size = 0 return feats; zero rows and eps >= 2 are defined."""
    p = _cuda(solve_tests.make_problem(70, 37, 5, dtype=torch.float32))
    require_or_skip(SOLVE_DISPATCH, "triton", x=p["feats"], weight=p["weight"])
    p["feats"][1] = 0
    for kw in ({"eps": 0.0}, {"steps": 0}, {"step_size": 0.0}):
        torch.testing.assert_close(solve_tests.solve(p, backend="triton", **kw), p["feats"])
    out = solve_tests.solve(p, backend="triton", eps=3.0, steps=6, step_size=0.3)
    assert bool((out[1] == 0).all())
    torch.testing.assert_close(out.norm(dim=1), p["feats"].norm(dim=1), rtol=1e-5, atol=1e-5)
