"""``socp-testbed``: run scenarios against a federation, and manage the ``make up`` federation."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``run`` (scenarios) plus the federation commands of :mod:`testbed.ops`."""
    from testbed import checker, ops, runner, swarm_ops

    parser = argparse.ArgumentParser(prog="socp-testbed", description="SOCP federation testbed.")
    commands = parser.add_subparsers(dest="command", required=True)
    runner.register(commands)
    checker.register(commands)
    ops.register(commands)
    swarm_ops.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``socp-testbed``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
