"""The fused Triton kernel against the float64 closed form; without a GPU it runs in the interpreter
(conftest sets TRITON_INTERPRET=1), so problems are small."""
import pytest
import torch

from dht_fast.kernels import triton_linear
from dht_fast.kernels.triton_linear import linear_objective_triton, triton_unsupported_reason
from dht_fast.references.linear import linear_objective_closed_form

pytestmark = pytest.mark.skipif(triton_linear.triton is None, reason="triton is not importable")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LR = 0.3
NAMES = ("grad_norm_sq", "inner", "objective", "grad_x", "grad_y")
# (B, D, C): odd sizes for the masks; the last needs two programs and two D chunks even with
# the interpreter's large blocks.
SHAPES = [(1, 37, 7), (33, 50, 100), (200, 300, 10)]


def _problem(b, d, c, soft, bias):
    """Float32 arguments of the objective, in the closed form's order, logits of order one."""
    x = torch.randn(b, d, device=DEVICE)
    weight = torch.randn(c, d, device=DEVICE) / d ** 0.5
    vdiff = 0.5 * torch.randn(c, d, device=DEVICE) / d ** 0.5
    if soft:
        y = torch.softmax(2.0 * torch.randn(b, c, device=DEVICE), 1)
    else:
        y = torch.randint(0, c, (b,), device=DEVICE)
    b_, vb = (torch.randn(c, device=DEVICE), 0.5 * torch.randn(c, device=DEVICE)) if bias else \
        (None, None)
    return x, y, weight, b_, vdiff, vb


def _cast(args, dtype):
    """Floating tensors to ``dtype``; class indices and None stay."""
    return tuple(a.to(dtype) if a is not None and a.is_floating_point() else a for a in args)


def _oracle(args, want_grad_x, want_grad_y):
    return linear_objective_closed_form(*_cast(args[:5], torch.float64), args[5], LR,
                                        want_grad_x, want_grad_y)


def _assert_close(actual, expected, rtol):
    """Elementwise; the absolute tolerance follows the tensor's largest entry, because the
    objective and grad_x are differences of terms and can cancel far below their size."""
    for name, a, e in zip(NAMES, actual, expected):
        if e is None:
            assert a is None, name
            continue
        scale = e.abs().max().item() if e.numel() else 0.0
        torch.testing.assert_close(a.double(), e, rtol=rtol, atol=rtol * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("b,d,c", SHAPES)
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("grads", [(True, True), (False, False), (True, False), (False, True)],
                         ids=["gxgy", "none", "gx", "gy"])
def test_float32_matches_float64_oracle(b, d, c, soft, bias, grads):
    args = _problem(b, d, c, soft, bias)
    out = linear_objective_triton(*args, LR, *grads)
    assert all(o is None or o.dtype == torch.float32 for o in out)
    _assert_close(out, _oracle(args, *grads), rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,d,c", SHAPES[1:])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_low_precision_error_within_twice_torch(dtype, b, d, c, soft):
    """Against the float64 oracle on the same rounded inputs, the kernel's error is at most twice
    that of the closed form run by torch on the low-precision inputs."""
    args = _cast(_problem(b, d, c, soft, bias=True), dtype)
    ours = linear_objective_triton(*args, LR, True, True)
    theirs = linear_objective_closed_form(*args, LR, True, True)
    for name, o, t, e in zip(NAMES, ours, theirs, _oracle(args, True, True)):
        assert o.dtype == dtype, name
        err_ours = (o.double() - e).abs().max().item()
        err_torch = (t.double() - e).abs().max().item()
        atol = 1e-5 * e.abs().max().item()
        assert err_ours <= 2.0 * err_torch + atol, (name, err_ours, err_torch)


@pytest.mark.parametrize("grads", [(True, True), (False, False)], ids=["grads", "nograds"])
def test_empty_batch(grads):
    args = _problem(0, 37, 7, soft=False, bias=True)
    out = linear_objective_triton(*args, LR, *grads)
    assert [None if o is None else tuple(o.shape) for o in out] == \
        [(0,), (0,), (0,)] + ([(0, 37), (0, 7)] if grads[0] else [None, None])


def test_non_contiguous_inputs():
    x, y, weight, bias, vdiff, vbias = _problem(33, 50, 100, soft=True, bias=True)
    # Transposed x and y, every other column of weight, a strided bias.
    x_t = x.T.contiguous().T
    y_t = y.T.contiguous().T
    weight_s = torch.stack([weight, weight], 2).flatten(1)[:, ::2]
    bias_s = torch.stack([bias, bias], 1)[:, 0]
    assert not any(t.is_contiguous() for t in (x_t, y_t, weight_s, bias_s))
    args = (x_t, y_t, weight_s, bias_s, vdiff, vbias)
    _assert_close(linear_objective_triton(*args, LR, True, True), _oracle(args, True, True),
                  rtol=1e-4)


def test_largest_class_count():
    args = _problem(5, 20, triton_linear.MAX_CLASSES, soft=False, bias=True)
    _assert_close(linear_objective_triton(*args, LR, True, True), _oracle(args, True, True),
                  rtol=1e-4)


def test_unsupported_reasons():
    x, y, weight, bias, vdiff, vbias = _problem(4, 8, 3, soft=False, bias=True)
    assert triton_unsupported_reason(x, weight) is None
    assert "dtype" in triton_unsupported_reason(x.double(), weight)
    wide = torch.zeros(triton_linear.MAX_CLASSES + 1, 8, device=DEVICE)
    assert "classes" in triton_unsupported_reason(x, wide)
    with pytest.raises(NotImplementedError, match="dtype"):
        linear_objective_triton(x.double(), y, weight, bias, vdiff, vbias, LR, True, True)


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU tensors on a machine that compiles kernels")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(triton_linear, "_INTERPRETED", False)
    assert "TRITON_INTERPRET" in triton_unsupported_reason(torch.zeros(2, 3), torch.zeros(4, 3))


def test_inconsistent_shapes_raise():
    x, y, weight, bias, vdiff, vbias = _problem(4, 8, 3, soft=True, bias=False)
    with pytest.raises(ValueError, match="x"):
        linear_objective_triton(x[:, :5], y, weight, bias, vdiff, vbias, LR, True, True)
    with pytest.raises(ValueError, match="soft targets"):
        linear_objective_triton(x, y[:, :2], weight, bias, vdiff, vbias, LR, True, True)
