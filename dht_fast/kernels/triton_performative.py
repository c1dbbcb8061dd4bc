"""Triton kernels for performative teaching: the hypersphere-cap projection and the solve.

They compute what :mod:`dht_fast.references.performative` computes (the math and the conventions
at ambiguous points are there), one program per block of ``BLOCK_B`` rows. Rows of any length
are swept in ``BLOCK_D`` chunks; the running iterate and ``grad_x`` live in float32 scratch rows
in global memory (L2-resident for the sizes this is for), and every per-row reduction is one
sweep. The solve, per step:

1. ``z = x W^T``, ``u = x V^T`` (``tl.dot`` over D chunks) and the softmax middle on the
   ``(BLOCK_B, BLOCK_C)`` class tile: the objective and the coefficients of ``grad_x``;
2. the best iterate so far is copied out; ``grad_x = q W + (-2 lr r) V + 2 lr^2 ||r||^2 x``;
3. the tangent component of ``grad_x`` and the normalized step of length ``step_size * R``;
4. the projection back onto the cap (three sweeps: chord and cosine, the orthogonal part, the
   result).

Arithmetic is float32 whatever the input dtype; results are stored in ``feats``' dtype. All
classes share one tile, hence ``C <= MAX_CLASSES``. The final normalization of the reference is
left out: the result's norm is ``||a||`` to float32 rounding.
"""
import torch

from dht_fast.kernels._triton import IMPORT_ERROR as _IMPORT_ERROR
from dht_fast.kernels._triton import device_guard, tl, triton
from dht_fast.references.performative import ANTIPODAL_ULPS

MAX_CLASSES = 256
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TOL = ANTIPODAL_ULPS * torch.finfo(torch.float32).eps

