// Launcher of the CUDA teaching-objective kernel: raw pointers only, so that the .cu file
// compiles without torch headers.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace dht_fast {

enum class LinearObjectiveDtype { kFloat32, kFloat16, kBFloat16 };

// Every floating pointer has the element type `dtype`; labels or soft is null (not both).
// m is (2C, D): W then V; mbias is (2C,): b then v, or null. grad_x (B, D) and grad_y (B, C)
// may be null. A row whose class index is out of range gets NaN outputs.
struct LinearObjectiveArgs {
  const void* x;
  const int64_t* labels;
  const void* soft;
  const void* m;
  const void* mbias;
  float lr;
  int64_t b, c, d;
  void* grad_norm_sq;
  void* inner;
  void* objective;
  void* grad_x;
  void* grad_y;
};

// The dynamic shared memory a launch needs, so the caller can check it against the device.
int64_t linear_objective_smem_bytes(int64_t num_classes);

cudaError_t launch_linear_objective_fwd(const LinearObjectiveArgs& args,
                                        LinearObjectiveDtype dtype, cudaStream_t stream);

}  // namespace dht_fast
