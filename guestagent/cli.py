"""Command line: every command is a job run once.

Feature packages add their own sub-commands through a ``register(subparsers)`` function in their
``commands`` module; each sub-command sets ``func(args, ctx) -> int`` as its handler.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable

from guestagent import __version__
from guestagent.errors import GuestAgentError
from guestagent.host import Host
from guestagent.hostfs import HostFS

#: Modules that contribute sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "guestagent.topology.commands",
    "guestagent.publish",
    "guestagent.balloon.commands",
    "guestagent.devices.commands",
    "guestagent.tiering.commands",
    "guestagent.reset",
    "guestagent.dom0.commands",
    "guestagent.daemon.commands",
)

#: The command words each module registers. A command line that names one imports only that
#: module: ``guestagent run`` then loads the daemon, not every feature's command code
#: (tests/test_daemon_footprint.py checks this table against what the modules register).
COMMAND_WORDS: dict[str, str] = {
    "topology": "guestagent.topology.commands",
    "publish": "guestagent.publish",
    "balloon": "guestagent.balloon.commands",
    "devices": "guestagent.devices.commands",
    "tiering": "guestagent.tiering.commands",
    "reset": "guestagent.reset",
    "host": "guestagent.dom0.commands",
    "dom0": "guestagent.dom0.commands",
    "run": "guestagent.daemon.commands",
    "status": "guestagent.daemon.commands",
    "config": "guestagent.daemon.commands",
}
#: Global options that take a value (skipped when looking for the command word).
_VALUE_OPTIONS = ("--root", "--log-level")


@dataclass
class Context:
    """What every command handler gets besides its parsed arguments: the host's file system, the
    host handle (:class:`guestagent.host.Host`) over it, which opens Xen's and the kernel's
    handles on use, and the configuration files read when the command line names none (a test
    passes its own of each)."""

    hostfs: HostFS
    host: Host | None = None
    #: The default main file and drop-in directory (``/etc/guestagent``'s:
    #: ``config.MAIN_FILE`` and ``config.CONF_DIR``); ``--config``/``--conf-dir`` override them.
    config_files: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.host is None:
            self.host = Host(self.hostfs)
        if self.config_files is None:
            from guestagent import config

            self.config_files = (config.MAIN_FILE, config.CONF_DIR)

    def config_paths(self, args: argparse.Namespace) -> tuple[str, str]:
        """The main file and the drop-in directory a command reads: those its ``--config`` and
        ``--conf-dir`` name, else the context's defaults (:attr:`config_files`)."""
        assert self.config_files is not None  # set in __post_init__
        main_file, conf_dir = self.config_files
        return (getattr(args, "config", None) or main_file,
                getattr(args, "conf_dir", None) or conf_dir)


Handler = Callable[[argparse.Namespace, Context], int]


def finite_float(text: str) -> float:
    """An option's number (argparse ``type=``): ``nan`` and ``inf`` are refused, as in the
    configuration (a NaN interval would never fire)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def json_text(doc: Any) -> str:
    """The one JSON style of every ``--json`` (and of ``status``'s and ``config show``'s): indent
    2, keys sorted, ASCII only, no trailing newline (tests/test_cli_json.py holds every command
    to it)."""
    import json

    return json.dumps(doc, indent=2, sort_keys=True)


def print_json(doc: Any) -> None:
    """``doc`` on standard output in :func:`json_text`'s style, with a final newline."""
    sys.stdout.write(json_text(doc) + "\n")


def add_json_option(parser: argparse.ArgumentParser, what: str = "print one JSON object") -> None:
    """``--json``, the same on every command that reports state."""
    parser.add_argument("--json", action="store_true", help=what)


