"""``dht-fast reproduce table1``: performative teaching of neural learners (the paper's Table 1).

For every policy (``sgd``: plain training; ``random``: a uniform point of each feature's cap;
``dht``: Algorithm 1) and seed, trains the learner and records its final test accuracy. Defaults
are the paper's settings (``../shared/paper/METHOD.md``): batch 128, lookahead 5, 15 feature
steps, eps 0.1; MNIST: MLP, SGD lr 1e-3 (no momentum), 50 epochs; CIFAR: CNN-3, SGD lr 0.1
(momentum 0.9 and weight decay 5e-4: not stated there, the usual choice), 85 epochs, lr / 10 at
20k / 30k / 37.5k iterations of batch 128 (the last lies beyond 85 epochs of CIFAR), crop + flip.

Run folder (``--out``, never reused): ``config.json``, ``checkpoints/<policy>-seed<k>.pt``
(every epoch), ``runs/<policy>-seed<k>.json`` (finished runs, with the per-epoch history: test
accuracy, lr and the mean training loss, which for ``random``/``dht`` is the loss on the taught
features the learner trained on) and
``summary.csv``, one row per policy: ``teacher, dataset, seeds, iterations,
final_accuracy_mean, final_accuracy_std, final_distance_mean, final_distance_std,
wall_seconds`` (the columns of :mod:`dht_fast.experiments.runner`). ``dataset`` is
``<dataset>/<arch>``; accuracies are fractions, std over seeds with ddof 0 (as the omniscient
runs); the distance columns are empty (a neural learner has no fixed ``w*``); ``iterations`` are
optimizer steps per run and ``wall_seconds`` the training + evaluation time summed over seeds.
``--resume DIR`` continues a killed run folder with its saved configuration.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from dht_fast.cli import CliError
from dht_fast.data.base import DatasetNotFound
from dht_fast.data.vision import VISION_DATASETS, load_vision
from dht_fast.experiments.runner import atomic_write, new_run_folder, versions, write_summary
from dht_fast.experiments.train_neural import (
    ResumeError,
    TrainConfig,
    init_distributed,
    train_run,
)
from dht_fast.models import ARCHS
from dht_fast.ops.backends import BackendUnavailable
from dht_fast.ops.performative import SOLVE_DISPATCH

log = logging.getLogger(__name__)

POLICIES = ("sgd", "random", "dht")
_CIFAR = {"arch": "cnn3", "epochs": 85, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
          "milestones": [20000, 30000, 37500]}
PAPER = {
    "mnist": {"arch": "mlp", "epochs": 50, "lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0,
              "milestones": []},
    "cifar10": _CIFAR, "cifar100": _CIFAR, "generated": _CIFAR,
}
# Paper, Table 1: test accuracy (%) for SGD / random policy / DHT.
PAPER_TABLE1 = {
    ("mnist", "mlp"): (92.45, 92.47, 95.02),
    ("cifar10", "cnn3"): (87.30, 87.17, 88.77), ("cifar10", "cnn6"): (90.34, 90.20, 91.61),
    ("cifar10", "cnn9"): (91.10, 91.12, 92.30), ("cifar10", "cnn15"): (91.85, 91.67, 92.44),
    ("cifar100", "cnn3"): (62.10, 62.04, 62.69), ("cifar100", "cnn6"): (65.02, 64.96, 66.81),
    ("cifar100", "cnn9"): (67.05, 67.19, 69.23), ("cifar100", "cnn15"): (68.39, 68.49, 68.96),
}
# Options that only change how a run executes, not its result: taken from the command line on
# --resume, everything else from the saved config.json.
_RUNTIME = ("resume", "out", "progress", "threads", "data_root", "cache_dir")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--dataset", choices=VISION_DATASETS, default="mnist",
      help="generated: CIFAR-100-shaped synthetic data for smoke tests")
    a("--arch", choices=ARCHS, default=None, help="default: mlp for mnist, cnn3 otherwise")
    a("--policy", choices=POLICIES, nargs="+", default=list(POLICIES))
    a("--seeds", type=int, default=3, help="runs per policy, seeds 0 .. N-1")
    a("--epochs", type=int, default=None, help="default: 50 (mnist), 85 (cifar)")
    a("--batch-size", type=int, default=128, help="global batch, over all ranks")
    a("--lr", type=float, default=None, help="base lr at batch 128 (paper's per dataset)")
    a("--momentum", type=float, default=None)
    a("--weight-decay", type=float, default=None)
    a("--milestones", type=int, nargs="*", default=None,
      help="lr / 10 at these iterations of batch 128 (rescaled for other batches)")
    a("--no-lr-scaling", dest="scale_lr", action="store_false",
      help="do not scale lr by batch / 128 for batches above 128")
    a("--warmup-epochs", type=float, default=None,
      help="linear lr warmup; default 5 when the lr is scaled up, else 0")
    a("--eps", type=float, default=0.1, help="chord radius of each feature's cap")
    a("--steps", type=int, default=15, help="feature steps of the per-sample solve")
    a("--lookahead", type=int, default=5, help="head SGD steps that give w*")
    a("--step-size", type=float, default=None, help="default 2 * eps / steps")
    a("--backend", choices=("auto",) + SOLVE_DISPATCH.names, default="auto",
      help="backend of the DHT solve")
    a("--limit-train", type=int, default=None, help="train on a random subset of this size")
    a("--limit-test", type=int, default=None, help="test on a random subset of this size")
    a("--generated-size", type=int, nargs=2, default=(50000, 10000), metavar=("TRAIN", "TEST"))
    a("--no-augment", dest="augment", action="store_false", help="no crop + flip (CIFAR)")
    a("--data-root", default=None, help="dataset files (required for cifar100)")
    a("--cache-dir", default=None, help="where extracted data is cached (~/.cache/dht_fast)")
    a("--device", choices=("auto", "cpu", "cuda"), default="auto")
    a("--amp", choices=("auto", "bf16", "off"), default="auto", help="auto: bf16 on GPU only")
    a("--compile", action="store_true", help="torch.compile the training forward")
    a("--sync-bn", action="store_true", help="SyncBatchNorm across ranks (GPU)")
    a("--threads", type=int, default=None, help="torch CPU threads per process")
    a("--out", default="runs", help="parent folder of the fresh run folder")
    a("--resume", default=None, metavar="DIR", help="continue this run folder")
    a("--no-progress", dest="progress", action="store_false")


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the per-dataset defaults and check the values; CliError names the argument."""
    paper = PAPER[args.dataset]
    for key in ("arch", "epochs", "lr", "momentum", "weight_decay", "milestones"):
        if getattr(args, key) is None:
            setattr(args, key, paper[key])
    if args.warmup_epochs is None:
        args.warmup_epochs = 5.0 if args.scale_lr and args.batch_size > 128 else 0.0
    checks = [("--seeds", args.seeds >= 1), ("--epochs", args.epochs >= 1),
              ("--batch-size", args.batch_size >= 1), ("--lr", args.lr > 0),
              ("--eps", args.eps >= 0), ("--steps", args.steps >= 0),
              ("--lookahead", args.lookahead >= 0), ("--warmup-epochs", args.warmup_epochs >= 0),
              ("--limit-train", args.limit_train is None or args.limit_train >= 1),
              ("--limit-test", args.limit_test is None or args.limit_test >= 1)]
    for name, ok in checks:
        if not ok:
            value = getattr(args, name[2:].replace("-", "_"))
            raise CliError(f"{name} must be positive (>= 0 for counts), got {value}")
    if args.arch.startswith("cnn") and args.dataset == "mnist":
        raise CliError(f"--arch {args.arch} needs 32x32 images; use --arch mlp for mnist")
    return args


