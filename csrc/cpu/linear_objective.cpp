// Fused CPU kernel for the teaching objective of a softmax-regression learner.
//
// Math (dht_fast/references/linear.py has the derivation): per sample x (D,), with the stacked
// M = [W; V] (2C, D) and m = [b; v] (2C,), (z, u) = M x + m, p = softmax(z), s = sum(y),
// r = s p - y, n = ||x||^2 (+ 1 with a bias), and
//   grad_norm_sq = ||r||^2 n,   inner = r . u,   objective = lr^2 grad_norm_sq - 2 lr inner,
//   a = 2 lr^2 n r - 2 lr u,    grad_y = (p . a) 1 - a,
//   grad_x = M^T k + 2 lr^2 ||r||^2 x,   k = [s p (a - p . a); -2 lr r].
//
// The work is two sweeps over the features per sample (M x, then M^T k), 2C FMAs per feature
// each. Samples are taken kRows at a time and rows of M four at a time, so every value loaded
// from cache feeds four FMAs; M (2C x D) usually sits in L2, the tile's x rows in L1. Dot
// products accumulate per lane in the input type and sum the lanes in double; the O(C) middle
// step runs in double: it is cheap and keeps r = s p - y exact where the softmax saturates.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "simd.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using namespace dht_simd;

constexpr int kRows = 4;
// Rows of M per block: R x J accumulators plus R + J loaded vectors must fit the registers
// (32 with AVX-512, 16 below).
constexpr int kCols = kVecBytes == 64 ? 4 : 2;
// Register blocks of the M^T k sweep are kRows x kGradUnroll vectors.
constexpr int kGradUnroll = kVecBytes == 64 ? 4 : 2;

template <typename T>
struct Problem {
  const T* x;              // (B, D)
  const int64_t* labels;   // (B,) class indices, or null
  const T* soft;           // (B, C) soft targets, or null
  const T* m;              // (2C, D): W then V
  const T* mbias;          // (2C,): b then v, or null
  double lr;
  int64_t b, c, d;
  T* grad_norm_sq;         // (B,)
  T* inner;                // (B,)
  T* objective;            // (B,)
  T* grad_x;               // (B, D), or null
  bool stream_grad_x;      // write grad_x with vstream (rows aligned to kVecBytes)
  T* grad_y;               // (B, C), or null
};

