"""The ``dht-fast`` command. Each subcommand lives in its own module of this package and exposes
``add_arguments(parser)`` and ``run(args) -> int``; ``reproduce`` does the same one level down
for each experiment (``dht_fast.experiments.<name>``)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "demo": ("dht_fast.cli.demo", "the default run: greedy DHT vs IMT vs SGD on half-moons"),
    "teach": ("dht_fast.cli.teach", "teach a linear learner with one or more teachers"),
    "reproduce": ("dht_fast.cli.reproduce", "reproduce a figure or table of the paper"),
    "bench": ("dht_fast.cli.bench", "time the ops against their baselines"),
}


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (all of them when None), so one
    subcommand's heavy or broken imports never affect another."""
    parser = argparse.ArgumentParser(
        prog="dht-fast", description="Iterative machine teaching by data hallucination."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, helptext) in SUBCOMMANDS.items():
        sub = subs.add_parser(name, help=helptext, description=helptext)
        if command is None or command == name:
            mod = importlib.import_module(module)
            mod.add_arguments(sub)
            sub.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except CliError as err:
        sys.stderr.write(f"dht-fast {args.command}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("dht-fast: interrupted\n")
        return 130