def _config(args) -> dict:
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in _RUNTIME}


def _train_config(args) -> TrainConfig:
    return TrainConfig(
        arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay,
        milestones=tuple(args.milestones), warmup_epochs=args.warmup_epochs,
        scale_lr=args.scale_lr, eps=args.eps, steps=args.steps, lookahead=args.lookahead,
        step_size=args.step_size, backend=args.backend, amp=args.amp, compile=args.compile,
        sync_bn=args.sync_bn, progress=args.progress)


def _run_folder(args, info) -> Path:
    """The fresh folder (rank 0 creates it and tells the others) or the one to resume."""
    if args.resume is not None:
        return Path(args.resume)
    name = None
    if info.main:
        name = str(new_run_folder(Path(args.out), f"table1-{args.dataset}-{args.arch}"))
    if info.active:
        box = [name]
        dist.broadcast_object_list(box, src=0)
        name = box[0]
    return Path(name)


def summarize(results: dict, dataset: str) -> list[dict]:
    """``{(policy, seed): run result}`` -> one summary row per policy (see the module doc)."""
    rows = []
    for policy in dict.fromkeys(p for p, _ in results):
        runs = [r for (p, _), r in results.items() if p == policy]
        acc = [r["final_accuracy"] for r in runs]
        rows.append({
            "teacher": policy, "dataset": dataset, "seeds": len(runs),
            "iterations": runs[0]["iterations"],
            "final_accuracy_mean": statistics.fmean(acc),
            "final_accuracy_std": statistics.pstdev(acc),
            "final_distance_mean": "", "final_distance_std": "",
            "wall_seconds": round(sum(r["wall_seconds"] for r in runs), 2)})
    return rows


