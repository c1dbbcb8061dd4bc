"""Teachers, learner and data of the omniscient linear experiments."""
import pytest
import torch

from dht_fast import linear_teaching_objective
from dht_fast.data.base import DatasetNotFound, Domain, load_dataset
from dht_fast.data.mnist import find_mnist
from dht_fast.data.moons import make_moons
from dht_fast.experiments.runner import TEACHERS, TeachConfig, make_teacher, teach
from dht_fast.learners.linear import LinearLearner, Target, distance, train_target
from dht_fast.teachers.omniscient import GreedyTeacher, IMTTeacher, project_simplex


def _setup(c=3, d=5, n=64, bias=True, dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    learner = LinearLearner.init(c, d, lr=0.05, bias=bias, generator=gen, dtype=dtype)
    star = LinearLearner.init(c, d, lr=0.05, bias=bias, generator=gen, dtype=dtype)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    y = torch.randint(c, (n,), generator=gen)
    return learner, Target(star.weight, star.bias), x, y


def _objective(learner, target, x, y):
    return linear_teaching_objective(x, y, learner.weight, learner.bias, target.weight,
                                     target.bias, learner.lr, grad_x=False,
                                     backend="func").objective


@pytest.mark.parametrize("batch_size", [1, 3])
def test_imt_picks_the_lowest_objectives_of_the_pool(batch_size):
    learner, target, x, y = _setup()
    x_t, y_t = IMTTeacher(x, y, target, batch_size=batch_size).next_batch(learner)
    scores = _objective(learner, target, x, y)
    picked = _objective(learner, target, x_t, y_t)
    torch.testing.assert_close(picked.sort().values, scores.sort().values[:batch_size])


@pytest.mark.parametrize("bias", [True, False])
def test_one_step_changes_the_squared_distance_by_the_objective(bias):
    learner, target, x, y = _setup(bias=bias)
    before = distance(learner, target) ** 2
    obj = _objective(learner, target, x[:1], y[:1])
    learner.step(x[:1], y[:1])
    torch.testing.assert_close(distance(learner, target) ** 2 - before, obj[0])


@pytest.mark.parametrize("soft", [False, True])
def test_greedy_lowers_the_objective_and_stays_in_the_box(soft):
    learner, target, _, _ = _setup(c=3, d=4)
    lower = torch.tensor([-1.0, -0.5, 0.2, -2.0], dtype=torch.float64)
    upper = torch.tensor([1.0, 0.5, 0.8, -1.0], dtype=torch.float64)
    teacher = GreedyTeacher(Domain(lower, upper), 3, target, batch_size=5, steps=60, starts=3,
                            step_size=0.05, soft_labels=soft,
                            generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1])
    x, labels, obj = teacher.synthesize(learner, y)
    assert x.shape == (5, 4) and ((x >= lower) & (x <= upper)).all()
    start = _objective(learner, target, torch.zeros(5, 4, dtype=x.dtype).clamp(lower, upper), y)
    torch.testing.assert_close(obj, _objective(learner, target, x, labels))
    assert (obj <= start).all() and (obj < start - 1e-6).any()
    if soft:
        assert labels.shape == (5, 3) and (labels >= 0).all()
        torch.testing.assert_close(labels.sum(1), torch.ones(5, dtype=labels.dtype))
    else:
        assert torch.equal(labels, y)


def test_greedy_through_a_projection_synthesizes_images_of_the_box():
    learner, target, _, _ = _setup(c=2, d=3)
    proj = torch.randn(6, 3, dtype=torch.float64)
    domain = Domain(-torch.ones(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64), proj)
    teacher = GreedyTeacher(domain, 2, target, batch_size=2, steps=40, step_size=0.1)
    y = torch.tensor([0, 1])
    x, _, obj = teacher.synthesize(learner, y)
    assert (obj < _objective(learner, target, torch.zeros(2, 3, dtype=x.dtype), y)).all()
    # x = u @ proj with |u| <= 1, so |x_j| <= sum_k |proj_kj|.
    assert (x.abs() <= proj.abs().sum(0) + 1e-9).all()


def test_greedy_step_moves_the_learner_toward_the_target():
    learner, target, _, _ = _setup(c=2, d=2)
    box = Domain(torch.full((2,), -3.0, dtype=torch.float64), torch.full((2,), 3.0,
                                                                          dtype=torch.float64))
    teacher = GreedyTeacher(box, 2, target, steps=100, generator=torch.Generator().manual_seed(0))
    before = distance(learner, target)
    learner.step(*teacher.next_batch(learner))
    assert distance(learner, target) < before


def test_project_simplex():
    v = torch.tensor([[0.2, 0.3, 0.5], [2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-1.0, -3.0, -1.0]])
    p = project_simplex(v)
    expected = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [1 / 3] * 3, [0.5, 0.0, 0.5]])
    torch.testing.assert_close(p, expected)


def test_learner_init_is_centred_and_target_trains():
    learner = LinearLearner.init(4, 3, lr=0.1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(learner.weight.sum(0), torch.zeros(3), atol=1e-6, rtol=0)
    data = load_dataset("moons")
    target = train_target(data.x_train, data.y_train, 2, epochs=5)
    assert LinearLearner(target.weight, target.bias, 1.0).accuracy(data.x_test, data.y_test) > 0.8


def test_make_moons_matches_scikit_learn():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = make_moons(101, noise=0.0)
    ref_x, ref_y = datasets.make_moons(101, noise=0.0, shuffle=False)
    for c in (0, 1):
        ours = x[y == c].double().sort(0).values
        torch.testing.assert_close(ours, torch.from_numpy(ref_x[ref_y == c]).sort(0).values,
                                   atol=1e-6, rtol=0)


def test_missing_mnist_says_how_to_provide_it(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFound, match="--data-root"):
        find_mnist(tmp_path)
    monkeypatch.setenv("DHT_FAST_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFound, match="DHT_FAST_DATA"):
        load_dataset("mnist")


def test_mnist_3v5_is_the_authors_setting():
    try:
        data = load_dataset("mnist")
    except DatasetNotFound:
        pytest.skip("MNIST files not available")
    assert data.x_train.shape == (1000, 24) and data.x_test.shape == (200, 24)
    assert set(data.y_train.tolist()) == {0, 1}
    assert data.domain.projection.shape == (784, 24)
    assert data.domain.lower.min() == -1 and data.domain.upper.max() == 1


@pytest.mark.parametrize("name", TEACHERS)
def test_each_teacher_teaches_end_to_end(name):
    cfg = TeachConfig(teachers=[name], seeds=[0], iterations=15, greedy_steps=20, batch_size=2,
                      greedy_starts=2, lr=0.05)
    data = load_dataset("moons")
    target = train_target(data.x_train, data.y_train, 2, epochs=5)
    learner = LinearLearner.init(2, 2, lr=cfg.lr, generator=torch.Generator().manual_seed(0))
    teacher = make_teacher(name, data, target, cfg, torch.Generator().manual_seed(0))
    curves = teach(teacher, learner, data, target, cfg.iterations)
    assert curves.shape == (16, 3) and torch.isfinite(curves).all()
    if name != "sgd":
        assert curves[-1, 1] < curves[0, 1]
