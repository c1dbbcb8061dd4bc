// The Python module dht_fast._C_cuda. It exports nothing itself: importing it runs the static
// TORCH_LIBRARY registrations of the other files in csrc/cuda, which put the ops under
// torch.ops.dht_fast_cuda.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
