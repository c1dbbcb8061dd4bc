"""Timing, peak-memory and environment helpers for the comparison run of
:mod:`dht_fast.experiments.bench_ops`.

* :func:`time_call`: median and p20/p80 of ``repeats`` timed repeats after warm-up; a call
  shorter than :data:`MIN_REPEAT_S` is run ``number`` times per repeat and the mean taken, so
  that timer resolution does not dominate sub-millisecond kernels.
* :func:`peak_memory_mib`: on CPU, the method runs once in a fresh spawned process, after a
  tiny warm-up call that pays lazy initialisation; the result is the peak resident set during
  the call (``VmHWM``, reset just before it through ``/proc/self/clear_refs``) minus the
  resident set before it, or where that reset is refused the growth of ``ru_maxrss``. On CUDA,
  ``max_memory_allocated`` over the memory allocated before the call, in this process.
* :func:`environment` and :func:`result_path`: what is stored beside the numbers, and where.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import importlib.metadata
import math
import multiprocessing
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

MIN_REPEAT_S = 0.01


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, repeats: int) -> dict:
    """Seconds per call of ``fn()``: ``{"median_s", "p20_s", "p80_s", "repeats", "number"}``."""
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    first = time.perf_counter() - t0
    if first < 1.0:
        fn()
        synchronize(device)
    number = max(1, min(1000, math.ceil(MIN_REPEAT_S / max(first, 1e-7))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) / number)
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) > 1 else times * 4
    return {"median_s": statistics.median(times), "p20_s": q[0], "p80_s": q[3],
            "repeats": repeats, "number": number}


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1))


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _measure_cpu(build, args, threads: int, rows: int) -> float:
    """Child process: MiB of peak-RSS growth while ``method(rows)`` runs once."""
    torch.set_num_threads(threads)
    method = build(*args)
    method(2)
    if _reset_peak_rss():
        base = _status_kib("VmRSS")
        method(rows)
        return (_status_kib("VmHWM") - base) / 1024.0
    # Without the reset, growth of ru_maxrss (KiB on Linux) over the peak so far: a lower
    # bound when the peak before the call was above the current RSS.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    method(rows)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0


def peak_memory_mib(build, args: tuple, rows: int, device: torch.device) -> float:
    """Peak extra memory (MiB) of one call of the method that ``build(*args)`` returns.

    ``build`` must be a module-level function (it is pickled to the child on CPU) returning
    ``method(rows)``, which runs the method on the first ``rows`` samples of inputs that
    ``build`` already made, so that the inputs are not counted.
    """
    if device.type == "cuda":
        method = build(*args)
        method(2)
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        method(rows)
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(_measure_cpu, build, args, torch.get_num_threads(), rows).result()


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Device, versions and threads, stored beside the numbers."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "opacus": _version("opacus"),
        "backpack": _version("backpack-for-pytorch"),
        "dht_fast": _version("dht_fast"),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def result_path(out_dir: Path, device: str, suffix: str = ".json") -> Path:
    """``<out_dir>/<device slug>_<YYYY-MM-DD>[_<n>].json``, never an existing file."""
    slug = re.sub(r"\((r|tm)\)|cpu @.*", "", device.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-") or "device"
    stem = f"{slug}_{datetime.date.today().isoformat()}"
    path, n = out_dir / f"{stem}{suffix}", 2
    while path.exists():
        path, n = out_dir / f"{stem}_{n}{suffix}", n + 1
    return path
