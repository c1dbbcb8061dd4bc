"""Which backends a test may run.

A backend that cannot take a test's inputs (a dtype it does not support, say) is skipped. A
backend that cannot run at all here (not built, not importable) is skipped too, unless CI names
it in ``DHT_FAST_REQUIRE_BACKENDS`` (comma-separated): then the test fails.
"""
import os

import pytest
import torch


def _probe(inputs):
    """The same inputs as float32 tensors on the same device: does the backend exist at all?"""
    return {k: v.to(torch.float32) if isinstance(v, torch.Tensor) and v.is_floating_point()
            else v for k, v in inputs.items()}


def require_or_skip(dispatcher, name: str, **inputs) -> None:
    reason = dispatcher.why_not(name, **inputs)
    if reason is None:
        return
    required = {b.strip() for b in os.environ.get("DHT_FAST_REQUIRE_BACKENDS", "").split(",")}
    missing = dispatcher.why_not(name, **_probe(inputs))
    if missing is not None and name in required:
        pytest.fail(f"backend {name!r} is required here but cannot run: {missing}")
    pytest.skip(f"backend {name!r} cannot take these inputs: {reason}")
