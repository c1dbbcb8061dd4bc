"""Test set-up. Triton kernels run under the interpreter on machines without a GPU; the flag must be
set before any ``@triton.jit`` function is defined, so it is set here, before dht_fast imports."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
