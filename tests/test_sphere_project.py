"""sphere_project: constraints, closest point, defined behaviour at ambiguous rows, backends."""
import math

import pytest
import torch

from dht_fast.ops.performative import PROJECT_DISPATCH, sphere_project
from dht_fast.references.performative import orthogonal_direction, sphere_project_ref
from tests._backends import require_or_skip

BACKENDS = ["torch", "cpp", "triton"]
EPS = [0.0, 0.05, 0.3, 1.0, 1.99, 2.0, 3.0]
SHAPES = [(0, 5), (1, 1), (9, 1), (1, 37), (33, 2), (33, 37)]  # (B, D)
TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12)}  # rtol, atol


def rows(b, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed + 100 * b + d)
    return (torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype) * 3,
            torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype) * 2)


def unit(t):
    return t / t.norm(dim=1, keepdim=True)


def check_on_cap(z, a, eps, tol):
    torch.testing.assert_close(z.norm(dim=1), a.norm(dim=1), rtol=tol, atol=tol)
    chord = (unit(z) - unit(a)).norm(dim=1)
    assert bool((chord <= eps + tol).all()), f"chord {chord.max().item()} > eps {eps}"


def backend_dtype(backend):
    # The Triton kernels compute in float32; the others are checked in float64.
    return torch.float32 if backend == "triton" else torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}D{}".format(*s))
@pytest.mark.parametrize("eps", EPS)
def test_on_cap_and_matches_reference(backend, shape, eps):
    dtype = backend_dtype(backend)
    x, a = rows(*shape, dtype=dtype)
    require_or_skip(PROJECT_DISPATCH, backend, x=x)
    z = sphere_project(x, a, eps, backend=backend)
    assert z.shape == x.shape and z.dtype == dtype
    eps_rows = torch.full((shape[0],), eps, dtype=torch.float64)
    ref = sphere_project_ref(x.double(), a.double(), eps_rows)
    torch.testing.assert_close(z.double(), ref, rtol=TOL[dtype][0], atol=TOL[dtype][1] * 10)
    if shape[0]:
        check_on_cap(ref, a.double(), eps, 1e-9)


