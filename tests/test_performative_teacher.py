"""The drop-in performative teacher: caps, loss, gradient path, random policy, compile, autocast."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dht_fast.ops.linear_objective import linear_teaching_objective
from dht_fast.ops.performative import head_lookahead
from dht_fast.teachers.performative import PerformativeTeacher, random_cap_point


class Tiny(nn.Module):
    def __init__(self, d_in=12, d=8, c=5):
        super().__init__()
        self.extractor = nn.Sequential(nn.Linear(d_in, d), nn.Tanh(), nn.Linear(d, d))
        self.head = nn.Linear(d, c)

    def features(self, x):
        return self.extractor(x)


def _chord(a, b):
    return (a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)).norm(dim=1)


def _batch(b=33, d_in=12, c=5):
    return torch.randn(b, d_in), torch.randint(0, c, (b,))


@pytest.mark.parametrize("policy", ["dht", "random"])
@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_taught_features_lie_on_each_rows_cap(policy, eps):
    model = Tiny()
    x, y = _batch()
    feats = model.features(x)
    teacher = PerformativeTeacher(model.head, eps=eps, lr=0.5, policy=policy, backend="torch")
    taught = teacher(feats, y)
    assert taught.shape == feats.shape and taught.dtype == feats.dtype
    torch.testing.assert_close(taught.norm(dim=1), feats.norm(dim=1), rtol=1e-5, atol=1e-6)
    chord = _chord(taught, feats)
    assert (chord <= eps + 1e-5).all()
    assert (chord > 0.5 * eps).float().mean() > 0.5, "the cap should mostly bind"


def test_dht_lowers_every_rows_objective_and_changes_the_loss():
    model = Tiny()
    x, y = _batch()
    lr = 0.5
    feats = model.features(x).detach()
    teacher = PerformativeTeacher(model.head, eps=0.2, lr=lr, backend="torch")
    taught = teacher(feats, y)
    w, b = model.head.weight.detach(), model.head.bias.detach()
    ws, bs = head_lookahead(feats, y, w, b, lr, teacher.lookahead)
    before = linear_teaching_objective(feats, y, w, b, ws, bs, lr, grad_x=False).objective
    after = linear_teaching_objective(taught, y, w, b, ws, bs, lr, grad_x=False).objective
    assert (after <= before + 1e-7).all()
    assert (after < before).float().mean() > 0.9
    assert not torch.allclose(F.cross_entropy(model.head(taught), y),
                              F.cross_entropy(model.head(feats), y))


def test_automatic_backend_matches_the_torch_reference():
    # float64: in float32 a near-tie between two iterates may pick either.
    model = Tiny().double()
    x, y = _batch()
    feats = model.features(x.double()).detach()
    ref = PerformativeTeacher(model.head, eps=0.1, lr=0.5, backend="torch")(feats, y)
    auto = PerformativeTeacher(model.head, eps=0.1, lr=0.5)(feats, y)
    torch.testing.assert_close(auto, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("policy", ["dht", "random"])
def test_gradient_reaches_the_extractor_straight_through(policy):
    model = Tiny()
    x, y = _batch()
    teacher = PerformativeTeacher(model.head, eps=0.1, lr=0.5, policy=policy, backend="torch")
    head_before = [p.detach().clone() for p in model.head.parameters()]
    torch.manual_seed(1)
    feats = model.features(x)
    feats.retain_grad()
    taught = teacher(feats, y)
    F.cross_entropy(model.head(taught), y).backward()
    assert all(torch.equal(p, q) for p, q in zip(model.head.parameters(), head_before))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # d loss / d feats is the head loss's gradient at the taught point, unchanged.
    leaf = taught.detach().requires_grad_()
    F.cross_entropy(model.head(leaf), y).backward()
    torch.testing.assert_close(feats.grad, leaf.grad)


def _theta_ks(x, z, eps):
    """Kolmogorov-Smirnov distance of the angles to the anchors from density sin^(D-2)."""
    d = x.shape[1]
    cos = (F.normalize(x.double(), dim=1) * F.normalize(z.double(), dim=1)).sum(1)
    theta = np.sort(torch.acos(cos.clamp(-1, 1)).numpy())
    grid = np.linspace(0, 2 * math.asin(min(eps, 2) / 2), 100001)
    dens = np.sin(grid) ** (d - 2)
    cdf = np.concatenate([[0], np.cumsum((dens[1:] + dens[:-1]) / 2)])
    cdf /= cdf[-1]
    fit = np.interp(theta, grid, cdf)
    n = len(theta)
    return max(np.abs(fit - np.arange(1, n + 1) / n).max(), np.abs(fit - np.arange(n) / n).max())


@pytest.mark.parametrize("d,eps", [(2, 0.8), (3, 1.0), (16, 0.1), (16, 1.3), (128, 0.1),
                                   (128, 1.41), (16, 1.9)])
def test_random_policy_is_uniform_on_the_cap(d, eps):
    n = 20000
    gen = torch.Generator().manual_seed(d * 100 + int(10 * eps))
    x = 3 * torch.randn(n, d, generator=gen)
    z = random_cap_point(x, eps, generator=gen)
    torch.testing.assert_close(z.norm(dim=1), x.norm(dim=1), rtol=1e-5, atol=0)
    assert (_chord(z, x) <= eps + 1e-5).all()
    # 1.63 / sqrt(n) is the 1% critical value of the KS statistic.
    assert _theta_ks(x, z, eps) < 1.63 / math.sqrt(n)
    # The direction around the anchor is isotropic: the tangent parts average to ~0.
    u = F.normalize(x, dim=1)
    tangent = F.normalize(z, dim=1) - (F.normalize(z, dim=1) * u).sum(1, keepdim=True) * u
    assert tangent.mean(0).abs().max() < 5 * math.sqrt(1 / n)


def test_random_cap_point_edge_cases():
    x = torch.randn(6, 4)
    x[2] = 0
    torch.testing.assert_close(random_cap_point(x, 0.0), x)
    z = random_cap_point(x, 0.3)
    assert torch.equal(z[2], torch.zeros(4))
    whole = random_cap_point(torch.randn(5000, 3), 5.0)
    assert (F.normalize(whole, dim=1)[:, 0] < 0).float().mean() > 0.4  # the whole sphere
    assert random_cap_point(torch.randn(3, 4, dtype=torch.float64), 0.1).dtype == torch.float64
    with pytest.raises(ValueError, match="D >= 2"):
        random_cap_point(torch.randn(3, 1), 0.1)
    with pytest.raises(ValueError, match="eps"):
        random_cap_point(x, float("nan"))


def test_compiled_training_step_matches_eager():
    """Forward and backward of the taught model compiled as one graph (no graph break)."""
    x, y = _batch()
    results = []
    for compiled in (False, True):
        torch.manual_seed(3)
        model = Tiny()
        teacher = PerformativeTeacher(model.head, eps=0.1, lr=0.1, backend="torch")

        def loss_fn(x, y):
            return F.cross_entropy(model.head(teacher(model.features(x), y)), y)

        if compiled:
            loss_fn = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(3):
            loss = loss_fn(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        results.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["dht", "random"])
def test_bf16_autocast_solves_in_float32_and_returns_bf16(policy):
    model = Tiny()
    x, y = _batch()
    teacher = PerformativeTeacher(model.head, eps=0.1, lr=0.5, policy=policy, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.features(x)
        assert feats.dtype == torch.bfloat16
        torch.manual_seed(5)
        taught = teacher(feats, y)
        loss = F.cross_entropy(model.head(taught), y)
    assert taught.dtype == torch.bfloat16
    loss.backward()
    assert model.extractor[0].weight.grad.abs().sum() > 0
    torch.manual_seed(5)
    ref = teacher(feats.detach().float(), y)
    # The only bf16 step is the final rounding of the float32 result.
    torch.testing.assert_close(taught.float(), ref, rtol=2 ** -7, atol=1e-6)


def test_errors_name_the_argument():
    head = nn.Linear(8, 5)
    with pytest.raises(ValueError, match="policy"):
        PerformativeTeacher(head, policy="greedy")
    with pytest.raises(TypeError, match="head"):
        PerformativeTeacher(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="eps"):
        PerformativeTeacher(head, eps=-1)
    teacher = PerformativeTeacher(head)
    feats, y = torch.randn(4, 8), torch.randint(0, 5, (4,))
    with pytest.raises(ValueError, match="lr"):
        teacher(feats, y)
    with pytest.raises(ValueError, match="head.in_features"):
        teacher(torch.randn(4, 7), y, lr=0.1)
    with pytest.raises(ValueError, match="y must be"):
        teacher(feats, y[:3], lr=0.1)
