"""Options and output shared by the teaching subcommands (``teach``, ``demo``, ``reproduce``)."""
from __future__ import annotations

import argparse

import torch

from dht_fast.cli import CliError
from dht_fast.data.base import DATASETS, DatasetNotFound
from dht_fast.experiments.runner import SUMMARY_COLUMNS, ConfigError, TeachConfig, run_experiment
from dht_fast.ops.backends import BackendUnavailable
from dht_fast.ops.linear_objective import DISPATCH


def add_teaching_arguments(parser: argparse.ArgumentParser, *, seeds: int, out: str = "runs",
                           greedy_steps: int = 300, choose: bool = False) -> None:
    """The knobs of :class:`TeachConfig`; ``choose`` adds ``--teacher`` and ``--dataset``."""
    if choose:
        from dht_fast.experiments.runner import TEACHERS

        parser.add_argument("--teacher", nargs="+", choices=TEACHERS,
                            default=["sgd", "imt", "greedy"], help="teachers to compare")
        parser.add_argument("--dataset", choices=DATASETS, default="moons",
                            help="moons; mnist: 3 vs 5 projected to 24 dims (the paper's); "
                                 "mnist10: all digits, 784 pixels")
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=out,
                   help="parent folder of the run folder (default %(default)s)")
    g.add_argument("--seeds", type=int, default=seeds, help="number of seeds (default %(default)s)")
    g.add_argument("--iterations", type=int, default=300, help="teaching iterations (default 300)")
    g.add_argument("--batch-size", type=int, default=1, help="samples per teaching step")
    g.add_argument("--data-root", default=None,
                   help="folder with the MNIST idx .gz files (else $DHT_FAST_DATA, else "
                        "../shared/data)")
    g.add_argument("--backend", default="auto", choices=("auto",) + DISPATCH.names,
                   help="backend of the teaching-objective op (default auto)")
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the tensors are small, and on a busy "
                        "machine thread hand-offs cost more than they save)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument("--resume", metavar="DIR", default=None,
                   help="continue a killed run in its folder DIR, with the config it stored "
                        "(the other options are then ignored)")
    g = parser.add_argument_group("learner and teachers")
    g.add_argument("--lr", type=float, default=1e-3, help="learner SGD step (default 1e-3)")
    g.add_argument("--no-bias", action="store_true", help="learner without bias")
    g.add_argument("--init-scale", type=float, default=1.0,
                   help="std of the learner's random initial weights (default 1)")
    g.add_argument("--greedy-steps", type=int, default=greedy_steps,
                   help="optimizer steps per synthesized sample (default %(default)s)")
    g.add_argument("--greedy-starts", type=int, default=1,
                   help="starting points optimized together per sample (default 1)")
    g.add_argument("--greedy-step-size", type=float, default=0.02, help="Adam step (0.02)")
    g.add_argument("--label-step-size", type=float, default=0.02,
                   help="Adam step of the soft label in greedy-label (0.02)")


def config_from_args(args, *, datasets, teachers) -> TeachConfig:
    for flag in ("seeds", "threads"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    try:
        return TeachConfig(
            datasets=list(datasets), teachers=list(teachers), seeds=list(range(args.seeds)),
            iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
            bias=not args.no_bias, init_scale=args.init_scale, greedy_steps=args.greedy_steps,
            greedy_step_size=args.greedy_step_size, greedy_starts=args.greedy_starts,
            label_step_size=args.label_step_size, data_root=args.data_root,
            backend=args.backend, device=args.device)
    except ConfigError as err:
        raise CliError(_as_option(str(err))) from None


def _as_option(message: str) -> str:
    """``batch_size must ...`` -> ``--batch-size must ...``: name the flag the user typed."""
    name, _, rest = message.partition(" ")
    return f"--{name.replace('_', '-')} {rest}"


def execute(cfg: TeachConfig, args, *, name: str) -> int:
    """Run, print the summary table and where the results are; user errors become CliError."""
    torch.set_num_threads(args.threads)
    try:
        folder, summary = run_experiment(cfg, args.out, name=name, progress=not args.no_progress,
                                         resume=args.resume)
    except (DatasetNotFound, BackendUnavailable, ConfigError) as err:
        raise CliError(str(err)) from None
    print(format_summary(summary))
    print(f"\nresults: {folder}")
    return 0


def format_summary(rows) -> str:
    """The summary rows as a markdown table."""
    cols = [c for c in SUMMARY_COLUMNS if c not in ("seeds", "iterations")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    seeds, iters = rows[0]["seeds"], rows[0]["iterations"]
    return "\n".join(lines) + f"\n\n({seeds} seeds, {iters} iterations; mean and std over seeds)"