@pytest.mark.parametrize("eps", [0.05, 0.4, 1.5])
def test_closest_point_of_the_cap(eps):
    """No point of the cap (sampled: 4000 per row, interior and boundary) is closer to x."""
    b, d, n = 12, 5, 4000
    x, a = rows(b, d, seed=7)
    z = sphere_project(x, a, eps, backend="torch")
    g = torch.Generator().manual_seed(1)
    ah, radius = unit(a), a.norm(dim=1, keepdim=True)
    v = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    v = unit((v - (v * ah[:, None]).sum(-1, keepdim=True) * ah[:, None]).reshape(-1, d))
    theta = 2 * math.asin(eps / 2)
    phi = theta * torch.rand(b, n, 1, generator=g, dtype=torch.float64)
    phi[:, : n // 4] = theta  # a quarter exactly on the boundary
    cap = radius[:, None] * (phi.cos() * ah[:, None] + phi.sin() * v.reshape(b, n, d))
    best = (cap - x[:, None]).norm(dim=-1).min(1).values
    assert bool(((z - x).norm(dim=1) <= best + 1e-12).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_ambiguous_rows(backend):
    """Zero anchor -> 0; zero x -> anchor; antipodal x -> the fixed boundary point; eps=0 -> a."""
    dtype = backend_dtype(backend)
    x, a = rows(5, 6, dtype=dtype)
    require_or_skip(PROJECT_DISPATCH, backend, x=x)
    a[0] = 0
    x[1] = 0
    x[2] = -2 * a[2]
    z = sphere_project(x, a, 0.5, backend=backend).double()
    tol = TOL[dtype][0] * 10
    assert bool((z[0] == 0).all())
    torch.testing.assert_close(z[1], a[1].double(), rtol=tol, atol=tol)
    ad = a.double()
    ah = unit(ad[2:3])
    theta = 2 * math.asin(0.25)
    fixed = ad[2].norm() * (math.cos(theta) * ah + math.sin(theta) * orthogonal_direction(ah))
    torch.testing.assert_close(z[2], fixed[0], rtol=tol, atol=tol)
    torch.testing.assert_close(sphere_project(x, a, 0.0, backend=backend).double()[1:], ad[1:],
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dimension(backend):
    """D = 1: the sphere is {a, -a}; a cap of eps < 2 is {a}, eps >= 2 keeps x's sign."""
    dtype = backend_dtype(backend)
    a = torch.tensor([[2.0], [-1.0], [3.0]], dtype=dtype)
    x = torch.tensor([[-5.0], [-0.1], [0.0]], dtype=dtype)
    require_or_skip(PROJECT_DISPATCH, backend, x=x)
    assert sphere_project(x, a, 1.9, backend=backend).tolist() == [[2.0], [-1.0], [3.0]]
    assert sphere_project(x, a, 2.0, backend=backend).tolist() == [[-2.0], [-1.0], [3.0]]


def test_eps_per_row_and_bf16():
    x, a = rows(4, 8)
    eps = torch.tensor([0.0, 0.1, 1.0, 5.0], dtype=torch.float64)
    z = sphere_project(x, a, eps, backend="torch")
    for i in range(4):
        torch.testing.assert_close(z[i:i + 1], sphere_project(x[i:i + 1], a[i:i + 1],
                                                              float(eps[i])))
    zb = sphere_project(x.bfloat16(), a.bfloat16(), 0.3, backend="torch")
    assert zb.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradcheck(backend):
    x, a = rows(6, 5)
    require_or_skip(PROJECT_DISPATCH, backend, x=x)
    x.requires_grad_(True)
    a.requires_grad_(True)
    # eps 0.6 leaves some rows inside the cap and puts others on its boundary.
    assert torch.autograd.gradcheck(lambda xx, aa: sphere_project(xx, aa, 0.6, backend=backend),
                                    (x, a))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_opcheck(backend):
    x, a = rows(6, 5)
    require_or_skip(PROJECT_DISPATCH, backend, x=x)
    eps = torch.full((6,), 0.6, dtype=torch.float64)
    torch.library.opcheck(torch.ops.dht_fast.sphere_project.default,
                          (x.requires_grad_(True), a.requires_grad_(True), eps, backend))


@pytest.mark.parametrize("eps, err, match", [
    (-0.1, ValueError, "eps must be >= 0"),
    (float("nan"), ValueError, "eps must be >= 0"),
    (torch.tensor([0.1, -1.0, 0.2]), ValueError, "eps must be >= 0"),
    (torch.tensor([0.1, float("nan"), 0.2]), ValueError, "not NaN"),
    (torch.tensor([0.1, 0.2]), ValueError, r"eps must have shape \(B,\)"),
    ("0.1", TypeError, "eps must be a float"),
])
def test_bad_eps(eps, err, match):
    x, a = rows(3, 4, dtype=torch.float32)
    with pytest.raises(err, match=match):
        sphere_project(x, a, eps)


def test_bad_inputs():
    x, a = rows(3, 4)
    with pytest.raises(ValueError, match=r"anchor must have shape \(B, D\) like x"):
        sphere_project(x, a[:, :3], 0.1)
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        sphere_project(x[0], a, 0.1)
    with pytest.raises(ValueError, match="anchor has dtype torch.float32"):
        sphere_project(x, a.float(), 0.1)
    with pytest.raises(TypeError, match="x must have dtype in"):
        sphere_project(x.long(), a, 0.1)
    with pytest.raises(ValueError, match="x contains NaN"):
        sphere_project(x.clone().fill_(float("nan")), a, 0.1)
    with pytest.raises(ValueError, match="backend must be"):
        sphere_project(x, a, 0.1, backend="nope")
