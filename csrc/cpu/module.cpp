// The Python module dht_fast._C. It exports nothing itself: importing it runs the static
// TORCH_LIBRARY registrations of the other files in csrc/cpu, which put the ops under
// torch.ops.dht_fast_C.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
