"""Render a stored comparison result: ``python benchmarks/render.py RESULT.json [...]`` writes
``RESULT.md`` (tables) and ``RESULT.png`` (speedups, log scale) beside each JSON file."""
import argparse
import sys
from pathlib import Path

# Runs from a checkout whether or not dht_fast is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dht_fast.experiments.bench_report import render  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, nargs="+", help="JSON files from benchmarks/compare")
    for path in parser.parse_args().results:
        for out in render(path):
            print(out)
