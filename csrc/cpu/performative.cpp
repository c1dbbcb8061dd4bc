// Fused CPU kernels for performative teaching: the hypersphere-cap projection and the per-row
// constrained greedy solve. dht_fast/references/performative.py states the math and the
// conventions at ambiguous points; this file (with sphere_cap.h) follows it operation for
// operation.
//
// Per row, with M = [W; V] (2C, D): each of the K steps is one sweep of M for (z, u) = M x + m,
// the O(C) softmax middle, one sweep of M^T for grad_x, then O(D) work for the tangent step and
// the projection. Rows go kBlock at a time so that every vector of M loaded from cache feeds
// kBlock FMAs, and the block's iterates stay in L1 for all K steps. W and V are copied once into
// rows padded to a whole number of vectors, so no loop needs a scalar tail.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "sphere_cap.h"

namespace {

using namespace dht_fast_cap;

// Rows per block: kBlock accumulators and two rows of M stay in the registers.
constexpr int64_t kBlock = 8;

template <typename T>
struct SolveArgs {
  const T* feats;      // (B, D)
  const int64_t* lab;  // (B,) class indices, or null
  const T* soft;       // (B, C) soft targets, or null
  const T* w;          // (C, Dp) padded copy of W
  const T* v;          // (C, Dp) padded copy of V = W - W*
  const T* b;          // (C,) or null
  const T* vb;         // (C,) or null
  const T* eps;        // (B,)
  T lr, step;
  int64_t B, D, Dp, C, K;
  T* out;              // (B, D)
};

// Per-thread buffers for one block of kBlock rows.
template <typename T>
struct Scratch {
  std::vector<T> x, ah, gx, buf, zu, coef, classes;
  Scratch(int64_t dp, int64_t c)
      : x(kBlock * dp), ah(kBlock * dp), gx(kBlock * dp), buf(2 * dp), zu(kBlock * 2 * c),
        coef(2 * c * kBlock), classes(3 * c) {}
};

// zu[r][c] = W_c . x_r, zu[r][C + c] = V_c . x_r for the kBlock rows of x.
template <typename T>
void forward_products(const SolveArgs<T>& P, const T* x, T* zu) {
  for (int64_t c = 0; c < P.C; ++c) {
    const T* wc = P.w + c * P.Dp;
    const T* vc = P.v + c * P.Dp;
    Vec<T> az[kBlock] = {}, au[kBlock] = {};
    for (int64_t d = 0; d < P.Dp; d += kLanes<T>) {
      Vec<T> wv = load(wc + d), vv = load(vc + d);
      for (int64_t r = 0; r < kBlock; ++r) {
        Vec<T> xv = load(x + r * P.Dp + d);
        az[r] += wv * xv;
        au[r] += vv * xv;
      }
    }
    for (int64_t r = 0; r < kBlock; ++r) {
      zu[r * 2 * P.C + c] = lane_sum<T>(az[r]);
      zu[r * 2 * P.C + P.C + c] = lane_sum<T>(au[r]);
    }
  }
}

// gx_r = sum_c coef[c][r] W_c + coef[C + c][r] V_c + xcoef_r x_r.
template <typename T>
void backward_products(const SolveArgs<T>& P, const T* x, const T* coef, const T* xcoef,
                       T* gx) {
  for (int64_t d = 0; d < P.Dp; d += kLanes<T>) {
    Vec<T> acc[kBlock];
    for (int64_t r = 0; r < kBlock; ++r) acc[r] = xcoef[r] * load(x + r * P.Dp + d);
    for (int64_t c = 0; c < P.C; ++c) {
      Vec<T> wv = load(P.w + c * P.Dp + d), vv = load(P.v + c * P.Dp + d);
      const T* qc = coef + c * kBlock;
      const T* rc = coef + (P.C + c) * kBlock;
      for (int64_t r = 0; r < kBlock; ++r) acc[r] += qc[r] * wv + rc[r] * vv;
    }
    for (int64_t r = 0; r < kBlock; ++r) store(gx + r * P.Dp + d, acc[r]);
  }
}

// The O(C) middle for row i: its objective; with `grad`, the coefficients of grad_x in column r
// of coef (q = s J a for W, -2 lr r for V) and of x in xcoef[r]. Follows linear.py's closed form.
// work: 3 C scratch values.
template <typename T>
T row_objective(const SolveArgs<T>& P, int64_t i, const T* zu, T xsq, bool grad, T* coef,
                T* xcoef, int64_t r, T* work) {
  const int64_t C = P.C;
  const T lr = P.lr;
  T zmax = -std::numeric_limits<T>::infinity();
  T* p = work;
  T* t = work + C;
  T* u = work + 2 * C;
  for (int64_t c = 0; c < C; ++c) {
    p[c] = zu[c] + (P.b ? P.b[c] : T(0));
    u[c] = zu[C + c] + (P.vb ? P.vb[c] : T(0));
    t[c] = P.soft ? P.soft[i * C + c] : T(c == P.lab[i] ? 1 : 0);
    zmax = std::max(zmax, p[c]);
  }
  T den = 0, s = 0;
  for (int64_t c = 0; c < C; ++c) {
    p[c] = std::exp(p[c] - zmax);
    den += p[c];
    s += t[c];
  }
  T rsq = 0, inner = 0;
  for (int64_t c = 0; c < C; ++c) {
    p[c] /= den;
    T rc = s * p[c] - t[c];
    t[c] = rc;  // t now holds r
    rsq += rc * rc;
    inner += rc * u[c];
  }
  T n = xsq + (P.b ? T(1) : T(0));
  T obj = lr * lr * (rsq * n) - T(2) * lr * inner;
  if (grad) {
    T pa = 0;
    for (int64_t c = 0; c < C; ++c) {
      u[c] = T(2) * lr * lr * n * t[c] - T(2) * lr * u[c];  // u now holds a
      pa += p[c] * u[c];
    }
    for (int64_t c = 0; c < C; ++c) {
      coef[c * kBlock + r] = s * p[c] * (u[c] - pa);
      coef[(C + c) * kBlock + r] = T(-2) * lr * t[c];
    }
    xcoef[r] = T(2) * lr * lr * rsq;
  }
  return obj;
}

template <typename T>
void solve_block(const SolveArgs<T>& P, int64_t i0, Scratch<T>& S) {
  const int64_t Dp = P.Dp, D = P.D, C = P.C;
  const int64_t nrows = std::min(kBlock, P.B - i0);
  T radius[kBlock] = {}, best[kBlock] = {}, xcoef[kBlock] = {};
  // 1. Load the anchors (padding rows and columns stay zero); x_0 = a.
  std::fill(S.x.begin(), S.x.end(), T(0));
  std::fill(S.ah.begin(), S.ah.end(), T(0));
  std::fill(S.coef.begin(), S.coef.end(), T(0));
  for (int64_t r = 0; r < nrows; ++r) {
    T* xr = S.x.data() + r * Dp;
    std::copy(P.feats + (i0 + r) * D, P.feats + (i0 + r + 1) * D, xr);
    radius[r] = std::sqrt(dot(xr, xr, Dp));
    T den = radius[r] > 0 ? radius[r] : T(1);
    for (int64_t d = 0; d < Dp; ++d) S.ah[r * Dp + d] = xr[d] / den;
  }
  for (int64_t k = 0; k <= P.K; ++k) {
    const bool last = k == P.K;
    // 2. Logits and target directions of the whole block; objectives, best iterates so far.
    forward_products(P, S.x.data(), S.zu.data());
    for (int64_t r = 0; r < nrows; ++r) {
      const T* xr = S.x.data() + r * Dp;
      T obj = row_objective(P, i0 + r, S.zu.data() + r * 2 * C, dot(xr, xr, Dp), !last,
                            S.coef.data(), xcoef, r, S.classes.data());
      if (k == 0 || obj < best[r]) {
        best[r] = obj;
        std::copy(xr, xr + D, P.out + (i0 + r) * D);
      }
    }
    if (last) break;
    // 3. grad_x of the block.
    backward_products(P, S.x.data(), S.coef.data(), xcoef, S.gx.data());
    // 4. Per row: normalized tangent step of length step * R, then back onto the cap.
    for (int64_t r = 0; r < nrows; ++r) {
      T* xr = S.x.data() + r * Dp;
      T* gr = S.gx.data() + r * Dp;
      T xx = dot(xr, xr, Dp);
      T radial = dot(gr, xr, Dp) / (xx > 0 ? xx : T(1));
      axpby(T(1), gr, -radial, xr, gr, Dp);
      T gn = std::sqrt(dot(gr, gr, Dp));
      T den = gn > 0 ? gn : T(1);
      T scale = P.step * radius[r];
      for (int64_t d = 0; d < Dp; ++d) xr[d] = xr[d] - scale * (gr[d] / den);
      project_row(xr, S.ah.data() + r * Dp, radius[r], Cap<T>(P.eps[i0 + r]), D, Dp, xr,
                  S.buf.data());
    }
  }
}

int64_t padded(int64_t d, int64_t lanes) { return (d + lanes - 1) / lanes * lanes; }

// (C, D) -> (C, Dp) with zero padding.
at::Tensor pad_columns(const at::Tensor& m, int64_t dp) {
  auto out = at::zeros({m.size(0), dp}, m.options());
  out.narrow(1, 0, m.size(1)).copy_(m);
  return out;
}

at::Tensor performative_solve_fwd_cpu(const at::Tensor& feats, const at::Tensor& y,
                                      const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias,
                                      const at::Tensor& vdiff,
                                      const std::optional<at::Tensor>& vbias,
                                      const at::Tensor& eps, double lr, int64_t steps,
                                      double step_size) {
  TORCH_CHECK(feats.dim() == 2, "performative_solve_fwd: feats must be (B, D), got ",
              feats.sizes());
  const int64_t B = feats.size(0), D = feats.size(1), C = weight.size(0);
  const auto dt = feats.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble,
              "performative_solve_fwd: feats must be float32 or float64, got ", dt);
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({C, D}) && vdiff.sizes() == weight.sizes(),
              "performative_solve_fwd: weight and vdiff must be (C, D) = (", C, ", ", D,
              "), got ", weight.sizes(), " and ", vdiff.sizes());
  TORCH_CHECK(bias.has_value() == vbias.has_value(),
              "performative_solve_fwd: bias and vbias must be given together");
  TORCH_CHECK(eps.dim() == 1 && eps.size(0) == B, "performative_solve_fwd: eps must be (B,) = (",
              B, ",), got ", eps.sizes());
  const bool hard = y.scalar_type() == at::kLong;
  TORCH_CHECK(hard ? (y.dim() == 1 && y.size(0) == B) : (y.dim() == 2 && y.size(0) == B &&
                                                          y.size(1) == C),
              "performative_solve_fwd: y must be (B,) int64 or (B, C) floating, got ", y.sizes());
  for (const auto* t : {&weight, &vdiff, &eps}) {
    TORCH_CHECK(t->scalar_type() == dt, "performative_solve_fwd: all tensors must be ", dt);
  }
  auto out = at::empty_like(feats, at::MemoryFormat::Contiguous);
  if (B == 0) return out;
  auto fc = feats.contiguous();
  auto yc = hard ? y.contiguous() : y.to(dt).contiguous();
  auto ec = eps.contiguous();
  if (hard) {
    const int64_t* lab = yc.data_ptr<int64_t>();
    for (int64_t i = 0; i < B; ++i) {
      TORCH_CHECK(lab[i] >= 0 && lab[i] < C, "performative_solve_fwd: y[", i, "] = ", lab[i],
                  " is not a class index in [0, ", C, ")");
    }
  }
  at::Tensor bc, vbc;
  if (bias.has_value()) {
    bc = bias->to(dt).contiguous();
    vbc = vbias->to(dt).contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(dt, "performative_solve_fwd", [&] {
    const int64_t dp = padded(D, kLanes<scalar_t>);
    auto wp = pad_columns(weight.contiguous(), dp);
    auto vp = pad_columns(vdiff.contiguous(), dp);
    SolveArgs<scalar_t> P{fc.data_ptr<scalar_t>(),
                          hard ? yc.data_ptr<int64_t>() : nullptr,
                          hard ? nullptr : yc.data_ptr<scalar_t>(),
                          wp.data_ptr<scalar_t>(),
                          vp.data_ptr<scalar_t>(),
                          bc.defined() ? bc.data_ptr<scalar_t>() : nullptr,
                          vbc.defined() ? vbc.data_ptr<scalar_t>() : nullptr,
                          ec.data_ptr<scalar_t>(),
                          static_cast<scalar_t>(lr),
                          static_cast<scalar_t>(step_size),
                          B, D, dp, C, steps,
                          out.data_ptr<scalar_t>()};
    const int64_t nblocks = (B + kBlock - 1) / kBlock;
    at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
      Scratch<scalar_t> S(dp, C);
      for (int64_t blk = begin; blk < end; ++blk) solve_block(P, blk * kBlock, S);
    });
  });
  return out;
}