def command_word(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line; None for help, version or an unknown word
    (the whole parser is built then, so help lists every command)."""
    args = iter(argv)
    for arg in args:
        if arg in _VALUE_OPTIONS:
            next(args, None)  # the option's value
        elif arg in ("-h", "--help", "--version"):
            return None
        elif not arg.startswith("-"):
            return arg if arg in COMMAND_WORDS else None
    return None


#: --log-level's choices; without it the level is warning (``run``: the configuration's).
LOG_LEVELS = ("debug", "info", "warning", "error")


def add_global_options(parser: argparse.ArgumentParser, hidden: bool = False) -> None:
    """``--root`` and ``--log-level``. ``hidden``: the copy every sub-command gets, so the options
    may follow the command word too (``guestagent topology --root X``); it sets nothing unless
    given (``SUPPRESS``), so a value before the command word stays, one after it wins, and the
    man page lists them once, under OPTIONS."""
    parser.add_argument(
        "--root",
        metavar="DIR",
        default=argparse.SUPPRESS if hidden else None,
        help=argparse.SUPPRESS if hidden else
        "read /sys, /proc, /dev and /run below DIR (default: $GUESTAGENT_ROOT or /)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS if hidden else None,
        help=argparse.SUPPRESS if hidden else
        "least severe level logged (default: warning; for run the configuration's [agent] "
        "log_level, which this option overrides)",
    )


def _sub_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every sub-command's parser below ``parser``, at any depth."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _sub_parsers(sub)


def terminal_columns(fallback: int = 80) -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil: ``$COLUMNS`` when it is
    a positive number, else the width of the terminal on stdout, else ``fallback``."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else fallback


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with the width measured here: argparse's own imports shutil for it
    (with bz2, lzma: about 0.3 MiB the daemon would keep), and every ``add_argument`` makes a
    formatter. The width is the one argparse would take."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None, **kwargs: Any) -> None:
        width = terminal_columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width, **kwargs)


class Parser(argparse.ArgumentParser):
    """argparse's parser whose formatter is, unless another is named, :class:`HelpFormatter`
    (sub-commands' parsers are of the same class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` (a command word) just that command's module."""
    parser = Parser(
        prog="guestagent",
        description="Make a Linux guest on a Xen NUMA host NUMA-aware. The options below may "
        "also follow the command word.",
    )
    parser.add_argument("--version", action="version", version=f"guestagent {__version__}")
    add_global_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = COMMAND_MODULES if only is None else (COMMAND_WORDS[only],)
    for name in modules:
        import_module(name).register(subparsers)
    for sub in _sub_parsers(parser):
        add_global_options(sub, hidden=True)
        # The deepest command named wins (its defaults are set last): its usage for errors.
        sub.set_defaults(_cli_parser=sub)
        _keep_group_json(sub)
    return parser


def _keep_group_json(group: argparse.ArgumentParser) -> None:
    """A group with ``--json`` of its own (``balloon``, ``devices``, ``tiering``): its actions'
    ``--json`` set nothing unless given, so ``balloon --json status`` is JSON too (an action's
    default would overwrite the group's value)."""
    if "--json" not in group._option_string_actions:
        return
    for action in group._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "--json" in sub._option_string_actions:
                    sub._option_string_actions["--json"].default = argparse.SUPPRESS


def parse(parser: argparse.ArgumentParser, words: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args``, except that arguments nobody takes are reported with the usage of
    the sub-command they were given to, not the program's (exit status 2)."""
    args, extras = parser.parse_known_args(words)
    if extras:
        where: argparse.ArgumentParser = getattr(args, "_cli_parser", parser)
        where.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(
    argv: Sequence[str] | None = None,
    make_host: Callable[[HostFS], Host] | None = None,
    config_files: tuple[str, str] | None = None,
) -> int:
    """The command line; ``make_host`` makes the host handle over the ``--root`` file system
    (a test's fake Host; default :class:`guestagent.host.Host`); ``config_files`` are the main
    file and drop-in directory read when ``--config``/``--conf-dir`` are not given (a test's
    own; default ``/etc/guestagent``'s, :attr:`Context.config_files`)."""
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command_word(words))
    args = parse(parser, words)
    handler: Handler | None = getattr(args, "func", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    from guestagent import log

    log.configure(level=args.log_level or "warning")
    hostfs = HostFS.from_env(args.root)
    ctx = Context(hostfs=hostfs, host=(make_host or Host)(hostfs), config_files=config_files)
    try:
        return handler(args, ctx)
    except GuestAgentError as e:
        print(f"guestagent: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # last resort: one line, never a traceback
        print(f"guestagent: {internal_error(e)}", file=sys.stderr)
        return 1


def internal_error(e: BaseException) -> str:
    """One line for an error nothing expected: its type, its text, and where it was raised
    (the file and line to report)."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return (f"internal error: {type(e).__name__}: {e}{where} "
            "(please report it with this line)")


def run(argv: list[str]) -> int:  # pragma: no cover - convenience for python -m
    return main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
