"""Command line: every command is a job run once.

Feature packages add their own sub-commands through a ``register(subparsers)`` function in their
``commands`` module; each sub-command sets ``func(args, ctx) -> int`` as its handler.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Callable

from guestagent import __version__
from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS

#: Modules that contribute sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "guestagent.topology.commands",
    "guestagent.publish",
    "guestagent.balloon.commands",
    "guestagent.devices.commands",
    "guestagent.tiering.commands",
    "guestagent.dom0.commands",
    "guestagent.daemon.commands",
)


@dataclass
class Context:
    """What every command handler gets besides its parsed arguments."""

    hostfs: HostFS


Handler = Callable[[argparse.Namespace, Context], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guestagent",
        description="Make a Linux guest on a Xen NUMA host NUMA-aware.",
    )
    parser.add_argument("--version", action="version", version=f"guestagent {__version__}")
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="read /sys, /proc, /dev and /run below DIR (default: $GUESTAGENT_ROOT or /)",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "func", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    from guestagent import log

    log.configure(level=args.log_level)
    ctx = Context(hostfs=HostFS.from_env(args.root))
    try:
        return handler(args, ctx)
    except GuestAgentError as e:
        print(f"guestagent: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def run(argv: list[str]) -> int:  # pragma: no cover - convenience for python -m
    return main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
