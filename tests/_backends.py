"""Which backends a test may run. A backend that cannot run here is skipped, unless CI names it
in ``DHT_FAST_REQUIRE_BACKENDS`` (comma-separated), where a missing one fails the test."""
import os

import pytest


def require_or_skip(dispatcher, name: str, **inputs) -> None:
    reason = dispatcher.why_not(name, **inputs)
    if reason is None:
        return
    required = {b.strip() for b in os.environ.get("DHT_FAST_REQUIRE_BACKENDS", "").split(",")}
    if name in required:
        pytest.fail(f"backend {name!r} is required here but cannot run: {reason}")
    pytest.skip(f"backend {name!r} unavailable: {reason}")