// zu[r * 2C + q] = M_q . x_r for the R rows of a tile (row stride d) and the J rows of M at m.
// The first block of a tile (kFirst) also sums xsq[r] = ||x_r||^2 while the x rows pass through
// registers, and prefetches the rows at next (the next tile, or null): x streams from memory.
template <typename T, int R, int J, bool kFirst>
inline void dots_block(const T* x, const T* m, int64_t d, int64_t two_c, double* zu,
                       double* xsq, const T* next) {
  constexpr int L = kLanes<T>;
  Vec<T> acc[R * J], sq[R];
  // Unrolled: "= {}" or a plain loop becomes a memset of a stack copy of the accumulators.
#pragma GCC unroll 64
  for (auto& a : acc) a = Vec<T>{};
#pragma GCC unroll 8
  for (auto& a : sq) a = Vec<T>{};
  int64_t f = 0;
  for (; f + L <= d; f += L) {
    Vec<T> mv[J];
    for (int q = 0; q < J; ++q) mv[q] = vload(m + q * d + f);
    for (int r = 0; r < R; ++r) {
      const Vec<T> xv = vload(x + r * d + f);
      for (int q = 0; q < J; ++q) acc[r * J + q] += xv * mv[q];
      if constexpr (kFirst) {
        sq[r] += xv * xv;
        if (next != nullptr) __builtin_prefetch(next + r * d + f);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int q = 0; q < J; ++q) {
      double total = static_cast<double>(lane_sum<T>(acc[r * J + q]));
      for (int64_t g = f; g < d; ++g) total += static_cast<double>(x[r * d + g] * m[q * d + g]);
      zu[r * two_c + q] = total;
    }
    if constexpr (kFirst) {
      double total = static_cast<double>(lane_sum<T>(sq[r]));
      for (int64_t g = f; g < d; ++g) total += static_cast<double>(x[r * d + g] * x[r * d + g]);
      xsq[r] = total;
    }
  }
}

template <typename T, int R>
void tile_dots(const T* x, const T* m, int64_t two_c, int64_t d, double* zu, double* xsq,
               const T* next) {
  // 2C is even, so blocks of kCols rows of M and then at most one pair cover it.
  int64_t j = two_c >= kCols ? kCols : 2;
  if (j == kCols) {
    dots_block<T, R, kCols, true>(x, m, d, two_c, zu, xsq, next);
  } else {
    dots_block<T, R, 2, true>(x, m, d, two_c, zu, xsq, next);
  }
  for (; j + kCols <= two_c; j += kCols) {
    dots_block<T, R, kCols, false>(x, m + j * d, d, two_c, zu + j, nullptr, nullptr);
  }
  if (j < two_c) dots_block<T, R, 2, false>(x, m + j * d, d, two_c, zu + j, nullptr, nullptr);
}

// out_r[f:f + U L] = alpha_r x_r + sum_j k[r * 2C + j] M_j for the R rows of a tile: the R x U
// accumulators stay in registers across all 2C rows of M, so each output is written once.
template <typename T, int R, int U, bool kStream>
inline void grad_x_block(const T* x, const T* m, const T* k, const T* alpha, int64_t two_c,
                         int64_t d, int64_t f, T* out) {
  constexpr int L = kLanes<T>;
  Vec<T> acc[R * U];
#pragma GCC unroll 64
  for (auto& a : acc) a = Vec<T>{};
  for (int64_t j = 0; j < two_c; ++j) {
    Vec<T> mv[U];
    for (int u = 0; u < U; ++u) mv[u] = vload(m + j * d + f + u * L);
    for (int r = 0; r < R; ++r) {
      const T c = k[r * two_c + j];
      for (int u = 0; u < U; ++u) acc[r * U + u] += c * mv[u];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < U; ++u) {
      const int64_t at = r * d + f + u * L;
      const Vec<T> value = acc[r * U + u] + alpha[r] * vload(x + at);
      if constexpr (kStream) {
        vstream(out + at, value);
      } else {
        vstore(out + at, value);
      }
    }
  }
}

template <typename T, int R>
void tile_grad_x(const T* x, const T* m, const T* k, const T* alpha, int64_t two_c, int64_t d,
                 bool stream, T* out) {
  constexpr int L = kLanes<T>, U = kGradUnroll;
  int64_t f = 0;
  if (stream) {
    for (; f + U * L <= d; f += U * L) {
      grad_x_block<T, R, U, true>(x, m, k, alpha, two_c, d, f, out);
    }
    for (; f + L <= d; f += L) grad_x_block<T, R, 1, true>(x, m, k, alpha, two_c, d, f, out);
  } else {
    for (; f + U * L <= d; f += U * L) {
      grad_x_block<T, R, U, false>(x, m, k, alpha, two_c, d, f, out);
    }
    for (; f + L <= d; f += L) grad_x_block<T, R, 1, false>(x, m, k, alpha, two_c, d, f, out);
  }
  for (; f < d; ++f) {
    for (int r = 0; r < R; ++r) {
      T acc = alpha[r] * x[r * d + f];
      for (int64_t j = 0; j < two_c; ++j) acc += k[r * two_c + j] * m[j * d + f];
      out[r * d + f] = acc;
    }
  }
}

// The O(C) step for row i from zu = (M x)_i (2C,): writes the three scalars and grad_y, and
// fills k (2C,) and alpha for the grad_x sweep. work holds 2C doubles. Returns false, writing
// nothing, when the row's class index is out of range.
template <typename T>
bool row_terms(const Problem<T>& P, int64_t i, const double* zu, double xsq, double* work,
               T* k, T* alpha) {
  const int64_t C = P.c;
  int64_t label = -1;
  if (P.labels != nullptr) {
    label = P.labels[i];
    if (label < 0 || label >= C) return false;
  }
  const T* soft = P.soft != nullptr ? P.soft + i * C : nullptr;
  auto target = [&](int64_t c) {
    return soft != nullptr ? static_cast<double>(soft[c]) : (c == label ? 1.0 : 0.0);
  };
  auto bias = [&](int64_t j) { return P.mbias != nullptr ? static_cast<double>(P.mbias[j]) : 0.0; };
  double* p = work;
  double* r = work + C;

  // 1. p = softmax(z), shifted by the max logit so exp cannot overflow.
  double zmax = -std::numeric_limits<double>::infinity();
  for (int64_t c = 0; c < C; ++c) {
    p[c] = zu[c] + bias(c);
    zmax = std::max(zmax, p[c]);
  }
  double total = 0.0, s = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    p[c] = std::exp(p[c] - zmax);
    total += p[c];
    s += target(c);
  }

  // 2. r = s p - y and the three per-sample scalars.
  const double inv_total = 1.0 / total, lr = P.lr;
  double rsq = 0.0, inner = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    p[c] *= inv_total;
    r[c] = s * p[c] - target(c);
    rsq += r[c] * r[c];
    inner += r[c] * (zu[C + c] + bias(C + c));
  }
  const double n = xsq + (P.mbias != nullptr ? 1.0 : 0.0);
  P.grad_norm_sq[i] = static_cast<T>(rsq * n);
  P.inner[i] = static_cast<T>(inner);
  P.objective[i] = static_cast<T>(lr * lr * rsq * n - 2.0 * lr * inner);
  if (P.grad_x == nullptr && P.grad_y == nullptr) return true;

  // 3. a = 2 lr^2 n r - 2 lr u (overwriting r after use), then grad_y and k.
  double pa = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    k[C + c] = static_cast<T>(-2.0 * lr * r[c]);
    r[c] = 2.0 * lr * lr * n * r[c] - 2.0 * lr * (zu[C + c] + bias(C + c));
    pa += p[c] * r[c];
  }
  const double* a = r;
  for (int64_t c = 0; c < C; ++c) k[c] = static_cast<T>(s * p[c] * (a[c] - pa));
  if (P.grad_y != nullptr) {
    for (int64_t c = 0; c < C; ++c) P.grad_y[i * C + c] = static_cast<T>(pa - a[c]);
  }
  *alpha = static_cast<T>(2.0 * lr * lr * rsq);
  return true;
}

