"""Figure 2 of the paper: omniscient teachers (SGD, IMT, greedy DHT, greedy DHT + label) teaching
a linear learner on half-moons and on MNIST 3 vs 5, with the authors' settings (lr 1e-3, batch 1,
300 iterations, 300 Adam steps of 0.02 per synthesized sample from x0 = 0)."""
from __future__ import annotations

from dht_fast.cli.common import add_teaching_arguments, config_from_args, execute
from dht_fast.experiments.runner import TEACHERS

DATASETS = ("moons", "mnist")


def add_arguments(parser) -> None:
    add_teaching_arguments(parser, seeds=5)


def run(args) -> int:
    cfg = config_from_args(args, datasets=DATASETS, teachers=TEACHERS)
    return execute(cfg, args, name="fig2")
