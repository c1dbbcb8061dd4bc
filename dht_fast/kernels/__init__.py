"""Triton kernels (and, under ``csrc/``, C++/CUDA sources) behind the ops in ``dht_fast.ops``."""
