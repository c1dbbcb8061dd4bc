"""``dht-fast teach``: teach a linear learner with one or more teachers on one dataset."""
from __future__ import annotations

from dht_fast.cli.common import add_teaching_arguments, config_from_args, execute


def add_arguments(parser) -> None:
    add_teaching_arguments(parser, seeds=3, choose=True)


def run(args) -> int:
    cfg = config_from_args(args, datasets=[args.dataset], teachers=dict.fromkeys(args.teacher))
    return execute(cfg, args, name=f"teach-{args.dataset}")
