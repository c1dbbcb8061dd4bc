"""The comparison run, as a script: ``python benchmarks/compare.py [--quick] [--out DIR]
[--repeats N] [--device cpu|cuda|auto] [--threads N]``, the same as ``dht-fast bench``."""
import sys
from pathlib import Path

# Runs from a checkout whether or not dht_fast is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dht_fast.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