if triton is not None:

    @triton.jit
    def _anchor_stats(a_ptr, rows64, row_ok, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
        """Per row: ``||a||^2``, ``k = argmin_k |a_k|`` (first on ties) and ``a_k``."""
        offs_d = tl.arange(0, BLOCK_D)
        rsq = tl.zeros((BLOCK_B,), dtype=tl.float32)
        best = tl.full((BLOCK_B,), float("inf"), dtype=tl.float32)
        kidx = tl.zeros((BLOCK_B,), dtype=tl.int32)
        ak = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            ok = row_ok[:, None] & (dd < D)[None, :]
            a = tl.load(a_ptr + rows64[:, None] * D + dd[None, :], mask=ok, other=0.0)
            a = a.to(tl.float32)
            rsq += tl.sum(a * a, axis=1)
            absa = tl.where(ok, tl.abs(a), float("inf"))
            m = tl.min(absa, axis=1)
            # The first index attaining the chunk's minimum, and the value there.
            idx = tl.min(tl.where(absa == m[:, None], dd[None, :], D), axis=1)
            val = tl.sum(tl.where(dd[None, :] == idx[:, None], a, 0.0), axis=1)
            upd = m < best
            best = tl.where(upd, m, best)
            kidx = tl.where(upd, idx, kidx)
            ak = tl.where(upd, val, ak)
        return rsq, kidx, ak

    @triton.jit
    def _project_rows(src_ptr, a_ptr, dst_ptr, rows64, row_ok, D, ysq, rad, kidx, ahk, eps,
                      tol, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
        """dst = closest point of each row's cap to src (float32 rows; dst may be src).

        ysq: ``||src||^2``; rad: ``||a||``; kidx, ahk: the axis ``argmin |a^_k|`` and ``a^_k``.
        """
        offs_d = tl.arange(0, BLOCK_D)
        ny = tl.sqrt(ysq)
        has_y = ny > 0
        inv_y = 1.0 / tl.where(has_y, ny, 1.0)
        inv_r = 1.0 / tl.where(rad > 0, rad, 1.0)

        # 1. Chord^2 and cosine between x^ and a^ (x^ = a^ for a zero row).
        d2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        c = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            ok = row_ok[:, None] & (dd < D)[None, :]
            off = rows64[:, None] * D + dd[None, :]
            ah = tl.load(a_ptr + off, mask=ok, other=0.0).to(tl.float32) * inv_r[:, None]
            xh = tl.load(src_ptr + off, mask=ok, other=0.0).to(tl.float32) * inv_y[:, None]
            xh = tl.where(has_y[:, None], xh, ah)
            d2 += tl.sum((xh - ah) * (xh - ah), axis=1)
            c += tl.sum(xh * ah, axis=1)

        # 2. o = x^ - c a^, its norm after a second Gram-Schmidt pass against a^.
        oo = tl.zeros((BLOCK_B,), dtype=tl.float32)
        oa = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            ok = row_ok[:, None] & (dd < D)[None, :]
            off = rows64[:, None] * D + dd[None, :]
            ah = tl.load(a_ptr + off, mask=ok, other=0.0).to(tl.float32) * inv_r[:, None]
            xh = tl.load(src_ptr + off, mask=ok, other=0.0).to(tl.float32) * inv_y[:, None]
            xh = tl.where(has_y[:, None], xh, ah)
            o = xh - c[:, None] * ah
            oo += tl.sum(o * o, axis=1)
            oa += tl.sum(o * ah, axis=1)
        on = tl.sqrt(tl.maximum(oo - oa * oa, 0.0))
        antipodal = on <= tol
        inv_on = 1.0 / tl.where(antipodal, 1.0, on)
        inv_e = 1.0 / tl.sqrt(tl.maximum(1.0 - ahk * ahk, 1e-30))
        inside = (d2 <= eps * eps) | (eps >= 2.0)
        e2 = tl.minimum(eps, 2.0)
        cos_t = 1.0 - 0.5 * e2 * e2
        sin_t = e2 * tl.sqrt(tl.maximum(1.0 - 0.25 * e2 * e2, 0.0))
        # In the solve dst is src: every thread must have read its src chunks in sweeps 1 and 2
        # before any thread overwrites them.
        tl.debug_barrier()

        # 3. z = R x^ inside the cap, else R (cos a^ + sin e) on its boundary.
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            ok = row_ok[:, None] & (dd < D)[None, :]
            off = rows64[:, None] * D + dd[None, :]
            ah = tl.load(a_ptr + off, mask=ok, other=0.0).to(tl.float32) * inv_r[:, None]
            xh = tl.load(src_ptr + off, mask=ok, other=0.0).to(tl.float32) * inv_y[:, None]
            xh = tl.where(has_y[:, None], xh, ah)
            e_fixed = (tl.where(dd[None, :] == kidx[:, None], 1.0, 0.0) - ahk[:, None] * ah)
            e_fixed = e_fixed * inv_e[:, None]
            e_own = (xh - c[:, None] * ah - oa[:, None] * ah) * inv_on[:, None]
            e = tl.where(antipodal[:, None], e_fixed, e_own)
            bnd = cos_t[:, None] * ah + sin_t[:, None] * e
            bnd = tl.where(D == 1, ah, bnd)
            z = rad[:, None] * tl.where(inside[:, None], xh, bnd)
            tl.store(dst_ptr + off, z.to(dst_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _sphere_project_kernel(x_ptr, a_ptr, eps_ptr, out_ptr, B, D, tol,
                               BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
        """x, anchor, out: ``(B, D)`` contiguous; eps: ``(B,)``."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        rows64 = rows.to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)

        # 1. Norms and the fixed axis; x is read as float32 by _project_rows via out.
        rsq, kidx, ak = _anchor_stats(a_ptr, rows64, row_ok, D, BLOCK_B, BLOCK_D)
        ysq = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            ok = row_ok[:, None] & (dd < D)[None, :]
            x = tl.load(x_ptr + rows64[:, None] * D + dd[None, :], mask=ok, other=0.0)
            ysq += tl.sum(x.to(tl.float32) * x.to(tl.float32), axis=1)
        rad = tl.sqrt(rsq)
        ahk = ak / tl.where(rad > 0, rad, 1.0)
        eps = tl.load(eps_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)

        # 2. Project.
        _project_rows(x_ptr, a_ptr, out_ptr, rows64, row_ok, D, ysq, rad, kidx, ahk, eps, tol,
                      BLOCK_B, BLOCK_D)

    @triton.jit
    def _logits(x_ptr, w_ptr, v_ptr, rows64, row_ok, D, C, BLOCK_B: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
        """``z = x W^T``, ``u = x V^T`` ``(BLOCK_B, BLOCK_C)`` and ``||x||^2`` of float32 rows."""
        offs_d = tl.arange(0, BLOCK_D)
        cls = tl.arange(0, BLOCK_C)
        z = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
        u = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
        xsq = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            d_ok = dd < D
            x = tl.load(x_ptr + rows64[:, None] * D + dd[None, :],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            wv = cls[None, :] * D + dd[:, None]
            wv_ok = d_ok[:, None] & (cls < C)[None, :]
            w_t = tl.load(w_ptr + wv, mask=wv_ok, other=0.0).to(tl.float32)
            v_t = tl.load(v_ptr + wv, mask=wv_ok, other=0.0).to(tl.float32)
            z = tl.dot(x, w_t, acc=z, input_precision="ieee")
            u = tl.dot(x, v_t, acc=u, input_precision="ieee")
            xsq += tl.sum(x * x, axis=1)
        return z, u, xsq

    @triton.jit
    def _middle(z, u, xsq, t, s, b_ptr, vb_ptr, C, lr, HAS_BIAS: tl.constexpr,
                BLOCK_C: tl.constexpr):
        """Objective ``(BLOCK_B,)`` and grad_x coefficients: q, -2 lr r ``(BLOCK_B, BLOCK_C)``,
        and the x coefficient ``2 lr^2 ||r||^2``."""
        cls = tl.arange(0, BLOCK_C)
        cls_ok = cls < C
        n = xsq
        if HAS_BIAS:
            z += tl.load(b_ptr + cls, mask=cls_ok, other=0.0).to(tl.float32)[None, :]
            u += tl.load(vb_ptr + cls, mask=cls_ok, other=0.0).to(tl.float32)[None, :]
            n += 1.0
        z = tl.where(cls_ok[None, :], z, float("-inf"))
        e = tl.exp(z - tl.max(z, axis=1)[:, None])
        p = e / tl.sum(e, axis=1)[:, None]
        r = s[:, None] * p - t
        rsq = tl.sum(r * r, axis=1)
        obj = lr * lr * (rsq * n) - 2.0 * lr * tl.sum(r * u, axis=1)
        a = (2.0 * lr * lr) * n[:, None] * r - (2.0 * lr) * u
        pa = tl.sum(p * a, axis=1)
        q = s[:, None] * p * (a - pa[:, None])
        return obj, q, (-2.0 * lr) * r, (2.0 * lr * lr) * rsq

    @triton.jit
    def _keep_best(cur_ptr, out_ptr, rows64, improved, D, BLOCK_D: tl.constexpr):
        offs_d = tl.arange(0, BLOCK_D)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            off = rows64[:, None] * D + dd[None, :]
            ok = improved[:, None] & (dd < D)[None, :]
            x = tl.load(cur_ptr + off, mask=ok, other=0.0)
            tl.store(out_ptr + off, x.to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _performative_solve_kernel(
        a_ptr, y_ptr, w_ptr, v_ptr, b_ptr, vb_ptr, eps_ptr, out_ptr, cur_ptr, g_ptr,
        B, D, C, K, lr, step, tol,
        HAS_BIAS: tl.constexpr, SOFT_Y: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Rows ``[pid * BLOCK_B, (pid + 1) * BLOCK_B)``, all contiguous.

        a, out: ``(B, D)``; y: ``(B,)`` int64 or ``(B, C)``; W, V: ``(C, D)``; b, v: ``(C,)``;
        eps: ``(B,)``; cur, g: ``(B, D)`` float32 scratch (iterate, gradient).
        """
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        rows64 = rows.to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        cls = tl.arange(0, BLOCK_C)

        # 1. Anchor statistics, x_0 = a, targets, cap radii.
        rsq, kidx, ak = _anchor_stats(a_ptr, rows64, row_ok, D, BLOCK_B, BLOCK_D)
        rad = tl.sqrt(rsq)
        ahk = ak / tl.where(rad > 0, rad, 1.0)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            ok = row_ok[:, None] & (dd < D)[None, :]
            off = rows64[:, None] * D + dd[None, :]
            tl.store(cur_ptr + off, tl.load(a_ptr + off, mask=ok, other=0.0).to(tl.float32),
                     mask=ok)
        # The scratch rows are read back by other threads of the program than wrote them (other
        # layouts, cp.async prefetches of the next loop): a GPU orders those global accesses only
        # at a barrier, so one follows every sweep that writes cur or g.
        tl.debug_barrier()
        if SOFT_Y:
            t = tl.load(y_ptr + rows64[:, None] * C + cls[None, :],
                        mask=row_ok[:, None] & (cls < C)[None, :], other=0.0).to(tl.float32)
        else:
            label = tl.load(y_ptr + rows64, mask=row_ok, other=-1)
            t = (cls[None, :] == label[:, None]).to(tl.float32)
        s = tl.sum(t, axis=1)
        eps = tl.load(eps_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        best = tl.full((BLOCK_B,), float("inf"), dtype=tl.float32)

        for _ in range(0, K):
            # 2. Objective at the iterate; keep it if it is the best so far.
            z, u, xsq = _logits(cur_ptr, w_ptr, v_ptr, rows64, row_ok, D, C, BLOCK_B, BLOCK_D,
                                BLOCK_C)
            obj, q, rv, xcoef = _middle(z, u, xsq, t, s, b_ptr, vb_ptr, C, lr, HAS_BIAS,
                                        BLOCK_C)
            improved = row_ok & (obj < best)
            best = tl.where(improved, obj, best)
            _keep_best(cur_ptr, out_ptr, rows64, improved, D, BLOCK_D)

            # 3. grad_x = q W + rv V + xcoef x, and its radial part g . x.
            gxx = tl.zeros((BLOCK_B,), dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + offs_d
                d_ok = dd < D
                ok = row_ok[:, None] & d_ok[None, :]
                off = rows64[:, None] * D + dd[None, :]
                x = tl.load(cur_ptr + off, mask=ok, other=0.0)
                wv = cls[:, None] * D + dd[None, :]
                wv_ok = (cls < C)[:, None] & d_ok[None, :]
                w_c = tl.load(w_ptr + wv, mask=wv_ok, other=0.0).to(tl.float32)
                v_c = tl.load(v_ptr + wv, mask=wv_ok, other=0.0).to(tl.float32)
                gx = tl.dot(q, w_c, input_precision="ieee")
                gx = tl.dot(rv, v_c, acc=gx, input_precision="ieee")
                gx += xcoef[:, None] * x
                tl.store(g_ptr + off, gx, mask=ok)
                gxx += tl.sum(gx * x, axis=1)
            tl.debug_barrier()
            radial = gxx / tl.where(xsq > 0, xsq, 1.0)

            # 4. Tangent component and its norm; then the step x - step R g_t / ||g_t||.
            gtsq = tl.zeros((BLOCK_B,), dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + offs_d
                ok = row_ok[:, None] & (dd < D)[None, :]
                off = rows64[:, None] * D + dd[None, :]
                gt = tl.load(g_ptr + off, mask=ok, other=0.0) - radial[:, None] * \
                    tl.load(cur_ptr + off, mask=ok, other=0.0)
                tl.store(g_ptr + off, gt, mask=ok)
                gtsq += tl.sum(gt * gt, axis=1)
            tl.debug_barrier()
            gn = tl.sqrt(gtsq)
            scale = step * rad / tl.where(gn > 0, gn, 1.0)
            ysq = tl.zeros((BLOCK_B,), dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + offs_d
                ok = row_ok[:, None] & (dd < D)[None, :]
                off = rows64[:, None] * D + dd[None, :]
                x = tl.load(cur_ptr + off, mask=ok, other=0.0) - scale[:, None] * \
                    tl.load(g_ptr + off, mask=ok, other=0.0)
                tl.store(cur_ptr + off, x, mask=ok)
                ysq += tl.sum(x * x, axis=1)
            tl.debug_barrier()

            # 5. Back onto the cap, in place.
            _project_rows(cur_ptr, a_ptr, cur_ptr, rows64, row_ok, D, ysq, rad, kidx, ahk, eps,
                          tol, BLOCK_B, BLOCK_D)
            tl.debug_barrier()

        # 6. The last iterate's objective.
        z, u, xsq = _logits(cur_ptr, w_ptr, v_ptr, rows64, row_ok, D, C, BLOCK_B, BLOCK_D,
                            BLOCK_C)
        obj, q, rv, xcoef = _middle(z, u, xsq, t, s, b_ptr, vb_ptr, C, lr, HAS_BIAS, BLOCK_C)
        _keep_best(cur_ptr, out_ptr, rows64, row_ok & (obj < best), D, BLOCK_D)

    # The kernel object tells whether TRITON_INTERPRET was set when it was defined.
    _INTERPRETED = not isinstance(_performative_solve_kernel, triton.runtime.JITFunction)


def triton_unsupported_reason(x: torch.Tensor, weight: torch.Tensor | None = None) -> str | None:
    """Why the kernels cannot run on these inputs, or None. x: ``(B, D)``; weight: ``(C, D)``."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if x.dtype not in _DTYPES:
        return f"it takes float32, float16 or bfloat16, got {x.dtype}"
    if weight is not None:
        if weight.dtype not in _DTYPES:
            return f"it takes a float32, float16 or bfloat16 weight, got {weight.dtype}"
        if weight.shape[0] > MAX_CLASSES:
            return (f"{weight.shape[0]} classes exceed the kernel's limit of {MAX_CLASSES} "
                    "(all classes share one tile); use the torch backend")
    if not _INTERPRETED and x.device.type != "cuda":
        return (f"tensors are on {x.device}, not CUDA; to run the kernel in Triton's "
                "interpreter, set TRITON_INTERPRET=1 before dht_fast is imported")
    return None


def _blocks(b, d, c):
    """``(BLOCK_B, BLOCK_D, BLOCK_C, num_warps)``; tl.dot needs every dimension >= 16."""
    block_c = max(16, triton.next_power_of_2(c))
    if _INTERPRETED:
        # The interpreter's cost grows with programs x loop steps, not with the tile size.
        return (min(64, max(16, triton.next_power_of_2(b))),
                min(256, max(16, triton.next_power_of_2(d))), block_c, 4)
    if block_c <= 64:
        return 32, 64, block_c, 4
    return 16, 32, block_c, 8


def sphere_project_triton(x, anchor, eps):
    """Closest cap points: x, anchor ``(B, D)``; eps ``(B,)``. Returns ``(B, D)`` in x's dtype."""
    reason = triton_unsupported_reason(x)
    if reason is not None:
        raise NotImplementedError(f"sphere_project_triton: {reason}")
    b, d = x.shape
    out = torch.empty((b, d), dtype=x.dtype, device=x.device)
    if b == 0:
        return out
    block_b, block_d, _, num_warps = _blocks(b, d, 1)
    with device_guard(x):
        _sphere_project_kernel[(triton.cdiv(b, block_b),)](
            x.contiguous(), anchor.contiguous(), eps.contiguous(), out, b, d, _TOL,
            BLOCK_B=block_b, BLOCK_D=block_d, num_warps=num_warps,
        )
    return out


def performative_solve_triton(feats, y, weight, bias, vdiff, vbias, eps, lr, steps, step_size):
    """The solve of :func:`dht_fast.references.performative.performative_solve_ref` in one launch.

    Same arguments and shapes: feats ``(B, D)``; y ``(B,)`` int64 or ``(B, C)``; weight, vdiff
    ``(C, D)``; bias, vbias ``(C,)`` or None; eps ``(B,)``. Returns ``(B, D)`` in feats' dtype.
    """
    reason = triton_unsupported_reason(feats, weight)
    if reason is not None:
        raise NotImplementedError(f"performative_solve_triton: {reason}")
    (b, d), c = feats.shape, weight.shape[0]
    out = torch.empty((b, d), dtype=feats.dtype, device=feats.device)
    if b == 0:
        return out
    cur = torch.empty((b, d), dtype=torch.float32, device=feats.device)
    g = torch.empty_like(cur)
    has_bias = bias is not None
    soft = y.dtype != torch.int64
    weight, vdiff = weight.contiguous(), vdiff.contiguous()
    block_b, block_d, block_c, num_warps = _blocks(b, d, c)
    # Unused pointer arguments get any tensor: the constexpr flags keep the kernel off them.
    with device_guard(feats):
        _performative_solve_kernel[(triton.cdiv(b, block_b),)](
            feats.contiguous(), y.contiguous(), weight, vdiff,
            bias.contiguous() if has_bias else weight, vbias.contiguous() if has_bias else vdiff,
            eps.contiguous(), out, cur, g, b, d, c, int(steps), float(lr), float(step_size),
            _TOL, HAS_BIAS=has_bias, SOFT_Y=soft, BLOCK_B=block_b, BLOCK_D=block_d,
            BLOCK_C=block_c, num_warps=num_warps,
        )
    return out
