// Row helpers and the hypersphere-cap projection of one row, shared by the CPU kernels in
// performative.cpp. dht_fast/references/performative.py states the math and the conventions at
// ambiguous points; project_row follows it operation for operation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "simd.h"

namespace dht_fast_cap {

using dht_simd::kLanes;
using dht_simd::lane_sum;
using dht_simd::Vec;

template <typename T>
inline Vec<T> load(const T* p) {
  return dht_simd::vload(p);
}

template <typename T>
inline void store(T* p, const Vec<T>& v) {
  dht_simd::vstore(p, v);
}

// All row buffers have Dp = D rounded up to whole vectors, zero in the padding.
template <typename T>
inline T dot(const T* a, const T* b, int64_t dp) {
  Vec<T> acc = {};
  for (int64_t d = 0; d < dp; d += kLanes<T>) acc += load(a + d) * load(b + d);
  return lane_sum<T>(acc);
}

// out = alpha * a + beta * b (out may alias a or b).
template <typename T>
inline void axpby(T alpha, const T* a, T beta, const T* b, T* out, int64_t dp) {
  for (int64_t d = 0; d < dp; d += kLanes<T>) {
    store(out + d, alpha * load(a + d) + beta * load(b + d));
  }
}

// Matches ANTIPODAL_ULPS in dht_fast/references/performative.py.
constexpr double kAntipodalUlps = 32.0;

// The cap of chord radius eps: cos and sin of its angular radius, and whether it is the sphere.
template <typename T>
struct Cap {
  T eps, cos, sin;
  bool whole;
  explicit Cap(T e) : eps(e), whole(e >= T(2)) {
    T c = std::min(e, T(2));
    cos = T(1) - T(0.5) * c * c;
    sin = c * std::sqrt(std::max(T(1) - T(0.25) * c * c, T(0)));
  }
};

// The fixed unit direction orthogonal to a^ used for antipodal x: axis k = argmin |a^_k| (first
// on ties, among the D true features) minus its a^ component, normalized.
template <typename T>
void orthogonal_direction(const T* ah, int64_t d_true, int64_t dp, T* e) {
  int64_t k = 0;
  for (int64_t d = 1; d < d_true; ++d) {
    if (std::abs(ah[d]) < std::abs(ah[k])) k = d;
  }
  T ak = ah[k];
  for (int64_t d = 0; d < dp; ++d) e[d] = -ak * ah[d];
  e[k] = T(1) - ak * ak;
  T inv = std::sqrt(dot(e, e, dp));
  for (int64_t d = 0; d < dp; ++d) e[d] = e[d] / inv;
}

// Closest point of the cap {||z|| = R, ||z/||z|| - a^|| <= eps} to x. ah = a / R (zero if R = 0);
// buf holds 2 Dp scratch values; out may alias x.
template <typename T>
void project_row(const T* x, const T* ah, T radius, const Cap<T>& cap, int64_t d_true,
                 int64_t dp, T* out, T* buf) {
  if (!(radius > 0)) {
    std::fill(out, out + dp, T(0));
    return;
  }
  T* xh = buf;
  T* o = buf + dp;
  T nx = std::sqrt(dot(x, x, dp));
  if (nx > 0) {
    for (int64_t d = 0; d < dp; ++d) xh[d] = x[d] / nx;
  } else {
    std::copy(ah, ah + dp, xh);
  }
  T d2 = 0;
  {
    Vec<T> acc = {};
    for (int64_t d = 0; d < dp; d += kLanes<T>) {
      Vec<T> t = load(xh + d) - load(ah + d);
      acc += t * t;
    }
    d2 = lane_sum<T>(acc);
  }
  const T* dir = xh;
  if (!(cap.whole || d2 <= cap.eps * cap.eps)) {
    if (d_true == 1) {
      dir = ah;
    } else {
      // e: the unit component of x^ orthogonal to a^, by two Gram-Schmidt passes.
      axpby(T(1), xh, -dot(xh, ah, dp), ah, o, dp);
      axpby(T(1), o, -dot(o, ah, dp), ah, o, dp);
      T on = std::sqrt(dot(o, o, dp));
      if (on <= T(kAntipodalUlps) * std::numeric_limits<T>::epsilon()) {
        orthogonal_direction(ah, d_true, dp, o);
      } else {
        for (int64_t d = 0; d < dp; ++d) o[d] = o[d] / on;
      }
      axpby(cap.cos, ah, cap.sin, o, xh, dp);
    }
  }
  T nd = std::sqrt(dot(dir, dir, dp));
  for (int64_t d = 0; d < dp; ++d) out[d] = radius * (dir[d] / nd);
}

}  // namespace dht_fast_cap