// Rows [i0, i0 + R). Returns the first row with a bad class index, or -1.
template <typename T, int R>
int64_t run_tile(const Problem<T>& P, int64_t i0, double* zu, double* work, T* k) {
  const int64_t two_c = 2 * P.c, d = P.d;
  const T* x = P.x + i0 * d;
  int64_t bad = -1;
  T alpha[R];
  double xsq[R];

  // 1. Logits, target directions and ||x||^2 for the R rows.
  const T* next = i0 + 2 * R <= P.b ? x + R * d : nullptr;
  tile_dots<T, R>(x, P.m, two_c, d, zu, xsq, next);

  // 2. Per-row scalars, grad_y and the grad_x coefficients; a bad row gets zero coefficients.
  for (int r = 0; r < R; ++r) {
    if (!row_terms(P, i0 + r, zu + r * two_c, xsq[r], work, k + r * two_c, alpha + r)) {
      std::fill(k + r * two_c, k + (r + 1) * two_c, T(0));
      alpha[r] = T(0);
      if (bad < 0) bad = i0 + r;
    }
  }

  // 3. grad_x rows.
  if (P.grad_x != nullptr) {
    tile_grad_x<T, R>(x, P.m, k, alpha, two_c, d, P.stream_grad_x, P.grad_x + i0 * d);
  }
  return bad;
}

template <typename T>
int64_t run(const Problem<T>& P) {
  const int64_t tiles = (P.b + kRows - 1) / kRows;
  // About 4 C D FMAs per row: give each task enough rows to outweigh the threading overhead.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (kRows * 4 * P.c * P.d + 1));
  std::atomic<int64_t> first_bad{-1};
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    std::vector<double> zu(kRows * 2 * P.c), work(2 * P.c);
    std::vector<T> k(kRows * 2 * P.c);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = t * kRows;
      int64_t bad = -1;
      if (i0 + kRows <= P.b) {
        bad = run_tile<T, kRows>(P, i0, zu.data(), work.data(), k.data());
      } else {
        for (int64_t i = i0; i < P.b && bad < 0; ++i) {
          bad = run_tile<T, 1>(P, i, zu.data(), work.data(), k.data());
        }
      }
      int64_t expected = -1;
      if (bad >= 0) first_bad.compare_exchange_strong(expected, bad);
    }
#if defined(__AVX__)
    // Streamed stores are weakly ordered: make them visible before the task reports done.
    _mm_sfence();
#endif
  });
  return first_bad.load();
}

// Whether to write grad_x with streaming stores. They pay off for an output too large for the
// caches that lands in reused heap memory (B = 4096, D = 784 float32: 1.2x faster). Above glibc's
// largest mmap threshold (32 MiB) each allocation is fresh pages that the kernel has just zeroed,
// so they are cached already and plain stores win (D = 3072: streaming is 1.4x slower).
bool stream_output(const at::Tensor& out) {
  const int64_t bytes = out.nbytes();
  const int64_t row_bytes = out.size(1) * out.element_size();
  return bytes >= (int64_t{4} << 20) && bytes < (int64_t{32} << 20) &&
         row_bytes % kVecBytes == 0 && reinterpret_cast<uintptr_t>(out.data_ptr()) % kVecBytes == 0;
}

