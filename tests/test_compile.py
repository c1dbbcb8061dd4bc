"""torch.compile traces a teaching step that calls the custom ops, without graph breaks."""
import pytest
import torch

import dht_fast
from dht_fast.ops.linear_objective import DISPATCH
from tests._backends import require_or_skip
from tests.test_linear_objective import make_problem


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_compiled_teaching_step_matches_eager(backend):
    p = make_problem(16, 12, 5, soft=False, bias=True, dtype=torch.float32)
    require_or_skip(DISPATCH, backend, x=p["x"], weight=p["weight"])
    weight = p.pop("weight").requires_grad_(True)

    def step(x, weight):
        # A greedy-teacher step on x, then a learner loss on the moved samples.
        out = dht_fast.linear_teaching_objective(x=x, weight=weight, **rest, lr=0.3,
                                                 backend=backend)
        x_new = x - 0.1 * out.grad_x
        loss = out.objective.mean() + (x_new @ weight.T).logsumexp(1).mean()
        return loss, x_new

    rest = {k: v for k, v in p.items() if k != "x"}
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_eager, x_eager = step(p["x"], weight)
    g_eager, = torch.autograd.grad(loss_eager, weight)
    loss_comp, x_comp = compiled(p["x"], weight)
    g_comp, = torch.autograd.grad(loss_comp, weight)
    torch.testing.assert_close(g_comp, g_eager)
    torch.testing.assert_close(x_comp, x_eager)
