"""The ``livertumorseg`` command: one sub-command per job.

Each sub-command module exposes ``register(subparsers)`` which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code. User errors
(:class:`LiverTumorSegError`) become one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Transparent huge pages for PyTorch's CPU allocator: fewer page faults on the large
# activations of 3D windows (measured in the README, "CPU speed"). Read when torch is
# imported, so it is set before any sub-command imports torch; an explicit value wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
from typing import Optional, Sequence

from ..errors import LiverTumorSegError

# The sub-command modules (cli/<name>.py), in help order. Each must exist: a missing one is an
# ImportError, never skipped. Add a command by adding its module and its name here.
SUBCOMMANDS = ["segment", "evaluate", "batch", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livertumorseg",
        description="Liver and liver-tumour segmentation of 3D CT. Not for clinical use.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LiverTumorSegError as exc:
        print(f"livertumorseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("livertumorseg: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