void check_param(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                 int64_t size) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == size, "linear_objective_fwd: ", name,
              " must have shape (C,) = (", size, ",), got ", t->sizes());
  TORCH_CHECK(t->scalar_type() == x.scalar_type(), "linear_objective_fwd: ", name,
              " must have the dtype of x (", x.scalar_type(), "), got ", t->scalar_type());
  TORCH_CHECK(t->device().is_cpu(), "linear_objective_fwd: ", name, " must be on the CPU");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_objective_fwd_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& vdiff,
    const std::optional<at::Tensor>& vbias, double lr, bool grad_x, bool grad_y) {
  TORCH_CHECK(x.dim() == 2, "linear_objective_fwd: x must be (B, D), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "linear_objective_fwd: the CPU kernel takes float32 or float64 x, got ",
              x.scalar_type(), "; use the torch backend for other dtypes");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1),
              "linear_objective_fwd: weight must be (C, D) with D = x.size(1) = ", x.size(1),
              ", got ", weight.sizes());
  TORCH_CHECK(weight.size(0) >= 1, "linear_objective_fwd: weight needs at least one class");
  TORCH_CHECK(vdiff.sizes() == weight.sizes(), "linear_objective_fwd: vdiff must have the shape",
              " of weight ", weight.sizes(), ", got ", vdiff.sizes());
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, std::pair{&vdiff, "vdiff"}}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "linear_objective_fwd: ", name,
                " must have the dtype of x (", x.scalar_type(), "), got ", t->scalar_type());
  }
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu() && weight.device().is_cpu() &&
                  vdiff.device().is_cpu(),
              "linear_objective_fwd: x, y, weight and vdiff must be on the CPU");
  TORCH_CHECK(bias.has_value() == vbias.has_value(),
              "linear_objective_fwd: bias and vbias must be both given or both None");
  const int64_t B = x.size(0), D = x.size(1), C = weight.size(0);
  check_param(bias, "bias", x, C);
  check_param(vbias, "vbias", x, C);
  const bool hard = y.scalar_type() == at::kLong;
  if (hard) {
    TORCH_CHECK(y.dim() == 1 && y.size(0) == B, "linear_objective_fwd: class indices y must be",
                " (B,) with B = ", B, ", got ", y.sizes());
  } else {
    TORCH_CHECK(at::isFloatingType(y.scalar_type()), "linear_objective_fwd: y must be int64",
                " class indices or floating soft targets, got ", y.scalar_type());
    TORCH_CHECK(y.dim() == 2 && y.size(0) == B && y.size(1) == C, "linear_objective_fwd: soft ",
                "targets y must be (B, C) = (", B, ", ", C, "), got ", y.sizes());
  }

  const auto opts = x.options();
  at::Tensor out_sq = at::empty({B}, opts), out_inner = at::empty({B}, opts);
  at::Tensor out_obj = at::empty({B}, opts);
  at::Tensor out_gx = grad_x ? at::empty({B, D}, opts) : at::empty({0}, opts);
  at::Tensor out_gy = grad_y ? at::empty({B, C}, opts) : at::empty({0}, opts);
  if (B == 0) return {out_sq, out_inner, out_obj, out_gx, out_gy};

  const at::Tensor xc = x.contiguous();
  const at::Tensor m = at::cat({weight, vdiff}, 0).contiguous();
  const at::Tensor yc = hard ? y.contiguous() : y.to(x.scalar_type()).contiguous();
  const at::Tensor mbias = bias.has_value() ? at::cat({*bias, *vbias}, 0).contiguous()
                                            : at::Tensor();
  int64_t bad = -1;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_objective_fwd_cpu", [&] {
    Problem<scalar_t> P{xc.data_ptr<scalar_t>(),
                        hard ? yc.data_ptr<int64_t>() : nullptr,
                        hard ? nullptr : yc.data_ptr<scalar_t>(),
                        m.data_ptr<scalar_t>(),
                        mbias.defined() ? mbias.data_ptr<scalar_t>() : nullptr,
                        lr, B, C, D,
                        out_sq.data_ptr<scalar_t>(), out_inner.data_ptr<scalar_t>(),
                        out_obj.data_ptr<scalar_t>(),
                        grad_x ? out_gx.data_ptr<scalar_t>() : nullptr,
                        grad_x && stream_output(out_gx),
                        grad_y ? out_gy.data_ptr<scalar_t>() : nullptr};
    bad = run(P);
  });
  TORCH_CHECK(bad < 0, "linear_objective_fwd: y[", bad, "] = ", hard ? yc[bad].item<int64_t>() : 0,
              " is not a class index in [0, ", C, ")");
  return {out_sq, out_inner, out_obj, out_gx, out_gy};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dht_fast_C, m) {
  m.def("linear_objective_fwd(Tensor x, Tensor y, Tensor weight, Tensor? bias, Tensor vdiff, "
        "Tensor? vbias, float lr, bool grad_x, bool grad_y) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dht_fast_C, CPU, m) {
  m.impl("linear_objective_fwd", &linear_objective_fwd_cpu);
}
