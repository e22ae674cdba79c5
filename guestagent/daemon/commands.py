"""``guestagent config check|show|doc`` (and, with the daemon, ``run`` and ``status``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from guestagent import config as config_mod
from guestagent.config import Config
from guestagent.hostfs import HostFS


def load_checked(main_file: str, conf_dir: str, hostfs: HostFS) -> Config:
    """The configuration as ``run`` takes it: the files' checks, then the host's (the state
    directory must be the agent's own). Raises ConfigError."""
    cfg = config_mod.load(main_file, conf_dir)
    state_dir = str(cfg.get("agent", "state_dir"))
    problems = config_mod.host_problems(cfg, str(hostfs.path(state_dir)))
    if problems:
        raise config_mod.ConfigError(problems)
    return cfg


def config_check(args: argparse.Namespace, ctx: Any) -> int:
    try:
        cfg = load_checked(args.file, args.conf_dir, ctx.hostfs)
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
    register_daemon(subparsers)
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


#: Jobs in start order: (name, which is also its configuration section; the roles it runs in; the
#: class, imported only when the job is turned on).
JOBS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("topology", ("guest",), "guestagent.topology.job:TopologyJob"),
    ("balloon", ("guest",), "guestagent.balloon.job:BalloonJob"),
    ("devices", ("guest",), "guestagent.devices.job:DevicesJob"),
    ("tiering", ("guest",), "guestagent.tiering.job:TieringJob"),
    ("dom0", ("dom0",), "guestagent.dom0.job:Dom0Job"),
)


def make_jobs(cfg: Config, role: str) -> list[Any]:
    """The jobs the configuration turns on for this role, in start order."""
    from importlib import import_module

    jobs = []
    for name, roles, target in JOBS:
        if role in roles and cfg.get(name, "enabled"):
            module, cls = target.split(":")
            jobs.append(getattr(import_module(module), cls)())
    return jobs


def resolve_role(cfg: Config, hostfs: HostFS) -> str:
    role = str(cfg.get("agent", "role"))
    if role != "auto":
        return role
    from guestagent.xen.detect import detect_hypervisor

    return "dom0" if detect_hypervisor(hostfs).is_dom0 else "guest"


def run_daemon(args: argparse.Namespace, ctx: Any) -> int:
    from guestagent import log
    from guestagent.daemon.service import Daemon

    def load() -> Config:
        return load_checked(args.config, args.conf_dir, ctx.hostfs)

    cfg = load()
    log.configure(
        level=str(cfg.get("agent", "log_level")), json=cfg.get("agent", "log_format") == "json"
    )
    role = args.role or resolve_role(cfg, ctx.hostfs)
    Daemon(ctx.hostfs, cfg, load, make_jobs, role).run()
    return 0


def show_status(args: argparse.Namespace, ctx: Any) -> int:
    from guestagent.daemon.service import read_status

    status = read_status(str(ctx.hostfs.path(args.state_dir)))
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    print(f"guestagent {status['version']} (pid {status['pid']}), role {status['role']}")
    print(f"xenstore: {status['xenstore']}; resumes seen: {status['resumes']}")
    for name, job in status["jobs"].items():
        state = "running" if job.get("running") else f"off: {job.get('error', 'stopped')}"
        print(f"  {name:10} {state}")
        for key, value in sorted(job.items()):
            if key not in ("running", "error"):
                print(f"  {'':10} {key}: {value}")
    return 0


def register_daemon(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the agent: every enabled job on one event loop (systemd Type=notify)",
        description="Run the daemon. SIGHUP reloads the configuration, SIGTERM undoes what the "
        "jobs changed and exits.",
    )
    run.add_argument("--config", default=config_mod.MAIN_FILE, help="main configuration file")
    run.add_argument("--conf-dir", default=config_mod.CONF_DIR, help="drop-in directory")
    run.add_argument("--role", choices=["guest", "dom0"], help="override [agent] role")
    run.set_defaults(func=run_daemon)
    status = subparsers.add_parser("status", help="what the running daemon is doing")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument(
        "--state-dir", default="/run/guestagent", help="where the daemon's status socket is"
    )
    status.set_defaults(func=show_status)
