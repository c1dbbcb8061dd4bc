"""Time one training step of a CNN with performative teaching against a plain step.

CNN-6 (by default), a batch of 128 CIFAR-shaped images (generated), SGD with momentum: the plain
step (features, head, cross-entropy, backward, optimizer step) against the same step with the
teacher between features and head (``PerformativeTeacher``: lookahead 5, 15 solve steps, eps
0.1), for the DHT and the random policy and every solve backend that runs here. Steps of the
variants are interleaved so that a change of machine load hits them alike; each number is the
median over ``--steps`` steps after ``--warmup``. The teacher call alone is timed too.
Writes ``benchmarks/results/train_step.json`` (device, versions, shapes, medians, ratios).

    PYTHONPATH=. python benchmarks/bench_train_step.py [--steps 15] [--threads 1] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dht_fast.data.vision import generated_images
from dht_fast.experiments.bench_harness import environment, synchronize
from dht_fast.models import build_model
from dht_fast.ops.performative import SOLVE_DISPATCH
from dht_fast.teachers.performative import PerformativeTeacher

OUT = Path(__file__).resolve().parent / "results" / "train_step.json"
TARGET_RATIO = 1.10


def _variants(model, device, lr):
    """name -> teacher (None for the plain step): DHT on each backend that runs here, random."""
    out = {"plain": None}
    probe = torch.zeros(2, model.feature_dim, device=device)
    for backend in ("cpp", "triton", "torch"):
        if SOLVE_DISPATCH.why_not(backend, x=probe, weight=model.head.weight) is None:
            out[f"dht-{backend}"] = PerformativeTeacher(model.head, lr=lr, backend=backend)
    out["random"] = PerformativeTeacher(model.head, lr=lr, policy="random")
    return out


def bench(arch: str, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    images, labels = generated_images(batch, num_classes=100)
    x = ((images.float() - 127.5) / 64).to(device)
    y = labels.to(device)
    torch.manual_seed(0)
    model = build_model(arch, in_shape=(3, 32, 32), num_classes=100).to(device)
    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    variants = _variants(model, device, lr)

    def step(teacher):
        feats = model.features(x)
        if teacher is not None:
            feats = teacher(feats, y)
        loss = F.cross_entropy(model.head(feats), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {name: [] for name in variants}
    teach_times = {name: [] for name in variants if name != "plain"}
    for k in range(warmup + steps):
        for name, teacher in variants.items():
            synchronize(device)
            start = time.perf_counter()
            step(teacher)
            synchronize(device)
            if k >= warmup:
                times[name].append(time.perf_counter() - start)
        with torch.no_grad():
            feats = model.features(x)
        for name in teach_times:
            synchronize(device)
            start = time.perf_counter()
            variants[name](feats, y)
            synchronize(device)
            if k >= warmup:
                teach_times[name].append(time.perf_counter() - start)
    plain = statistics.median(times["plain"])
    result = {"arch": arch, "batch": batch, "input_shape": [batch, 3, 32, 32],
              "feature_dim": model.feature_dim, "classes": 100, "steps": steps,
              "warmup": warmup, "teacher": repr(variants[next(iter(teach_times))]),
              "median_step_s": {n: statistics.median(t) for n, t in times.items()},
              "median_teacher_call_s": {n: statistics.median(t) for n, t in teach_times.items()}}
    result["ratio_to_plain"] = {n: t / plain for n, t in result["median_step_s"].items()}
    # Less sensitive to load than a ratio of two noisy step medians: the plain step plus the
    # teacher's own median time.
    result["ratio_from_teacher_call"] = {
        n: 1 + t / plain for n, t in result["median_teacher_call_s"].items()}
    auto = SOLVE_DISPATCH.resolve("auto", device.type, x=x.new_zeros(2, model.feature_dim),
                                  weight=model.head.weight)
    result["auto_backend"] = auto
    result["dht_auto_ratio"] = result["ratio_to_plain"][f"dht-{auto}"]
    result["dht_auto_ratio_from_teacher_call"] = result["ratio_from_teacher_call"][f"dht-{auto}"]
    result["target_ratio"] = TARGET_RATIO
    result["meets_target"] = result["dht_auto_ratio"] <= TARGET_RATIO
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cnn6")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant (>= 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.steps < 10:
        parser.error(f"--steps must be >= 10 for a median, got {args.steps}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = bench(args.arch, args.batch, args.steps, args.warmup, device)
    report = {"benchmark": "one training step: performative teaching vs plain",
              "environment": environment(device), "load_average": list(os.getloadavg()),
              "statistic": "median seconds per step", **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, ratio in result["ratio_to_plain"].items():
        print(f"{name:<12} {result['median_step_s'][name] * 1e3:9.1f} ms  x{ratio:.3f}")
    print(f"DHT ({result['auto_backend']}) / plain = {result['dht_auto_ratio']:.3f}, from the "
          f"teacher call alone {result['dht_auto_ratio_from_teacher_call']:.3f} "
          f"(target <= {TARGET_RATIO}); written to {args.out}")


if __name__ == "__main__":
    main()
