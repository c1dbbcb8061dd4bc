"""``dht-fast reproduce <target>``: each target is ``dht_fast.experiments.<module>`` with
``add_arguments(parser)`` and ``run(args) -> int``."""
from __future__ import annotations

import importlib

TARGETS = {
    "fig2": ("dht_fast.experiments.fig2", "Figure 2: omniscient teachers on half-moons and MNIST"),
    "table1": ("dht_fast.experiments.table1", "Table 1: performative teaching of neural learners"),
}


def add_arguments(parser):
    subs = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, (module, helptext) in TARGETS.items():
        sub = subs.add_parser(name, help=helptext, description=helptext)
        mod = importlib.import_module(module)
        mod.add_arguments(sub)
        sub.set_defaults(_target_run=mod.run)


def run(args) -> int:
    return args._target_run(args)
