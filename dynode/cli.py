"""The ``dynode`` command line (subcommands are added as the workflow lands)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    import dynode

    ap = argparse.ArgumentParser(prog="dynode", description="Continuous-time recurrent networks of "
                                 "the visual system: simulate, record, analyse.")
    ap.add_argument("--version", action="version", version=f"dynode {dynode.__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("info", help="print versions and the available solvers")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        import platform

        import torch

        import dynode

        print(f"dynode {dynode.__version__}, torch {torch.__version__}, python {platform.python_version()}")
        print("solvers: " + ", ".join(dynode.solvers.SOLVERS))
        return 0
    build_parser().print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
