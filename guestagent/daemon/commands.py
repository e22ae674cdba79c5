"""``guestagent config check|show|doc`` (and, with the daemon, ``run`` and ``status``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from guestagent import config as config_mod


def config_check(args: argparse.Namespace, ctx: Any) -> int:
    try:
        cfg = config_mod.load(args.file, args.conf_dir)
    except config_mod.ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        print(f"configuration refused: {len(e.problems)} problem(s)", file=sys.stderr)
        return 1
    read = ", ".join(cfg.files) if cfg.files else "no files (defaults only)"
    print(f"configuration ok: {read}")
    return 0


def config_show(args: argparse.Namespace, ctx: Any) -> int:
    cfg = config_mod.load(args.file, args.conf_dir)
    json.dump({"files": cfg.files, "values": cfg.values}, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def config_doc(args: argparse.Namespace, ctx: Any) -> int:
    sys.stdout.write(config_mod.markdown())
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="check, show or document the configuration")
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    for name, func, text in (
        ("check", config_check, "validate the configuration files; name every problem"),
        ("show", config_show, "print the effective configuration as JSON"),
        ("doc", config_doc, "print every key with its type, default and meaning (Markdown)"),
    ):
        sub = actions.add_parser(name, help=text, description=text)
        sub.add_argument("--file", default=config_mod.MAIN_FILE, help="main configuration file")
        sub.add_argument("--conf-dir", default=config_mod.CONF_DIR, help="drop-in directory")
        sub.set_defaults(func=func)
