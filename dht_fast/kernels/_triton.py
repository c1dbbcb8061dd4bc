"""What every Triton kernel module here shares: the guarded import and the launch device.

``triton`` and ``tl`` are None, and ``IMPORT_ERROR`` says why, where triton is not importable, so
the package imports and its ops fall back to other backends there.
"""
import contextlib

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:
    triton = tl = None
    IMPORT_ERROR = f"triton is not importable ({exc})"
else:
    IMPORT_ERROR = None


def device_guard(t: torch.Tensor):
    """Makes ``t``'s GPU the current device: Triton launches on the current device and its
    stream, not on the device of the tensors it is given."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
