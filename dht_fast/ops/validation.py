"""Input checks with messages that name the argument, what was expected and what was received.

Value checks (NaN/Inf, label range) need one device-to-host sync; they are skipped while
``torch.compile`` traces and when ``DHT_FAST_CHECK_VALUES=0`` (for hot loops on trusted data).
"""
from __future__ import annotations

import math
import os

import torch

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def values_checked() -> bool:
    if os.environ.get("DHT_FAST_CHECK_VALUES", "1") == "0":
        return False
    return not torch.compiler.is_compiling()


def check_tensor(name: str, t, *, ndim: int | None = None, dtypes=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {_shape(t)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")


def check_shape(name: str, t: torch.Tensor, expected: tuple, meaning: str) -> None:
    if tuple(t.shape) != tuple(expected):
        want = "(" + ", ".join(str(s) for s in expected) + ")"
        raise ValueError(f"{name} must have shape {meaning} = {want}, got {_shape(t)}")


def check_same(names_tensors, *, what=("dtype", "device")) -> None:
    """All tensors share dtype and device (None entries are ignored)."""
    items = [(n, t) for n, t in names_tensors if t is not None]
    ref_name, ref = items[0]
    for name, t in items[1:]:
        for attr in what:
            if getattr(t, attr) != getattr(ref, attr):
                raise ValueError(
                    f"{name} has {attr} {getattr(t, attr)} but {ref_name} has "
                    f"{getattr(ref, attr)}; they must match"
                )


def check_lr(lr) -> float:
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr must be a float, got a tensor of shape {_shape(lr)}")
        lr = lr.item()
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be finite and > 0, got {lr}")
    return lr


def check_values(finite: list[tuple[str, torch.Tensor]], labels=None, num_classes=None) -> None:
    """One sync for every value check: finite inputs, labels in ``[0, num_classes)``."""
    if not values_checked():
        return
    # min and max are finite iff every element is (NaN propagates through both), and two
    # reductions cost a fraction of isfinite(t).all(), which writes a mask as large as t.
    flags = [torch.isfinite(torch.stack(torch.aminmax(t))).all()
             for _, t in finite if t is not None and t.numel()]
    names = [n for n, t in finite if t is not None and t.numel()]
    if labels is not None and labels.numel():
        flags.append(((labels >= 0) & (labels < num_classes)).all())
        names.append("y")
    if not flags:
        return
    ok = torch.stack(flags).cpu().tolist()
    for name, good in zip(names, ok):
        if good:
            continue
        if name == "y" and labels is not None:
            lo, hi = int(labels.min()), int(labels.max())
            raise ValueError(
                f"y holds class indices in [{lo}, {hi}]; expected values in [0, {num_classes})"
            )
        raise ValueError(f"{name} contains NaN or Inf")
