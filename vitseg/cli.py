"""The `vitseg` command line. Each command lives in the module that does the work and registers itself via
`add_parser(subparsers)`; this file only collects them, parses and turns VitsegError into a readable message
and an exit code (2 config, 3 data, 4 checkpoint, 5 training)."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import VitsegError

# Modules that define `add_parser(subparsers)`; each adds one or more subcommands with `set_defaults(func=...)`.
COMMAND_MODULES = [
    "vitseg.engine.cli",          # train, eval, config, demo
    "vitseg.engine.predict_cli",  # predict
    "vitseg.data.cli",            # data check
    "vitseg.commands.models",     # list, flops, convert
    "vitseg.tools.cli",           # zoo, export, robustness, bench
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitseg", description="Semantic segmentation with Vision Transformers: train, evaluate, predict, "
        "import weights, export and measure.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except VitsegError as e:
        if args.verbose:
            raise
        print(f"vitseg {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
