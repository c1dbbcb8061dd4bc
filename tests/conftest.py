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


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use small tensors, where a second thread only adds hand-offs (costly on a busy
    2-core machine); commands under test may also change the thread count: restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
