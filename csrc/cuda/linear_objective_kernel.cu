// CUDA kernel for the teaching objective of a softmax-regression learner (the math is in
// dht_fast/references/linear.py and csrc/cpu/linear_objective.cpp): one warp per sample.
//
// Against a Triton kernel. The Triton one tiles a block of samples per program and runs the two
// products (x M^T, then k M) through tl.dot, that is tensor cores, with TF32 on float32 unless
// told otherwise. This kernel uses plain fp32 FMAs per warp. Expected outcome:
// * C up to a few dozen (MNIST/CIFAR teaching, C = 10): both are bound by reading x and writing
//   grad_x (2 B D elements; the 4 B C D FMAs are few next to that), so both should reach a
//   similar fraction of bandwidth. This one wins on small batches (no autotuning, one small
//   launch, no padding of C to a power of two, which Triton's tl.dot needs, 16 at least) and
//   gives exact fp32 products.
// * Large C (hundreds): the products become compute-bound and the tensor cores win; this kernel
//   also re-reads the x row from L1 once per group of kClassChunk rows of M.
// * W and V are read through L1/L2 rather than staged in shared memory: every warp reads all of
//   M for every sample, so it stays cache-resident, and shared memory holds only per-row vectors.
#include "linear_objective_kernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

namespace dht_fast {
namespace {

constexpr int kWarps = 4;        // warps (samples in flight) per block
constexpr int kClassChunk = 8;   // rows of M whose dot products one pass over x accumulates

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Shared memory per warp: zu (2C) and k (2C) floats.
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
linear_objective_fwd_kernel(LinearObjectiveArgs a) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t C = a.c, D = a.d, two_c = 2 * C;
  float* zu = smem + warp * 4 * C;  // z, then u; later p and a
  float* k = zu + two_c;            // r, then the grad_x coefficients
  const T* m = static_cast<const T*>(a.m);
  const T* mbias = static_cast<const T*>(a.mbias);
  const float lr = a.lr;

  const int64_t stride = int64_t(gridDim.x) * kWarps;
  for (int64_t i = int64_t(blockIdx.x) * kWarps + warp; i < a.b; i += stride) {
    const T* x = static_cast<const T*>(a.x) + i * D;

    // 1. ||x||^2 and (z, u) = M x + m: lanes split the features, the warp sums.
    float xsq = 0.f;
    for (int64_t f = lane; f < D; f += 32) {
      const float v = to_float(x[f]);
      xsq += v * v;
    }
    xsq = warp_sum(xsq);
    for (int64_t j0 = 0; j0 < two_c; j0 += kClassChunk) {
      float acc[kClassChunk] = {};
      for (int64_t f = lane; f < D; f += 32) {
        const float v = to_float(x[f]);
#pragma unroll
        for (int q = 0; q < kClassChunk; ++q) {
          if (j0 + q < two_c) acc[q] += v * to_float(m[(j0 + q) * D + f]);
        }
      }
#pragma unroll
      for (int q = 0; q < kClassChunk; ++q) {
        const float s = warp_sum(acc[q]);
        if (lane == 0 && j0 + q < two_c) {
          zu[j0 + q] = s + (mbias != nullptr ? to_float(mbias[j0 + q]) : 0.f);
        }
      }
    }
    __syncwarp();

    // 2. Softmax, r = s p - y and the scalars; lanes split the classes.
    int64_t label = -1;
    bool bad = false;
    if (a.labels != nullptr) {
      label = a.labels[i];
      bad = label < 0 || label >= C;
    }
    const T* soft = a.soft != nullptr ? static_cast<const T*>(a.soft) + i * C : nullptr;
    float zmax = -INFINITY;
    for (int64_t c = lane; c < C; c += 32) zmax = fmaxf(zmax, zu[c]);
    zmax = warp_max(zmax);
    float total = 0.f, s = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
      total += __expf(zu[c] - zmax);
      s += soft != nullptr ? to_float(soft[c]) : float(c == label);
    }
    total = warp_sum(total);
    s = warp_sum(s);
    const float n = xsq + (mbias != nullptr ? 1.f : 0.f);
    float rsq = 0.f, inner = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
      const float p = __expf(zu[c] - zmax) / total;
      const float t = soft != nullptr ? to_float(soft[c]) : float(c == label);
      const float r = s * p - t;
      rsq += r * r;
      inner += r * zu[C + c];
      zu[c] = p;
      k[C + c] = r;
    }
    rsq = warp_sum(rsq);
    inner = warp_sum(inner);
    const float nan = __int_as_float(0x7fc00000);
    if (lane == 0) {
      static_cast<T*>(a.grad_norm_sq)[i] = from_float<T>(bad ? nan : rsq * n);
      static_cast<T*>(a.inner)[i] = from_float<T>(bad ? nan : inner);
      static_cast<T*>(a.objective)[i] =
          from_float<T>(bad ? nan : lr * lr * rsq * n - 2.f * lr * inner);
    }

    // 3. a = 2 lr^2 n r - 2 lr u (into u's slot), then grad_y and k = [s p (a - p.a); -2 lr r].
    float pa = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
      const float ac = 2.f * lr * lr * n * k[C + c] - 2.f * lr * zu[C + c];
      zu[C + c] = ac;
      pa += zu[c] * ac;
    }
    pa = warp_sum(pa);
    for (int64_t c = lane; c < C; c += 32) {
      const float ac = zu[C + c];
      if (a.grad_y != nullptr) {
        static_cast<T*>(a.grad_y)[i * C + c] = from_float<T>(bad ? nan : pa - ac);
      }
      k[C + c] = -2.f * lr * k[C + c];
      k[c] = s * zu[c] * (ac - pa);
    }
    __syncwarp();

    // 4. grad_x = M^T k + 2 lr^2 ||r||^2 x; lanes split the features, k is read from shared.
    if (a.grad_x != nullptr) {
      T* out = static_cast<T*>(a.grad_x) + i * D;
      const float alpha = 2.f * lr * lr * rsq;
      for (int64_t f = lane; f < D; f += 32) {
        float acc = alpha * to_float(x[f]);
        for (int64_t j = 0; j < two_c; ++j) acc += k[j] * to_float(m[j * D + f]);
        out[f] = from_float<T>(bad ? nan : acc);
      }
    }
    // The next row overwrites zu and k.
    __syncwarp();
  }
}

template <typename T>
cudaError_t launch(const LinearObjectiveArgs& args, cudaStream_t stream) {
  if (args.b == 0) return cudaSuccess;
  const int64_t blocks_needed = (args.b + kWarps - 1) / kWarps;
  // Enough blocks to fill the device several times over; the kernel strides over the rest.
  const int blocks = static_cast<int>(blocks_needed < 65535 ? blocks_needed : 65535);
  const size_t smem = static_cast<size_t>(linear_objective_smem_bytes(args.c));
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        linear_objective_fwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  linear_objective_fwd_kernel<T><<<blocks, kWarps * 32, smem, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

int64_t linear_objective_smem_bytes(int64_t num_classes) {
  return int64_t(kWarps) * 4 * num_classes * int64_t(sizeof(float));
}

cudaError_t launch_linear_objective_fwd(const LinearObjectiveArgs& args,
                                        LinearObjectiveDtype dtype, cudaStream_t stream) {
  switch (dtype) {
    case LinearObjectiveDtype::kFloat32:
      return launch<float>(args, stream);
    case LinearObjectiveDtype::kFloat16:
      return launch<__half>(args, stream);
    case LinearObjectiveDtype::kBFloat16:
      return launch<__nv_bfloat16>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace dht_fast
