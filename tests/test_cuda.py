"""The GPU backends on CUDA tensors against the float64 oracle; skipped on machines without a GPU
(run by benchmarks/gpu_check.sh on a lent one)."""
import pytest
import torch

import dht_fast
from dht_fast.ops.linear_objective import DISPATCH
from tests._backends import require_or_skip
from tests.test_linear_objective import SHAPES, assert_close, make_problem, oracle

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = {torch.float32: (2e-4, 1e-5), torch.bfloat16: (3e-2, 3e-2)}


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda", "auto"])
@pytest.mark.parametrize("shape", SHAPES + [(4096, 784, 10), (300, 512, 100)],
                         ids=lambda s: "B{}D{}C{}".format(*s))
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cuda_matches_oracle(backend, shape, soft, bias, dtype):
    p = make_problem(*shape, soft=soft, bias=bias, dtype=dtype)
    ref = oracle(p, 0.3, soft)
    q = {k: None if v is None else v.cuda() for k, v in p.items()}
    if backend != "auto":
        require_or_skip(DISPATCH, backend, x=q["x"], weight=q["weight"])
    out = dht_fast.linear_teaching_objective(**q, lr=0.3, grad_y=soft, backend=backend)
    out = type(out)(*(None if o is None else o.cpu() for o in out))
    if dtype == torch.bfloat16:
        scale = max(r.abs().max().item() for r in ref if r is not None and r.numel()) \
            if shape[0] else 1.0
        assert_close(out, ref, TOL[dtype][0], TOL[dtype][1] * scale)
    else:
        assert_close(out, ref, *TOL[dtype])
