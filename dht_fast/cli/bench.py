"""``dht-fast bench``: time the teaching-objective ops against torch.func, a per-sample autograd
loop, one GEMM, Opacus and BackPACK; store JSON and render a markdown table and a plot."""
from __future__ import annotations

from pathlib import Path

from dht_fast.cli import CliError


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="B=256, D=784, C=10 only, and 3 repeats unless --repeats is given")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="directory for <device>_<date>.json/.md/.png (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats after warm-up (default: 10, 3 with --quick)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda or auto (cuda when available; default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads before timing (default: torch's choice)")


def run(args) -> int:
    import torch

    from dht_fast.experiments.bench_ops import run_comparison
    from dht_fast.experiments.bench_report import render

    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    if repeats < 1:
        raise CliError(f"--repeats must be >= 1, got {repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device not in ("auto", "cpu", "cuda"):
        raise CliError(f"--device must be cpu, cuda or auto, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available")
    path = run_comparison(args.out, quick=args.quick, repeats=repeats, device=args.device)
    md, png = render(path)
    print(md.read_text())
    print(f"results: {path}\ntable: {md}\nplot: {png}")
    return 0
