"""The fused performative solve (cpp, torch backends) against autograd doing the same K steps.

The baseline is what an implementation without the closed form does: each of the K steps builds
the batch's per-sample objectives from ``x`` in torch ops and calls ``torch.autograd.grad`` for
``grad_x``; the tangent step, the projection and the best-iterate rule are the same as the
fused ops'. Every variant's result is checked against the torch backend before it is timed.

    python benchmarks/bench_performative.py [--threads 1] [--repeats 25]

writes ``benchmarks/results/performative_solve.json`` (device, versions, shapes, medians,
ratios). With pytest-benchmark: ``pytest benchmarks/bench_performative.py``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time

import torch

from dht_fast.ops.performative import SOLVE_DISPATCH, head_lookahead, performative_solve
from dht_fast.references.performative import _safe_div, sphere_project_ref

log = logging.getLogger("bench_performative")

B, D, K, EPS, LR = 128, 256, 15, 0.1, 0.1
STEP = 2 * EPS / K
CLASSES = (10, 100)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                   "performative_solve.json")


def make_problem(c, seed=0):
    """feats ``(B, D)``, labels ``(B,)``, head ``(C, D)`` + ``(C,)`` and its lookahead target."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, D, generator=g).relu()
    y = torch.randint(0, c, (B,), generator=g)
    w, b = torch.randn(c, D, generator=g) * D ** -0.5, torch.zeros(c)
    ws, bs = head_lookahead(feats, y, w, b, LR, 5)
    return feats, y, w, b, ws, bs


def autograd_solve(feats, y, w, b, ws, bs):
    """The same K steps with grad_x from torch.autograd.grad on the batch's objectives."""
    a = feats
    eps = torch.full((B,), EPS)
    radius = a.norm(dim=1, keepdim=True)
    t = torch.nn.functional.one_hot(y, w.shape[0]).to(a.dtype)
    x, best, best_obj = a, a, None
    for k in range(K + 1):
        xg = x.detach().requires_grad_(True)
        p = torch.softmax(xg @ w.T + b, 1)
        r = p - t
        obj = LR * LR * (r * r).sum(1) * ((xg * xg).sum(1) + 1) \
            - 2 * LR * (r * (xg @ (w - ws).T + (b - bs))).sum(1)
        better = obj.detach() < (best_obj if best_obj is not None else obj.detach() + 1)
        best = torch.where(better[:, None], x, best)
        best_obj = torch.where(better, obj.detach(), best_obj if best_obj is not None else obj)
        if k == K:
            break
        (gx,) = torch.autograd.grad(obj.sum(), xg)
        gt = gx - _safe_div((gx * x).sum(1, keepdim=True), (x * x).sum(1, keepdim=True)) * x
        x = x - (STEP * radius) * _safe_div(gt, gt.norm(dim=1, keepdim=True))
        x = sphere_project_ref(x, a, eps)
    return best


def variants(feats):
    out = {"autograd": autograd_solve}
    for backend in ("torch", "cpp"):
        reason = SOLVE_DISPATCH.why_not(backend, x=feats, weight=feats)
        if reason is not None:
            log.warning("skipping backend %s: %s", backend, reason)
            continue
        out[backend] = lambda *args, _b=backend: performative_solve(
            *args, LR, eps=EPS, steps=K, step_size=STEP, backend=_b)
    return out


def time_it(fn, args, repeats):
    fn(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10)
    return {"median_ms": statistics.median(times), "p10_ms": q[0], "p90_ms": q[-1],
            "runs": repeats}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    results = []
    for c in CLASSES:
        problem = make_problem(c)
        ref = performative_solve(*problem, LR, eps=EPS, steps=K, step_size=STEP,
                                 backend="torch")
        row = {"B": B, "D": D, "C": c, "K": K, "eps": EPS, "step_size": STEP,
               "dtype": "float32", "timings": {}}
        for name, fn in variants(problem[0]).items():
            diff = (fn(*problem) - ref).abs().max().item()
            row["timings"][name] = dict(time_it(fn, problem, args.repeats), max_abs_diff=diff)
        base = row["timings"]["autograd"]["median_ms"]
        row["speedup_vs_autograd"] = {n: base / t["median_ms"] for n, t in row["timings"].items()}
        results.append(row)
        for name, t in row["timings"].items():
            log.info("C=%3d %-8s median %8.3f ms  (%.2fx vs autograd, max |diff| %.1e)", c, name,
                     t["median_ms"], row["speedup_vs_autograd"][name], t["max_abs_diff"])
    import triton  # noqa: F401  (version only)

    meta = {"device": cpu_name(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "load_average": os.getloadavg(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    log.info("wrote %s", args.out)


def test_solve(benchmark):
    """pytest-benchmark entry: the default (auto) backend at C = 100."""
    problem = make_problem(100)
    benchmark(lambda: performative_solve(*problem, LR, eps=EPS, steps=K, step_size=STEP))


if __name__ == "__main__":
    main()
