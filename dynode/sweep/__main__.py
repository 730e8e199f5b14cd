"""``python -m dynode.sweep point POINT_DIR``: run one point (what the generated Snakefile runs)."""

import sys

from dynode.sweep.run import run_point

if len(sys.argv) != 3 or sys.argv[1] != "point":
    print("usage: python -m dynode.sweep point POINT_DIR", file=sys.stderr)
    raise SystemExit(2)
run_point(sys.argv[2])
