"""``dht-fast demo``: greedy DHT vs IMT vs SGD on half-moons, about a minute on 2 CPU cores."""
from __future__ import annotations

from dht_fast.cli.common import add_teaching_arguments, config_from_args, execute


def add_arguments(parser) -> None:
    add_teaching_arguments(parser, seeds=3)


def run(args) -> int:
    cfg = config_from_args(args, datasets=["moons"], teachers=["greedy", "imt", "sgd"])
    return execute(cfg, args, name="demo")