def format_table(rows: list[dict], paper: Optional[tuple] = None) -> str:
    """Per-policy mean and std of the final test accuracy (%), beside the paper's number."""
    lines = [f"{'policy':<8} {'accuracy % (mean +- std)':>26} {'paper %':>8} {'seeds':>5} "
             f"{'iterations':>10} {'wall s':>9}"]
    for row in rows:
        acc = f"{100 * row['final_accuracy_mean']:.2f} +- {100 * row['final_accuracy_std']:.2f}"
        ref = paper[POLICIES.index(row["teacher"])] if paper else None
        ref_s = f"{ref:.2f}" if ref is not None else "-"
        lines.append(f"{row['teacher']:<8} {acc:>26} {ref_s:>8} {row['seeds']:>5} "
                     f"{row['iterations']:>10} {row['wall_seconds']:>9}")
    return "\n".join(lines)


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=2, sort_keys=True))


def read_summary(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run(args, *, on_epoch_end: Optional[Callable] = None) -> int:
    """Run (or resume) every ``(policy, seed)``; write ``summary.csv``; print the table.

    ``on_epoch_end(policy, seed, epoch)`` is called after each epoch's checkpoint is written.
    """
    if args.resume is not None:
        saved_file = Path(args.resume) / "config.json"
        if not saved_file.is_file():
            raise CliError(f"--resume {args.resume}: no config.json there (not a table1 run "
                           "folder)")
        saved = json.loads(saved_file.read_text())
        runtime = {k: getattr(args, k) for k in _RUNTIME}
        args = argparse.Namespace(**{**saved, **runtime})
    args = _resolve(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        info = init_distributed(args.device)
    except RuntimeError as err:
        raise CliError(f"--device {args.device}: {err}") from err
    try:
        data = load_vision(args.dataset, data_root=args.data_root, cache=args.cache_dir,
                           limit_train=args.limit_train, limit_test=args.limit_test,
                           generated_train=args.generated_size[0],
                           generated_test=args.generated_size[1], augment=args.augment)
    except DatasetNotFound as err:
        raise CliError(str(err)) from err
    if "dht" in args.policy:
        probe = torch.zeros(1, 1, device=info.device)
        try:
            SOLVE_DISPATCH.resolve(args.backend, info.device.type, x=probe, weight=probe)
        except BackendUnavailable as err:
            raise CliError(f"--backend {args.backend}: {err}") from err
    if args.batch_size % info.world:
        raise CliError(f"--batch-size {args.batch_size} must be divisible by the "
                       f"{info.world} ranks")
    folder = _run_folder(args, info)
    if info.main:
        (folder / "checkpoints").mkdir(exist_ok=True)
        (folder / "runs").mkdir(exist_ok=True)
        if args.resume is None:
            _write_json(folder / "config.json", {**_config(args), "versions": versions()})
    if info.active:
        dist.barrier()
    log.info("table1: %s/%s, policies %s, %d seeds, %d epochs, %d ranks, into %s",
             args.dataset, args.arch, args.policy, args.seeds, args.epochs, info.world, folder)
    cfg = _train_config(args)
    results = {}
    for policy in args.policy:
        for seed in range(args.seeds):
            done = folder / "runs" / f"{policy}-seed{seed}.json"
            if done.is_file():
                results[(policy, seed)] = json.loads(done.read_text())
                continue
            ckpt = folder / "checkpoints" / f"{policy}-seed{seed}.pt"
            try:
                result = train_run(cfg, data, policy, seed, info, ckpt, on_epoch_end)
            except ResumeError as err:
                raise CliError(f"--resume {folder}: {err}") from err
            results[(policy, seed)] = result
            if info.main:
                _write_json(done, result)
    rows = summarize(results, f"{args.dataset}/{args.arch}")
    if info.main:
        atomic_write(folder / "summary.csv", lambda fh: write_summary(fh, rows))
        print(format_table(rows, PAPER_TABLE1.get((args.dataset, args.arch))))
        print(f"summary: {folder / 'summary.csv'}")
    if info.active:
        dist.barrier()
    if info.owns_group:
        dist.destroy_process_group()
    return 0 if all(math.isfinite(r["final_accuracy_mean"]) for r in rows) else 1


def main(argv: Optional[list] = None) -> int:
    """``python -m dht_fast.experiments.table1 ...``: the same as ``dht-fast reproduce table1``,
    e.g. under ``torchrun --nproc_per_node N -m dht_fast.experiments.table1 ...``."""
    parser = argparse.ArgumentParser(prog="dht-fast reproduce table1",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except CliError as err:
        sys.stderr.write(f"{parser.prog}: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
