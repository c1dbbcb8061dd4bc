"""teaching_objective for any nn.Module: the MLP ghost path and the linear route against the
float64 torch.func oracle; directional_inner against the oracle's inner products."""
import pytest
import torch
import torch.nn as nn

import dht_fast
from dht_fast.ops.model_objective import DISPATCH

FIELDS = ("grad_norm_sq", "inner", "objective", "grad_x")


def mlp(act=nn.Tanh, bias_last=True):
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 9), act(), nn.Linear(9, 7), act(),
                         nn.Linear(7, 5, bias=bias_last)).double()


def perturbed(model, scale=0.1):
    g = torch.Generator().manual_seed(1)
    return {k: v.detach() + scale * torch.randn(v.shape, generator=g, dtype=v.dtype)
            for k, v in model.named_parameters()}


def compare(model, x, y, backend, **kw):
    star = perturbed(model)
    ref = dht_fast.teaching_objective(model, x, y, star, 0.2, backend="func", **kw)
    out = dht_fast.teaching_objective(model, x, y, star, 0.2, backend=backend, **kw)
    for name, o, r in zip(FIELDS, out, ref):
        if r is None:
            assert o is None
            continue
        assert o.shape == r.shape, name
        torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
    return out


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU, nn.GELU, nn.Sigmoid, nn.SiLU])
@pytest.mark.parametrize("b", [1, 6, 13])
def test_ghost_matches_func(act, b):
    x = torch.randn(b, 3, 4, dtype=torch.float64)
    compare(mlp(act), x, torch.randint(0, 5, (b,)), "ghost")


def test_ghost_soft_targets_and_no_bias():
    x = torch.randn(8, 12, dtype=torch.float64)
    y = torch.softmax(torch.randn(8, 5, dtype=torch.float64), 1)
    compare(mlp(bias_last=False), x, y, "ghost")


def test_ghost_without_grad_x():
    x = torch.randn(5, 12, dtype=torch.float64)
    out = compare(mlp(), x, torch.randint(0, 5, (5,)), "ghost", grad_x=False)
    assert out.grad_x is None


def test_ghost_frozen_layer():
    model = mlp()
    model[1].weight.requires_grad_(False)
    x = torch.randn(5, 12, dtype=torch.float64)
    compare(model, x, torch.randint(0, 5, (5,)), "ghost")


def test_ghost_custom_loss():
    def mse(out, y):
        return ((out - y) ** 2).sum(1)

    x = torch.randn(6, 12, dtype=torch.float64)
    compare(mlp(), x, torch.randn(6, 5, dtype=torch.float64), "ghost", loss_fn=mse)


def test_empty_batch():
    out = dht_fast.teaching_objective(mlp(), torch.zeros(0, 12, dtype=torch.float64),
                                      torch.zeros(0, dtype=torch.int64), perturbed(mlp()), 0.1)
    assert out.objective.shape == (0,) and out.grad_x.shape == (0, 12)


def test_single_linear_routes_to_linear_op():
    lin = nn.Linear(10, 4).double()
    x = torch.randn(7, 10, dtype=torch.float64)
    y = torch.randint(0, 4, (7,))
    assert DISPATCH.resolve("auto", "cpu", model=lin, loss_fn=None) == "linear"
    compare(lin, x, y, "linear")


def test_conv_model_falls_back_to_func():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(4, 3)).double()
    assert DISPATCH.resolve("auto", "cpu", model=model, loss_fn=None) == "func"
    with pytest.raises(dht_fast.BackendUnavailable, match="nn.Sequential of nn.Linear"):
        dht_fast.teaching_objective(model, torch.randn(2, 1, 4, 3, dtype=torch.float64),
                                    torch.tensor([0, 1]), perturbed(model), 0.1,
                                    backend="ghost")


def test_directional_inner_matches_oracle():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3)).double()
    x = torch.randn(5, 1, 4, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    star = perturbed(model)
    ref = dht_fast.teaching_objective(model, x, y, star, 0.1, backend="func", grad_x=False)
    torch.testing.assert_close(dht_fast.directional_inner(model, x, y, star), ref.inner)


def test_bad_params_star():
    model = mlp()
    star = perturbed(model)
    x, y = torch.randn(2, 12, dtype=torch.float64), torch.tensor([0, 1])
    del star["3.bias"]
    with pytest.raises(ValueError, match=r"missing parameters \['3.bias'\]"):
        dht_fast.teaching_objective(model, x, y, star, 0.1)
    star = perturbed(model)
    star["1.weight"] = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"params_star\['1.weight'\] must have shape"):
        dht_fast.teaching_objective(model, x, y, star, 0.1)
    with pytest.raises(ValueError, match="lr must be finite"):
        dht_fast.teaching_objective(model, x, y, perturbed(model), -0.1)


@pytest.mark.parametrize("b", [0, 1, 9])
def test_per_sample_grad_norm_sq(b):
    model = mlp(nn.ReLU)
    model[3].weight.requires_grad_(False)
    x = torch.randn(b, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (b,))
    ref = dht_fast.teaching_objective(model, x, y, perturbed(model), 0.1, backend="func",
                                      grad_x=False).grad_norm_sq
    out = dht_fast.per_sample_grad_norm_sq(model, x, y)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_per_sample_grad_norm_sq_other_models_use_func():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(4, 3)).double()
    x = torch.randn(3, 1, 4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    ref = dht_fast.teaching_objective(model, x, y, perturbed(model), 0.1, grad_x=False)
    torch.testing.assert_close(dht_fast.per_sample_grad_norm_sq(model, x, y), ref.grad_norm_sq)
