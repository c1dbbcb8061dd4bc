"""Fused Triton kernel for the teaching objective of a softmax-regression learner.

It computes what :func:`dht_fast.references.linear.linear_objective_closed_form` computes (the
math is in that module's docstring) in one launch, one program per block of ``BLOCK_B`` samples:

1. ``z = x W^T``, ``u = x V^T`` and ``||x||^2``, looping over ``D`` in ``BLOCK_D`` chunks;
2. on the ``(BLOCK_B, BLOCK_C)`` tile: ``p = softmax(z + b)``, ``r = s p - y``,
   ``||g||^2 = ||r||^2 n``, ``<w - w*, g> = r . u``, the objective, ``a = 2 lr^2 n r - 2 lr u``
   and ``grad_y = (a . p) 1 - a``;
3. ``grad_x = W^T (s J a) - 2 lr V^T r + 2 lr^2 ||r||^2 x``, looping over ``D`` again.

Arithmetic is float32 whatever the input dtype, and results are stored in ``x``'s dtype. All
classes live in one tile, hence the limit ``C <= MAX_CLASSES``.
"""
import torch

from dht_fast.kernels._triton import IMPORT_ERROR as _IMPORT_ERROR
from dht_fast.kernels._triton import device_guard, tl, triton

MAX_CLASSES = 256
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

