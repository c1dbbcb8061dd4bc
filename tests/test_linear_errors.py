"""Bad input to linear_teaching_objective gets a clear error naming the argument."""
import math

import pytest
import torch

import dht_fast
from dht_fast.ops.linear_objective import DISPATCH
from tests.test_linear_objective import make_problem


def call(**over):
    p = make_problem(4, 6, 3, soft=False, bias=True, dtype=torch.float32)
    p.update(over)
    p.setdefault("lr", 0.1)
    return dht_fast.linear_teaching_objective(**p)


@pytest.mark.parametrize("over, exc, match", [
    (dict(x=torch.zeros(4, 5)), ValueError, r"weight must have shape \(C, D\)"),
    (dict(x=torch.zeros(4)), ValueError, "x must have 2 dimensions"),
    (dict(weight_star=torch.zeros(3, 5)), ValueError, "weight_star must have shape"),
    (dict(bias=torch.zeros(4)), ValueError, r"bias must have shape \(C,\)"),
    (dict(bias_star=None), ValueError, "both be tensors or both be None"),
    (dict(y=torch.zeros(5, dtype=torch.int64)), ValueError, r"y must have shape \(B,\)"),
    (dict(y=torch.zeros(4, 4)), ValueError, r"y must have shape \(B, C\)"),
    (dict(y=torch.zeros(4, dtype=torch.int32)), TypeError, "y must be int64"),
    (dict(y=torch.tensor([0, 1, 3, 0])), ValueError, r"expected values in \[0, 3\)"),
    (dict(y=torch.tensor([0, -1, 2, 0])), ValueError, r"class indices in \[-1, 2\]"),
    (dict(x=torch.zeros(4, 6, dtype=torch.int64)), TypeError, "x must have dtype"),
    (dict(weight=torch.zeros(3, 6, dtype=torch.float64)), ValueError, "weight has dtype"),
    (dict(weight=torch.zeros(3, 6, device="meta")), ValueError, "weight has device meta"),
    (dict(y=torch.zeros(4, dtype=torch.int64, device="meta")), ValueError, "y has device"),
    (dict(x=torch.full((4, 6), math.nan)), ValueError, "x contains NaN or Inf"),
    (dict(bias_star=torch.tensor([0.0, math.inf, 0.0])), ValueError, "bias_star contains"),
    (dict(lr=0.0), ValueError, "lr must be finite and > 0"),
    (dict(lr=-1.0), ValueError, "lr must be finite and > 0"),
    (dict(lr=math.nan), ValueError, "lr must be finite"),
    (dict(lr=math.inf), ValueError, "lr must be finite"),
    (dict(backend="nope"), ValueError, "backend must be 'auto' or one of"),
    (dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
])
def test_bad_input(over, exc, match):
    with pytest.raises(exc, match=match):
        call(**over)


def test_explicit_unavailable_backend_raises():
    with pytest.raises(dht_fast.BackendUnavailable, match="'cuda' cannot run here: .*CUDA"):
        call(backend="cuda")


def test_env_var_overrides_auto(monkeypatch):
    p = make_problem(4, 6, 3, soft=False, bias=True, dtype=torch.float32)
    monkeypatch.setenv("DHT_FAST_BACKEND", "torch")
    assert DISPATCH.resolve("auto", "cpu", x=p["x"], weight=p["weight"]) == "torch"
    monkeypatch.setenv("DHT_FAST_BACKEND", "cuda")
    with pytest.raises(dht_fast.BackendUnavailable):
        call()


def test_auto_falls_back_and_logs_once(caplog, monkeypatch):
    monkeypatch.setattr(DISPATCH, "_logged", set())
    x16 = torch.zeros(2, 3, dtype=torch.bfloat16)
    with caplog.at_level("INFO", logger="dht_fast.ops.backends"):
        for _ in range(3):
            assert DISPATCH.resolve("auto", "cpu", x=x16, weight=x16) == "torch"
    assert sum("skipping backend 'cpp'" in r.message for r in caplog.records) == 1


def test_value_checks_can_be_disabled(monkeypatch):
    monkeypatch.setenv("DHT_FAST_CHECK_VALUES", "0")
    out = call(x=torch.full((4, 6), math.nan), backend="torch")
    assert torch.isnan(out.objective).all()


def test_value_checks_keyword():
    out = call(x=torch.full((4, 6), math.nan), backend="torch", check_values=False)
    assert torch.isnan(out.objective).all()
    with pytest.raises(ValueError, match="y holds class indices"):
        call(y=torch.tensor([0, 1, 3, 0]), check_values=True)
