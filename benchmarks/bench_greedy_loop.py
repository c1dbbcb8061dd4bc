"""Time one teaching step of the greedy DHT teacher: batched (``GreedyTeacher``) vs a per-sample
loop with autograd, the way published implementations compute it.

Both run the same algorithm (Adam steps on the raw input, clamped to the box, best iterate kept,
best start kept) on the same starting points; the script checks that their samples reach the same
teaching objective, then writes medians and ratios to ``benchmarks/results/greedy_step.json``.

    PYTHONPATH=. python benchmarks/bench_greedy_loop.py [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dht_fast import linear_teaching_objective
from dht_fast.experiments.runner import TeachConfig, prepare, versions
from dht_fast.learners.linear import LinearLearner
from dht_fast.ops.linear_objective import DISPATCH
from dht_fast.teachers.omniscient import GreedyTeacher

OUT = Path(__file__).resolve().parent / "results" / "greedy_step.json"


def greedy_loop(teacher: GreedyTeacher, learner: LinearLearner, y: torch.Tensor):
    """The greedy teacher one sample and one start at a time: per optimizer step, one autograd
    double-backward through the per-sample loss gradient and one host sync.
    y: ``(B,)``; returns ``x`` ``(B, D)``.
    """
    dom, tgt, lr = teacher.domain, teacher.target, learner.lr
    params = [learner.weight.detach().clone().requires_grad_(True)]
    star = [tgt.weight]
    if learner.bias is not None:
        params.append(learner.bias.detach().clone().requires_grad_(True))
        star.append(tgt.bias)
    n = y.shape[0]
    starts = teacher.starting_points(n).to(learner.weight.dtype)
    best = [(float("inf"), None)] * n
    for row in range(starts.shape[0]):
        i = row % n
        u = starts[row].clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=teacher.step_size, betas=teacher.betas, eps=teacher.eps)
        for k in range(teacher.steps + 1):
            x = dom.features(u[None])
            z = x @ params[0].T + (params[1] if len(params) > 1 else 0)
            loss = torch.nn.functional.cross_entropy(z, y[i:i + 1])
            g = torch.autograd.grad(loss, params, create_graph=True)
            obj = sum(lr * lr * (gi * gi).sum() - 2 * lr * ((p - s) * gi).sum()
                      for gi, p, s in zip(g, params, star))
            if obj.item() < best[i][0]:
                best[i] = (obj.item(), x.detach()[0])
            if k == teacher.steps:
                break
            opt.zero_grad()
            obj.backward()
            opt.step()
            with torch.no_grad():
                u.clamp_(dom.lower, dom.upper)
    return torch.stack([b[1] for b in best])


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(dataset, batch_size, starts, steps, repeats, loop_repeats):
    cfg = TeachConfig(datasets=[dataset])
    data, target = prepare(cfg, dataset)
    learner = LinearLearner.init(data.num_classes, data.dim, lr=1e-3,
                                 generator=torch.Generator().manual_seed(0))
    y = torch.randint(data.num_classes, (batch_size,), generator=torch.Generator().manual_seed(1))

    def teacher():
        return GreedyTeacher(data.domain, data.num_classes, target, batch_size=batch_size,
                             steps=steps, starts=starts, generator=torch.Generator().manual_seed(2))

    # Adam's normalized steps amplify float32 rounding over hundreds of steps, so the two
    # samples can drift apart a little; what must agree is how well they teach.
    ours_obj = teacher().synthesize(learner, y)[2]
    loop_x = greedy_loop(teacher(), learner, y)
    loop_obj = linear_teaching_objective(loop_x, y, learner.weight, learner.bias, target.weight,
                                         target.bias, learner.lr, grad_x=False).objective
    torch.testing.assert_close(ours_obj, loop_obj, atol=1e-7, rtol=1e-2)
    ours = _median_time(lambda: teacher().synthesize(learner, y), repeats)
    loop = _median_time(lambda: greedy_loop(teacher(), learner, y), loop_repeats)
    return {"dataset": dataset, "batch_size": batch_size, "starts": starts, "steps": steps,
            "features": data.dim, "raw_inputs": data.domain.lower.shape[0],
            "classes": data.num_classes, "batched_seconds": ours, "loop_seconds": loop,
            "speedup": loop / ours, "repeats": repeats, "loop_repeats": loop_repeats}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("moons", 1, 1), ("moons", 8, 4), ("mnist", 1, 1), ("mnist", 8, 4)]
    rows = []
    for dataset, batch, starts in cases:
        loop_repeats = 3 if batch * starts == 1 else 1
        rows.append(bench(dataset, batch, starts, args.steps, args.repeats, loop_repeats))
        print(json.dumps(rows[-1]))
    result = {"benchmark": "greedy teaching step: batched vs per-sample autograd loop",
              "device": platform.processor() or platform.machine(),
              "load_average": os.getloadavg(), "threads": args.threads,
              "op_backend": DISPATCH.resolve("auto", "cpu", x=torch.zeros(1, 2),
                                             weight=torch.zeros(2, 2)),
              "versions": versions(), "statistic": "median seconds per teaching step",
              "results": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
