"""Teach linear learners for ``T`` iterations over several seeds and store what happened.

Each run gets a fresh folder ``<out>/<name>-<timestamp>[-k]`` (created atomically, never reused)
holding ``config.json`` (config, seeds, versions), ``curves.csv`` (one row per dataset, teacher,
seed and iteration), ``summary.csv`` (one row per dataset and teacher) and ``<dataset>.png``.
Every file is written to a temporary name and renamed into place, and the results only once all
teaching is done, so an interrupted run leaves no ``curves.csv`` or ``summary.csv`` behind.
Each finished (dataset, teacher) block is kept in ``parts/`` as it completes; ``resume`` continues
a killed run in its own folder from the blocks it had finished, with the config it stored.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path

import torch
from tqdm import tqdm

from dht_fast.data.base import DATASETS, load_dataset
from dht_fast.learners.linear import (
    LinearLearner,
    direction_gap,
    distance,
    train_target,
)
from dht_fast.teachers.omniscient import GreedyTeacher, IMTTeacher, RandomTeacher

log = logging.getLogger(__name__)

TEACHERS = ("sgd", "imt", "greedy", "greedy-label")
METRICS = ("accuracy", "distance", "direction_gap")
SUMMARY_COLUMNS = ("teacher", "dataset", "seeds", "iterations", "final_accuracy_mean",
                   "final_accuracy_std", "final_distance_mean", "final_distance_std",
                   "wall_seconds")


class ConfigError(ValueError):
    """A setting of :class:`TeachConfig` is out of range; the message names it."""


@dataclass
class TeachConfig:
    """Everything a run depends on. Seeds pick the learner's initial weights and the teachers'
    draws; ``data_seed`` fixes the data, its split and projection, and ``w*``."""

    datasets: list[str] = field(default_factory=lambda: ["moons"])
    teachers: list[str] = field(default_factory=lambda: list(TEACHERS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    iterations: int = 300
    batch_size: int = 1
    lr: float = 1e-3
    bias: bool = True
    init_scale: float = 1.0
    greedy_steps: int = 300
    greedy_step_size: float = 0.02
    greedy_starts: int = 1
    label_step_size: float = 0.02
    target_lr: float = 0.05
    target_epochs: int = 50
    data_seed: int = 0
    data_root: str | None = None
    backend: str = "auto"
    device: str = "cpu"

    def __post_init__(self):
        for name, allowed in (("datasets", DATASETS), ("teachers", TEACHERS)):
            values = getattr(self, name)
            bad = [v for v in values if v not in allowed]
            if not values or bad:
                raise ConfigError(f"{name} must be a non-empty list from {allowed}, got {values}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of distinct ints, got {self.seeds}")
        for name in ("iterations", "batch_size", "greedy_starts", "target_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.greedy_steps < 0:
            raise ConfigError(f"greedy_steps must be >= 0, got {self.greedy_steps}")
        for name in ("lr", "init_scale", "greedy_step_size", "label_step_size", "target_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")


def versions() -> dict:
    import numpy

    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads()}


def make_teacher(name, data, target, cfg: TeachConfig, generator):
    """The teacher called ``name`` (one of :data:`TEACHERS`) for a dataset and its target."""
    if name == "sgd":
        return RandomTeacher(data.x_train, data.y_train, batch_size=cfg.batch_size,
                             generator=generator)
    if name == "imt":
        return IMTTeacher(data.x_train, data.y_train, target, batch_size=cfg.batch_size,
                          backend=cfg.backend)
    return GreedyTeacher(
        data.domain, data.num_classes, target, batch_size=cfg.batch_size,
        steps=cfg.greedy_steps, step_size=cfg.greedy_step_size, starts=cfg.greedy_starts,
        soft_labels=name == "greedy-label", label_step_size=cfg.label_step_size,
        generator=generator, backend=cfg.backend)


def teach(teacher, learner: LinearLearner, data, target, iterations: int, on_step=None):
    """Run ``iterations`` teaching steps; metrics ``(iterations + 1, 3)`` (accuracy, distance,
    direction gap), row ``t`` measured after ``t`` steps. ``on_step()`` is called after each."""
    rows = []
    for t in range(iterations + 1):
        if t:
            x, y = teacher.next_batch(learner)
            learner.step(x, y)
            if on_step is not None:
                on_step()
        rows.append(torch.stack([learner.accuracy(data.x_test, data.y_test),
                                 distance(learner, target), direction_gap(learner, target)]))
    return torch.stack(rows).cpu()


def atomic_write(path: Path, write, *, binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def new_run_folder(out: Path, name: str) -> Path:
    """A folder no other run has or will have: ``mkdir`` fails if the name is taken."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        folder = out / (f"{name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run folder in {out}")


def prepare(cfg: TeachConfig, ds_name: str):
    """The dataset on ``cfg.device`` and its target ``w*``."""
    data = load_dataset(ds_name, data_root=cfg.data_root, seed=cfg.data_seed).to(cfg.device)
    target = train_target(data.x_train, data.y_train, data.num_classes, bias=cfg.bias,
                          lr=cfg.target_lr, epochs=cfg.target_epochs,
                          generator=torch.Generator().manual_seed(cfg.data_seed))
    return data, target


def _open_run(cfg: TeachConfig, out, name: str, resume):
    """``(cfg, folder)``: a fresh folder, or the killed run's folder and stored config."""
    if resume is None:
        return cfg, None
    folder = Path(resume)
    meta_path = folder / "config.json"
    if not meta_path.is_file():
        raise ConfigError(f"resume: {folder} holds no config.json of a run to continue")
    if (folder / "summary.csv").exists():
        raise ConfigError(f"resume: {folder} is a finished run (it has a summary.csv)")
    stored = json.loads(meta_path.read_text())["config"]
    return TeachConfig(**stored), folder


def _teach_block(cfg, data, target, teacher_name, bar):
    """Every seed of one (dataset, teacher): ``(runs (S, T + 1, 3), wall seconds)``."""
    start = time.perf_counter()
    runs = []
    for seed in cfg.seeds:
        learner = LinearLearner.init(
            data.num_classes, data.dim, lr=cfg.lr, bias=cfg.bias, scale=cfg.init_scale,
            generator=torch.Generator().manual_seed(seed), device=cfg.device)
        gen = torch.Generator().manual_seed(1_000_003 + seed)
        teacher = make_teacher(teacher_name, data, target, cfg, gen)
        runs.append(teach(teacher, learner, data, target, cfg.iterations,
                          on_step=lambda: bar.update(1)))
    return torch.stack(runs), time.perf_counter() - start


def run_experiment(cfg: TeachConfig, out, *, name: str = "teach", progress: bool = True,
                   resume=None):
    """Teach every (dataset, teacher, seed) of ``cfg``; returns ``(folder, summary rows)``.

    The data are loaded before the run folder is made, so missing data leave no folder behind.
    With ``resume`` (the folder of a killed run) ``cfg`` and ``out`` are ignored: the run goes
    on with its stored config, and the blocks it had finished are read back, not recomputed.
    """
    cfg, folder = _open_run(cfg, out, name, resume)
    tasks = {ds_name: prepare(cfg, ds_name) for ds_name in cfg.datasets}
    if folder is None:
        folder = new_run_folder(Path(out), name)
        target_accuracy = {
            ds_name: float(LinearLearner(target.weight, target.bias, cfg.lr).accuracy(
                data.x_test, data.y_test)) for ds_name, (data, target) in tasks.items()}
        log.info("test accuracy of w*: %s", target_accuracy)
        meta = {"config": asdict(cfg), "seeds": cfg.seeds, "versions": versions(),
                "target_accuracy": target_accuracy}
        atomic_write(folder / "config.json", lambda fh: json.dump(meta, fh, indent=2))
    log.info("run folder: %s", folder)
    (folder / "parts").mkdir(exist_ok=True)
    total = len(cfg.datasets) * len(cfg.teachers) * len(cfg.seeds) * cfg.iterations
    curves, summary = {}, []
    with tqdm(total=total, desc=name, leave=False,
              disable=None if progress else True) as bar:
        for (ds_name, (data, target)), teacher_name in product(tasks.items(), cfg.teachers):
            bar.set_postfix_str(f"{ds_name}/{teacher_name}")
            part = folder / "parts" / f"{ds_name}__{teacher_name}.pt"
            if part.exists():
                saved = torch.load(part)
                runs, wall = saved["runs"], saved["wall"]
                bar.update(len(cfg.seeds) * cfg.iterations)
                log.info("%s / %s: read back from %s", ds_name, teacher_name, part)
            else:
                runs, wall = _teach_block(cfg, data, target, teacher_name, bar)
                atomic_write(part, lambda fh: torch.save({"runs": runs, "wall": wall}, fh),
                             binary=True)
            curves[ds_name, teacher_name] = runs
            summary.append(_summary_row(teacher_name, ds_name, cfg, runs, wall))
            log.info("%s / %s: final distance %.4f, accuracy %.3f (%.1f s)", ds_name,
                     teacher_name, summary[-1]["final_distance_mean"],
                     summary[-1]["final_accuracy_mean"], wall)
    _write_results(folder, cfg, curves, summary)
    return folder, summary


def _summary_row(teacher, dataset, cfg, runs, wall):
    """runs: ``(S, T + 1, 3)``."""
    final = runs[:, -1].double()
    std = final.std(0, unbiased=False)
    return {"teacher": teacher, "dataset": dataset, "seeds": len(cfg.seeds),
            "iterations": cfg.iterations,
            "final_accuracy_mean": float(final[:, 0].mean()), "final_accuracy_std": float(std[0]),
            "final_distance_mean": float(final[:, 1].mean()), "final_distance_std": float(std[1]),
            "wall_seconds": round(wall, 3)}


def _write_results(folder: Path, cfg, curves, summary):
    from dht_fast.experiments.plots import plot_curves

    def write_curves(fh):
        w = csv.writer(fh)
        w.writerow(("dataset", "teacher", "seed", "iteration") + METRICS)
        for (ds, teacher), runs in curves.items():
            for seed, run in zip(cfg.seeds, runs.tolist()):
                for it, values in enumerate(run):
                    w.writerow([ds, teacher, seed, it] + [f"{v:.6g}" for v in values])

    atomic_write(folder / "curves.csv", write_curves)
    for ds in cfg.datasets:
        png = io.BytesIO()
        plot_curves({t: curves[ds, t] for t in cfg.teachers}, METRICS, f"{ds}", png)
        atomic_write(folder / f"{ds}.png", lambda fh: fh.write(png.getvalue()), binary=True)
    atomic_write(folder / "summary.csv", lambda fh: write_summary(fh, summary))


def write_summary(fh, rows) -> None:
    w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
    w.writeheader()
    w.writerows(rows)