if triton is not None:

    @triton.jit
    def _linear_objective_fwd_kernel(
        x_ptr, y_ptr, w_ptr, v_ptr, b_ptr, vb_ptr,
        sq_ptr, inner_ptr, obj_ptr, gx_ptr, gy_ptr,
        B, D, C, lr,
        stride_xb, stride_xd, stride_yb, stride_yc,
        HAS_BIAS: tl.constexpr, SOFT_Y: tl.constexpr,
        WANT_GX: tl.constexpr, WANT_GY: tl.constexpr, XW_PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Samples ``[pid * BLOCK_B, (pid + 1) * BLOCK_B)``.

        x: ``(B, D)`` and y: ``(B,)`` int64 or ``(B, C)`` floating, both strided; W, V: ``(C, D)``
        and b, v: ``(C,)``, contiguous; outputs contiguous: ``(B,)`` x 3, ``(B, D)``, ``(B, C)``.
        """
        pid = tl.program_id(0)
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        # int64 offsets, since B * D can pass 2**31 in a large batch.
        rows64 = rows.to(tl.int64)
        cls = tl.arange(0, BLOCK_C)
        cls_ok = cls < C
        offs_d = tl.arange(0, BLOCK_D)

        # 1. z = x W^T, u = x V^T and ||x||^2, one D chunk at a time.
        z = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
        u = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
        xsq = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            d_ok = dd < D
            x_t = tl.load(x_ptr + rows64[:, None] * stride_xb + dd[None, :] * stride_xd,
                          mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            # (BLOCK_D, BLOCK_C) tiles of W^T and V^T; padded classes read as zero.
            wv_t = cls[None, :] * D + dd[:, None]
            wv_t_ok = d_ok[:, None] & cls_ok[None, :]
            w_t = tl.load(w_ptr + wv_t, mask=wv_t_ok, other=0.0).to(tl.float32)
            v_t = tl.load(v_ptr + wv_t, mask=wv_t_ok, other=0.0).to(tl.float32)
            z = tl.dot(x_t, w_t, acc=z, input_precision=XW_PRECISION)
            u = tl.dot(x_t, v_t, acc=u, input_precision=XW_PRECISION)
            xsq += tl.sum(x_t * x_t, axis=1)

        # 2. Bias, softmax (padded classes at -inf get p = 0) and targets.
        if HAS_BIAS:
            z += tl.load(b_ptr + cls, mask=cls_ok, other=0.0).to(tl.float32)[None, :]
            u += tl.load(vb_ptr + cls, mask=cls_ok, other=0.0).to(tl.float32)[None, :]
        z = tl.where(cls_ok[None, :], z, float("-inf"))
        e = tl.exp(z - tl.max(z, axis=1)[:, None])
        p = e / tl.sum(e, axis=1)[:, None]
        if SOFT_Y:
            t = tl.load(y_ptr + rows64[:, None] * stride_yb + cls[None, :] * stride_yc,
                        mask=row_ok[:, None] & cls_ok[None, :], other=0.0).to(tl.float32)
        else:
            label = tl.load(y_ptr + rows64 * stride_yb, mask=row_ok, other=-1)
            t = (cls[None, :] == label[:, None]).to(tl.float32)

        # 3. Per-sample scalars: ||g||^2 = ||r||^2 n, <w - w*, g> = r . u, the objective.
        s = tl.sum(t, axis=1)
        r = s[:, None] * p - t
        rsq = tl.sum(r * r, axis=1)
        n = xsq
        if HAS_BIAS:
            n += 1.0
        sq = rsq * n
        inner = tl.sum(r * u, axis=1)

        # 4. Store the scalars; they are converted to the output dtype on store.
        tl.store(sq_ptr + rows, sq, mask=row_ok)
        tl.store(inner_ptr + rows, inner, mask=row_ok)
        tl.store(obj_ptr + rows, lr * lr * sq - 2.0 * lr * inner, mask=row_ok)

        # 5. a = dobj/dr; grad_y = (a . p) 1 - a since dr_c/dy_k = p_c - [c = k].
        a = (2.0 * lr * lr) * n[:, None] * r - (2.0 * lr) * u
        pa = tl.sum(p * a, axis=1)
        if WANT_GY:
            tl.store(gy_ptr + rows64[:, None] * C + cls[None, :], pa[:, None] - a,
                     mask=row_ok[:, None] & cls_ok[None, :])

        # 6. grad_x = W^T q - 2 lr V^T r + 2 lr^2 ||r||^2 x, with q = s J a = s p (a - p . a).
        if WANT_GX:
            q = s[:, None] * p * (a - pa[:, None])
            r_v = (-2.0 * lr) * r
            x_coef = (2.0 * lr * lr) * rsq
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + offs_d
                d_ok = dd < D
                xd_ok = row_ok[:, None] & d_ok[None, :]
                x_t = tl.load(x_ptr + rows64[:, None] * stride_xb + dd[None, :] * stride_xd,
                              mask=xd_ok, other=0.0).to(tl.float32)
                wv = cls[:, None] * D + dd[None, :]
                wv_ok = cls_ok[:, None] & d_ok[None, :]
                w_c = tl.load(w_ptr + wv, mask=wv_ok, other=0.0).to(tl.float32)
                v_c = tl.load(v_ptr + wv, mask=wv_ok, other=0.0).to(tl.float32)
                # q and r are computed in float32: "ieee" keeps their bits, tf32 would not.
                gx = tl.dot(q, w_c, input_precision="ieee")
                gx = tl.dot(r_v, v_c, acc=gx, input_precision="ieee")
                gx += x_coef[:, None] * x_t
                tl.store(gx_ptr + rows64[:, None] * D + dd[None, :], gx, mask=xd_ok)

    # The kernel object tells whether TRITON_INTERPRET was set when it was defined.
    _INTERPRETED = not isinstance(_linear_objective_fwd_kernel, triton.runtime.JITFunction)


def triton_unsupported_reason(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Why :func:`linear_objective_triton` cannot run on these inputs, or None if it can.

    x: ``(B, D)``; weight: ``(C, D)``.
    """
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if x.dtype not in _DTYPES or weight.dtype not in _DTYPES:
        return (f"dtypes {x.dtype} (x) and {weight.dtype} (weight) are not both float32, "
                "float16 or bfloat16")
    if weight.shape[0] > MAX_CLASSES:
        return (f"{weight.shape[0]} classes exceed the kernel's limit of {MAX_CLASSES} "
                "(all classes share one tile); use the torch backend")
    if x.device != weight.device:
        return f"x is on {x.device} but weight is on {weight.device}"
    if not _INTERPRETED and x.device.type != "cuda":
        return (f"tensors are on {x.device}, not CUDA; to run the kernel in Triton's "
                "interpreter, set TRITON_INTERPRET=1 before dht_fast is imported")
    return None


def _check_args(x, y, weight, bias, vdiff, vbias):
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x (B, D) and weight (C, D), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    (b, _), c = x.shape, weight.shape[0]
    if c == 0:
        raise ValueError("weight has no classes")
    if vdiff.shape != weight.shape:
        raise ValueError(f"vdiff {tuple(vdiff.shape)} differs from weight {tuple(weight.shape)}")
    if (bias is None) != (vbias is None):
        raise ValueError("bias and vbias must be given together or both be None")
    if bias is not None and (bias.shape != (c,) or vbias.shape != (c,)):
        raise ValueError(f"expected bias and vbias ({c},), got {tuple(bias.shape)} and "
                         f"{tuple(vbias.shape)}")
    if y.dtype == torch.int64:
        if y.shape != (b,):
            raise ValueError(f"expected class indices ({b},), got {tuple(y.shape)}")
    elif y.is_floating_point():
        if y.shape != (b, c):
            raise ValueError(f"expected soft targets ({b}, {c}), got {tuple(y.shape)}")
    else:
        raise ValueError(f"y must be int64 class indices or floating soft targets, not {y.dtype}")


def _launch_config(b, d, c):
    """Block sizes and launch options: ``(BLOCK_B, BLOCK_D, BLOCK_C, num_warps, num_stages)``."""
    # tl.dot needs every dimension >= 16 on GPUs.
    block_c = max(16, triton.next_power_of_2(c))
    if _INTERPRETED:
        # The interpreter's cost grows with programs x loop steps, not with the tile size.
        block_b = min(128, max(16, triton.next_power_of_2(b)))
        return block_b, min(256, max(16, triton.next_power_of_2(d))), block_c, 4, 1
    # The z and u accumulators, (BLOCK_B, BLOCK_C) float32 each, live in registers; the wider
    # the class tile, the fewer rows per program, and two stages keep shared memory in bounds.
    if block_c <= 32:
        return 64, 64, block_c, 4, 3
    if block_c <= 128:
        return 32, 64, block_c, 4, 2
    return 16, 32, block_c, 8, 2


def linear_objective_triton(x, y, weight, bias, vdiff, vbias, lr, want_grad_x, want_grad_y):
    """The teaching objective of a softmax learner, fused in one Triton launch.

    Same arguments, shapes and returns as
    :func:`dht_fast.references.linear.linear_objective_closed_form`: x ``(B, D)``; y ``(B,)``
    int64 or ``(B, C)`` floating; weight and vdiff ``(C, D)``; bias and vbias ``(C,)`` or None.
    Returns ``(grad_norm_sq (B,), inner (B,), objective (B,), grad_x (B, D) | None,
    grad_y (B, C) | None)`` in ``x``'s dtype. A class index outside ``[0, C)`` gives a zero
    target row rather than an error (checking would synchronize with the device).

    Raises:
        NotImplementedError: with :func:`triton_unsupported_reason`'s message.
        ValueError: on inconsistent shapes.
    """
    reason = triton_unsupported_reason(x, weight)
    if reason is not None:
        raise NotImplementedError(f"linear_objective_triton: {reason}")
    _check_args(x, y, weight, bias, vdiff, vbias)
    (b, d), c = x.shape, weight.shape[0]
    # Triton's interpreter truncates float32 to bfloat16 on store where GPUs round to nearest,
    # which doubles the error; there the kernel stores float32 and torch rounds.
    store_dtype = torch.float32 if _INTERPRETED and x.dtype == torch.bfloat16 else x.dtype
    sq, inner, objective = (x.new_empty(b, dtype=store_dtype) for _ in range(3))
    grad_x = x.new_empty(b, d, dtype=store_dtype) if want_grad_x else None
    grad_y = x.new_empty(b, c, dtype=store_dtype) if want_grad_y else None
    outputs = (sq, inner, objective, grad_x, grad_y)
    if b > 0:
        _launch(x, y, weight, bias, vdiff, vbias, lr, outputs)
    return tuple(None if o is None else o.to(x.dtype) for o in outputs)


def _launch(x, y, weight, bias, vdiff, vbias, lr, outputs):
    """One launch over the ``B > 0`` samples, writing into ``outputs`` (grads may be None)."""
    sq, inner, objective, grad_x, grad_y = outputs
    want_grad_x, want_grad_y = grad_x is not None, grad_y is not None
    (b, d), c = x.shape, weight.shape[0]
    weight, vdiff = weight.contiguous(), vdiff.contiguous()
    has_bias = bias is not None
    if has_bias:
        bias, vbias = bias.contiguous(), vbias.contiguous()
    soft = y.dtype != torch.int64
    block_b, block_d, block_c, num_warps, num_stages = _launch_config(b, d, c)
    # Inputs with at most 10 mantissa bits are exact in tf32, so pass 1 may use tensor cores.
    narrow = (torch.float16, torch.bfloat16)
    xw_precision = "tf32" if x.dtype in narrow and weight.dtype in narrow and \
        vdiff.dtype in narrow else "ieee"
    # Unused pointer arguments get any tensor: the constexpr flags keep the kernel off them.
    with device_guard(x):
        _linear_objective_fwd_kernel[(triton.cdiv(b, block_b),)](
            x, y, weight, vdiff, bias if has_bias else weight, vbias if has_bias else vdiff,
            sq, inner, objective, grad_x if want_grad_x else sq, grad_y if want_grad_y else sq,
            b, d, c, float(lr),
            x.stride(0), x.stride(1), y.stride(0), y.stride(1) if soft else 0,
            HAS_BIAS=has_bias, SOFT_Y=soft, WANT_GX=want_grad_x, WANT_GY=want_grad_y,
            XW_PRECISION=xw_precision, BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_C=block_c,
            num_warps=num_warps, num_stages=num_stages,
        )
