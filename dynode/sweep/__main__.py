"""``python -m dynode.sweep point POINT_DIR [--threads N]``: run one point (what the generated
Snakefile runs, with ``--threads`` = the cores its Snakemake job holds). Prints its torch
thread count first (:mod:`dynode.threads`); a bad argument is one line and status 2."""

import argparse
import sys

from dynode.errors import ConfigurationError
from dynode.sweep.run import run_point
from dynode.threads import use_threads

ap = argparse.ArgumentParser(prog="python -m dynode.sweep", description="run one point of a dynode sweep")
ap.add_argument("action", choices=["point"])
ap.add_argument("point_dir")
ap.add_argument("--threads", type=int, default=None, metavar="N",
                help="torch threads (the Snakefile passes Snakemake's threads; default: dynode.threads' policy)")
args = ap.parse_args()
try:
    print(use_threads(args.threads).describe(), flush=True)
except ConfigurationError as exc:
    print(f"{ap.prog}: error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
run_point(args.point_dir)
