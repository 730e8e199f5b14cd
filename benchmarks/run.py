"""dynode's benchmark suite: prints a markdown table of ratios measured side by side.

Usage::

    python benchmarks/run.py                 # every benchmark
    python benchmarks/run.py core stimuli    # only modules whose name contains these words
    python benchmarks/run.py --repeats 7 --quick

Each ``benchmarks/bench_*.py`` module defines ``BENCHMARKS``: a list of
:class:`harness.Benchmark`. A benchmark has named contenders (zero-argument callables
made by a setup function); the harness runs every contender once to warm up, then
``repeats`` rounds in which the contenders run interleaved (so drift affects all alike),
and reports medians and the ratio of each contender to the baseline (the first one).
Targets are stated per row; the table says whether each was met. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import format_table, run_benchmark  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("only", nargs="*", help="run modules whose name contains one of these words")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller problems (smoke test of the suite)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for path in sorted(HERE.glob("bench_*.py")):
        if args.only and not any(w in path.stem for w in args.only):
            continue
        mod = importlib.import_module(path.stem)
        for bench in mod.BENCHMARKS:
            print(f"running {path.stem}:{bench.name} ...", file=sys.stderr, flush=True)
            rows.extend(run_benchmark(bench, repeats=args.repeats, quick=args.quick))
    print(f"\ntorch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}"
          f"{' (quick)' if args.quick else ''}\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
