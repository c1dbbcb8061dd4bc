// Fixed-width SIMD helpers for the CPU kernels: vectors as wide as the target's registers,
// unaligned loads and stores, streaming stores and a tree sum of the lanes.
#pragma once

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <cstring>
#include <type_traits>

namespace dht_simd {

// Vectors as wide as the target's registers, through GCC/Clang vector extensions: the compiler's
// own vectorizer keeps to 256 bits on AVX-512 parts and does not reorder float sums.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
template <typename T, int N>
struct VecN {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <typename T>
constexpr int kLanes = kVecBytes / sizeof(T);
template <typename T>
using Vec = typename VecN<T, kLanes<T>>::type;

template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void vstore(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// A store that bypasses the caches (p aligned to kVecBytes): for outputs too large to be read
// back from cache, it saves reading each line in before overwriting it.
template <typename T>
inline void vstream(T* p, const Vec<T>& v) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    _mm512_stream_ps(p, v);
  } else {
    _mm512_stream_pd(p, v);
  }
#elif defined(__AVX__)
  if constexpr (std::is_same_v<T, float>) {
    _mm256_stream_ps(p, v);
  } else {
    _mm256_stream_pd(p, v);
  }
#else
  vstore(p, v);
#endif
}

// Sum of the N lanes as a tree of halves: log2(N) vector adds, not a chain of scalar ones.
template <typename T, int N = kLanes<T>>
inline T lane_sum(const typename VecN<T, N>::type& v) {
  if constexpr (N == 1) {
    return v[0];
  } else {
    typename VecN<T, N / 2>::type lo, hi;
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
    return lane_sum<T, N / 2>(lo + hi);
  }
}

}  // namespace dht_simd
