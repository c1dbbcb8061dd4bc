// Registers dht_fast_cuda::linear_objective_fwd for CUDA tensors: checks the inputs, makes them
// contiguous and calls the launcher in linear_objective_kernel.cu. Same schema and semantics as
// the CPU op dht_fast_C::linear_objective_fwd, with float32, float16 and bfloat16 inputs
// (accumulated in float32). Out-of-range class indices are not checked here (that would need a
// device-to-host sync): the kernel never indexes with them, and their rows come out NaN.
//
// The stream and the device limits come from c10 and the CUDA runtime, not from
// ATen/cuda/CUDAContext.h, which pulls in cuSPARSE/cuBLAS headers that the pip CUDA wheels keep
// outside the toolkit's include path.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "linear_objective_kernel.h"

namespace {

dht_fast::LinearObjectiveDtype kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return dht_fast::LinearObjectiveDtype::kFloat32;
    case at::kHalf:
      return dht_fast::LinearObjectiveDtype::kFloat16;
    case at::kBFloat16:
      return dht_fast::LinearObjectiveDtype::kBFloat16;
    default:
      TORCH_CHECK(false, "linear_objective_fwd: the CUDA kernel takes float32, float16 or ",
                  "bfloat16 x, got ", t, "; use the torch backend for other dtypes");
  }
}

void check_same(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "linear_objective_fwd: ", name,
              " must have the dtype of x (", x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "linear_objective_fwd: ", name,
              " must be on the device of x (", x.device(), "), got ", t.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_objective_fwd_cuda(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& vdiff,
    const std::optional<at::Tensor>& vbias, double lr, bool grad_x, bool grad_y) {
  TORCH_CHECK(x.is_cuda(), "linear_objective_fwd: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 2, "linear_objective_fwd: x must be (B, D), got ", x.sizes());
  const auto dtype = kernel_dtype(x.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1),
              "linear_objective_fwd: weight must be (C, D) with D = x.size(1) = ", x.size(1),
              ", got ", weight.sizes());
  TORCH_CHECK(weight.size(0) >= 1, "linear_objective_fwd: weight needs at least one class");
  TORCH_CHECK(vdiff.sizes() == weight.sizes(), "linear_objective_fwd: vdiff must have the shape",
              " of weight ", weight.sizes(), ", got ", vdiff.sizes());
  check_same(weight, "weight", x);
  check_same(vdiff, "vdiff", x);
  TORCH_CHECK(bias.has_value() == vbias.has_value(),
              "linear_objective_fwd: bias and vbias must be both given or both None");
  const int64_t B = x.size(0), D = x.size(1), C = weight.size(0);
  for (const auto& [t, name] : {std::pair{&bias, "bias"}, std::pair{&vbias, "vbias"}}) {
    if (!t->has_value()) continue;
    TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == C, "linear_objective_fwd: ", name,
                " must have shape (C,) = (", C, ",), got ", (*t)->sizes());
    check_same(**t, name, x);
  }
  const bool hard = y.scalar_type() == at::kLong;
  TORCH_CHECK(y.device() == x.device(), "linear_objective_fwd: y must be on the device of x (",
              x.device(), "), got ", y.device());
  if (hard) {
    TORCH_CHECK(y.dim() == 1 && y.size(0) == B, "linear_objective_fwd: class indices y must be",
                " (B,) with B = ", B, ", got ", y.sizes());
  } else {
    TORCH_CHECK(at::isFloatingType(y.scalar_type()), "linear_objective_fwd: y must be int64",
                " class indices or floating soft targets, got ", y.scalar_type());
    TORCH_CHECK(y.dim() == 2 && y.size(0) == B && y.size(1) == C, "linear_objective_fwd: soft ",
                "targets y must be (B, C) = (", B, ", ", C, "), got ", y.sizes());
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t smem = dht_fast::linear_objective_smem_bytes(C);
  int smem_max = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        x.device().index()));
  TORCH_CHECK(smem <= smem_max, "linear_objective_fwd: the CUDA kernel keeps 16 C bytes per ",
              "sample in shared memory, too many for C = ", C, "; use the triton or torch backend");

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
  dht_fast::LinearObjectiveArgs args{
      xc.data_ptr(), hard ? yc.data_ptr<int64_t>() : nullptr, hard ? nullptr : yc.data_ptr(),
      m.data_ptr(), mbias.defined() ? mbias.data_ptr() : nullptr, static_cast<float>(lr),
      B, C, D, out_sq.data_ptr(), out_inner.data_ptr(), out_obj.data_ptr(),
      grad_x ? out_gx.data_ptr() : nullptr, grad_y ? out_gy.data_ptr() : nullptr};
  const cudaError_t err =
      dht_fast::launch_linear_objective_fwd(args, dtype, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "linear_objective_fwd: CUDA launch failed: ",
              cudaGetErrorString(err));
  return {out_sq, out_inner, out_obj, out_gx, out_gy};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dht_fast_cuda, m) {
  m.def("linear_objective_fwd(Tensor x, Tensor y, Tensor weight, Tensor? bias, Tensor vdiff, "
        "Tensor? vbias, float lr, bool grad_x, bool grad_y) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dht_fast_cuda, CUDA, m) {
  m.impl("linear_objective_fwd", &linear_objective_fwd_cuda);
}
