"""Backend registry and dispatch shared by every op.

An op declares its backends (each with a function that says why it cannot run on given inputs)
and an order of preference per device type. ``resolve`` turns a requested name into one that
runs: an explicit request (the argument, or the ``DHT_FAST_BACKEND`` environment variable when
the argument is ``"auto"``) that cannot run raises :class:`BackendUnavailable` with the reason;
``"auto"`` walks the preference list and logs, once per op and reason, why it skipped a backend.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

log = logging.getLogger(__name__)

ENV_VAR = "DHT_FAST_BACKEND"

# why_not(**inputs) -> None when the backend can run on these inputs, else the reason.
WhyNot = Callable[..., Optional[str]]


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run on the given inputs."""


@dataclass(frozen=True)
class Backend:
    name: str
    why_not: WhyNot


_ext_cache: dict[str, tuple[object, Optional[str]]] = {}


def load_extension(module: str):
    """Import a compiled extension once; return ``(module or None, reason or None)``."""
    if module not in _ext_cache:
        try:
            _ext_cache[module] = (importlib.import_module(module), None)
        except ImportError as err:
            _ext_cache[module] = (None, f"the extension {module} is not built ({err})")
    return _ext_cache[module]


def extension_reason(module: str, namespace: str, op: str) -> Optional[str]:
    """Why ``torch.ops.<namespace>.<op>`` from the extension ``module`` is missing, or None.

    Call it at import: torch.compile cannot trace the import inside a dispatch."""
    reason = load_extension(module)[1]
    if reason is None and not hasattr(getattr(torch.ops, namespace), op):
        reason = f"{module} was built without its {op} kernel; rebuild the extension"
    return reason


def cpu_kernel_why_not(x: torch.Tensor, missing: Optional[str]) -> Optional[str]:
    """The fused CPU kernels take float32 and float64 CPU tensors; ``missing`` is the
    extension's :func:`extension_reason`."""
    if x.device.type != "cpu":
        return f"it runs on CPU tensors, got {x.device.type}"
    if x.dtype not in (torch.float32, torch.float64):
        return f"it takes float32 or float64, got {x.dtype}"
    return missing


class Dispatcher:
    """Chooses a backend for one op."""

    def __init__(self, op: str, backends: list[Backend], preference: dict[str, list[str]]):
        self.op = op
        self.backends = {b.name: b for b in backends}
        self.preference = preference
        self._logged: set[tuple[str, str]] = set()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.backends)

    def why_not(self, name: str, **inputs) -> Optional[str]:
        return self.backends[name].why_not(**inputs)

    def resolve(self, requested: str, device_type: str, **inputs) -> str:
        """The backend to run: ``requested`` if it can, the first that can for ``"auto"``."""
        if requested == "auto":
            requested = os.environ.get(ENV_VAR, "auto").strip() or "auto"
        if requested != "auto":
            if requested not in self.backends:
                raise ValueError(
                    f"{self.op}: backend must be 'auto' or one of {sorted(self.backends)}, "
                    f"got {requested!r}"
                )
            reason = self.why_not(requested, **inputs)
            if reason is not None:
                raise BackendUnavailable(
                    f"{self.op}: backend {requested!r} cannot run here: {reason}"
                )
            return requested
        order = self.preference.get(device_type, self.preference["default"])
        for name in order:
            reason = self.why_not(name, **inputs)
            if reason is None:
                return name
            self._log_once(name, reason)
        raise BackendUnavailable(f"{self.op}: no backend can run on {device_type} inputs")

    def _log_once(self, name: str, reason: str) -> None:
        if (name, reason) not in self._logged:
            self._logged.add((name, reason))
            log.info("%s: skipping backend %r: %s", self.op, name, reason)
