"""Builds the optional compiled backends of dht_fast.

Two extensions, each optional:

* ``dht_fast._C``: the fused CPU kernels in ``csrc/cpu`` (C++, OpenMP when the compiler has it).
* ``dht_fast._C_cuda``: the CUDA kernels in ``csrc/cuda``, built where a CUDA toolkit and a CUDA
  build of torch are both present.

Knobs (environment): ``DHT_FAST_BUILD_CPP`` and ``DHT_FAST_BUILD_CUDA`` take ``0`` (skip), ``1``
(force: a failure is an error) or ``auto`` (default: build when possible, otherwise say why once
and go on). ``DHT_FAST_NATIVE=0`` drops ``-march=native`` from the CPU build.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _knob(name):
    value = os.environ.get(name, "auto").strip().lower()
    if value not in ("0", "1", "auto"):
        raise SystemExit(f"{name} must be 0, 1 or auto, got {value!r}")
    return value


def _say(msg):
    sys.stderr.write(f"dht_fast setup: {msg}\n")


def _guess_cuda_home():
    """The toolkit root: CUDA_HOME if set, else the ``cuda`` folder beside nvcc's prefix."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    for cand in (os.path.join(prefix, "cuda"), prefix, "/usr/local/cuda"):
        if os.path.exists(os.path.join(cand, "bin", "nvcc")) and os.path.isdir(
            os.path.join(cand, "include")
        ):
            return cand
    return None


def _compiler_accepts(flag):
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.cpp")
        with open(src, "w") as f:
            f.write("int main() { return 0; }\n")
        cmd = [cxx, flag, src, "-o", os.path.join(tmp, "t")]
        return subprocess.run(cmd, capture_output=True).returncode == 0


def _cpp_extension(cpp_ext):
    flags = ["-O3", "-g0", "-std=c++20"]
    link = []
    if _compiler_accepts("-fopenmp"):
        flags.append("-fopenmp")
        link.append("-fopenmp")
    if os.environ.get("DHT_FAST_NATIVE", "1") != "0" and _compiler_accepts("-march=native"):
        flags.append("-march=native")
    sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    return cpp_ext.CppExtension(
        "dht_fast._C", sources, extra_compile_args=flags, extra_link_args=link
    )


def _cuda_extension(cpp_ext):
    sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    if not sources:
        return None
    return cpp_ext.CUDAExtension(
        "dht_fast._C_cuda",
        sources,
        extra_compile_args={"cxx": ["-O3", "-g0", "-std=c++20"],
                            "nvcc": ["-O3", "-std=c++20", "-lineinfo"]},
    )


def _extensions():
    want_cpp, want_cuda = _knob("DHT_FAST_BUILD_CPP"), _knob("DHT_FAST_BUILD_CUDA")
    if want_cuda != "0":
        cuda_home = _guess_cuda_home()
        if cuda_home:
            os.environ.setdefault("CUDA_HOME", cuda_home)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as err:
        if "1" in (want_cpp, want_cuda):
            raise SystemExit(f"building the extensions needs torch installed first: {err}")
        _say("torch is not importable; skipping the compiled backends (Python paths only)")
        return [], {}
    exts = []
    if want_cpp != "0":
        exts.append(_cpp_extension(cpp_extension))
    if want_cuda != "0":
        reason = None
        if torch.version.cuda is None:
            reason = "torch is a CPU-only build"
        elif cpp_extension.CUDA_HOME is None:
            reason = "no CUDA toolkit found (set CUDA_HOME)"
        ext = _cuda_extension(cpp_extension) if reason is None else None
        if reason is None and ext is None:
            reason = "csrc/cuda holds no sources"
        if ext is not None:
            exts.append(ext)
        elif want_cuda == "1":
            raise SystemExit(f"DHT_FAST_BUILD_CUDA=1 but {reason}")
        else:
            _say(f"skipping the CUDA extension: {reason}")
    return exts, {"build_ext": _tolerant_build_ext(cpp_extension, want_cpp, want_cuda)}


def _tolerant_build_ext(cpp_extension, want_cpp, want_cuda):
    base = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)

    class BuildExt(base):
        def build_extension(self, ext):
            forced = (want_cuda if ext.name.endswith("_cuda") else want_cpp) == "1"
            try:
                super().build_extension(ext)
            except Exception as err:  # a compiler failure must not break a CPU install
                if forced:
                    raise
                _say(f"could not build {ext.name} ({type(err).__name__}: {err}); "
                     "the package will use its Python backends")

    return BuildExt


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