at::Tensor sphere_project_fwd_cpu(const at::Tensor& x, const at::Tensor& anchor,
                                  const at::Tensor& eps) {
  TORCH_CHECK(x.dim() == 2 && anchor.sizes() == x.sizes(),
              "sphere_project_fwd: x and anchor must both be (B, D), got ", x.sizes(), " and ",
              anchor.sizes());
  const int64_t B = x.size(0), D = x.size(1);
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble,
              "sphere_project_fwd: x must be float32 or float64, got ", dt);
  TORCH_CHECK(anchor.scalar_type() == dt && eps.scalar_type() == dt,
              "sphere_project_fwd: anchor and eps must have x's dtype ", dt);
  TORCH_CHECK(eps.dim() == 1 && eps.size(0) == B, "sphere_project_fwd: eps must be (B,) = (", B,
              ",), got ", eps.sizes());
  auto out = at::empty({B, D}, x.options());
  if (B == 0) return out;
  auto xc = x.contiguous(), ac = anchor.contiguous(), ec = eps.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dt, "sphere_project_fwd", [&] {
    const int64_t dp = padded(D, kLanes<scalar_t>);
    const scalar_t* xs = xc.data_ptr<scalar_t>();
    const scalar_t* as = ac.data_ptr<scalar_t>();
    const scalar_t* es = ec.data_ptr<scalar_t>();
    scalar_t* os = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> row(3 * dp, scalar_t(0)), buf(2 * dp);
      scalar_t* xr = row.data();
      scalar_t* ah = row.data() + dp;
      scalar_t* zr = row.data() + 2 * dp;
      for (int64_t i = begin; i < end; ++i) {
        std::copy(xs + i * D, xs + (i + 1) * D, xr);
        std::copy(as + i * D, as + (i + 1) * D, ah);
        scalar_t radius = std::sqrt(dot(ah, ah, dp));
        scalar_t den = radius > 0 ? radius : scalar_t(1);
        for (int64_t d = 0; d < dp; ++d) ah[d] = ah[d] / den;
        project_row(xr, ah, radius, Cap<scalar_t>(es[i]), D, dp, zr, buf.data());
        std::copy(zr, zr + D, os + i * D);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dht_fast_C, m) {
  m.def("performative_solve_fwd(Tensor feats, Tensor y, Tensor weight, Tensor? bias, "
        "Tensor vdiff, Tensor? vbias, Tensor eps, float lr, int steps, float step_size) -> Tensor");
  m.def("sphere_project_fwd(Tensor x, Tensor anchor, Tensor eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(dht_fast_C, CPU, m) {
  m.impl("performative_solve_fwd", &performative_solve_fwd_cpu);
  m.impl("sphere_project_fwd", &sphere_project_fwd_cpu);
}
