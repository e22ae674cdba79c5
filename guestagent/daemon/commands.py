"""``guestagent config check|show|doc`` (and, with the daemon, ``run`` and ``status``), and the
daemon running one job for the long-running commands (:func:`run_one_job`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, Callable

from guestagent import config as config_mod
from guestagent.cli import add_json_option, finite_float, print_json
from guestagent.config import Config
from guestagent.dom0.role import ROLES
from guestagent.errors import GuestAgentError, InputError
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


def named_files(args: argparse.Namespace, ctx: Any) -> tuple[str, str]:
    """The files a command reads: those named on the command line, which must exist (one line,
    exit status 1, when one does not), else the context's defaults, which may be absent."""
    why = config_mod.named_path_problem(getattr(args, "config", None),
                                        getattr(args, "conf_dir", None))
    if why is not None:
        raise GuestAgentError(why)
    paths: tuple[str, str] = ctx.config_paths(args)
    return paths


def config_check(args: argparse.Namespace, ctx: Any) -> int:
    """0 valid; 1 refused (one line per problem on stderr; with ``--json`` also the document:
    ok, files, problems)."""
    main_file, conf_dir = named_files(args, ctx)
    try:
        cfg = load_checked(main_file, conf_dir, ctx.hostfs)
    except config_mod.ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        print(f"configuration refused: {len(e.problems)} problem(s)", file=sys.stderr)
        if args.json:
            print_json({"ok": False, "files": None, "problems": e.problems})
        return 1
    if args.json:
        print_json({"ok": True, "files": cfg.files, "problems": []})
        return 0
    read = ", ".join(cfg.files) if cfg.files else "no files (defaults only)"
    print(f"configuration ok: {read}")
    return 0


def toml_value(value: Any) -> str:
    """A configuration value as TOML writes it (strings and lists in JSON's notation, which is
    TOML's for these)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def config_show(args: argparse.Namespace, ctx: Any) -> int:
    """The effective configuration: as TOML (a file that reads back the same), or ``--json``."""
    cfg = config_mod.load(*named_files(args, ctx))
    if args.json:
        print_json({"files": cfg.files, "values": cfg.values})
        return 0
    read = ", ".join(cfg.files) if cfg.files else "no files (defaults only)"
    lines = [f"# effective configuration; read: {read}"]
    for section, values in sorted(cfg.values.items()):
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in sorted(values.items())]
    sys.stdout.write("\n".join(lines) + "\n")
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
        ("show", config_show, "print the effective configuration (TOML; --json: JSON)"),
        ("doc", config_doc, "print every key with its type, default and meaning (Markdown)"),
    ):
        sub = actions.add_parser(name, help=text, description=text)
        if name != "doc":
            config_options(sub)
            add_json_option(sub, "print one JSON object (check: ok, files, problems; show: "
                            "files, values)")
        sub.set_defaults(func=func)


def config_options(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (``--file``, its older name, still accepted) and ``--conf-dir DIR``."""
    parser.add_argument(
        "--config", "--file", dest="config", metavar="FILE",
        help=f"main configuration file; it must exist when named (default {config_mod.MAIN_FILE}, "
        "used when present; --file is the older name of this option)")
    parser.add_argument(
        "--conf-dir", metavar="DIR",
        help=f"drop-in directory; it must exist when named (default {config_mod.CONF_DIR}, "
        "used when present)")


#: Jobs in start order: (name, which is also its configuration section; the roles it runs in; the
#: class, imported only when the job is turned on).
JOBS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("topology", ("guest",), "guestagent.topology.job:TopologyJob"),
    ("balloon", ("guest",), "guestagent.balloon.job:BalloonJob"),
    ("devices", ("guest",), "guestagent.devices.job:DevicesJob"),
    ("tiering", ("guest",), "guestagent.tiering.job:TieringJob"),
    ("numa", ("guest",), "guestagent.numa.job:NumaJob"),
    ("dom0", ("dom0",), "guestagent.dom0.job:Dom0Job"),
    ("hostnuma", ("dom0",), "guestagent.hostnuma.job:HostNumaJob"),
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


def resolve_role(cfg: Config, hostfs: HostFS, given: str | None = None) -> str:
    """``guest`` or ``dom0``: ``given`` (``--role``) else ``[agent] role``; ``auto`` detects."""
    role = given or str(cfg.get("agent", "role"))
    if role != "auto":
        return role
    from guestagent.xen.detect import detect_hypervisor

    return "dom0" if detect_hypervisor(hostfs).is_dom0 else "guest"


def configure_logging(args: argparse.Namespace, cfg: Config) -> None:
    """The daemon's logging: the configuration's level and format; ``--log-level`` wins."""
    from guestagent import log

    configured = str(cfg.get("agent", "log_level"))
    level = getattr(args, "log_level", None) or configured  # the command line wins
    log.configure(level=level, json=cfg.get("agent", "log_format") == "json")
    if level != configured:
        log.get_logger("daemon").warning(
            "log_level_from_command_line", command_line=level, configured=configured,
            note="--log-level overrides [agent] log_level")


#: What the daemon needs root for, in the one line a non-root ``run`` prints (exit status 1).
NEEDS_ROOT = ("needs root: it creates its state directory (lock, root-only status socket, undo "
              "journal), writes sysfs and procfs (balloon target, IRQ affinity, DAMON) and opens "
              "/dev/xen; start it as root (systemd: guestagent.service)")


def require_root(command: str, hostfs: HostFS) -> None:
    """One line, before anything is read, when the daemon would run on the real host without
    root (on a fixture tree, ``--root``, it may run as anyone who can write there)."""
    import os

    if hostfs.is_real_host and os.geteuid() != 0:
        raise GuestAgentError(f"{command} {NEEDS_ROOT}")


def _denied(command: str, e: PermissionError) -> GuestAgentError:
    """A permission refused while the daemon starts: one line naming the path and what needs
    root, never an internal error."""
    where = f"{e.filename}: " if e.filename else ""
    return GuestAgentError(f"{where}permission denied: {command} {NEEDS_ROOT}")


def daemon_for(args: argparse.Namespace, ctx: Any) -> Any:
    """``guestagent run`` up to the start: root checked, the configuration loaded (``--config``,
    ``--conf-dir``, else the context's files) and checked, logging set up, the role resolved;
    returns the :class:`~guestagent.daemon.service.Daemon`, not started. Raises ConfigError or
    GuestAgentError (exit 1)."""
    from guestagent.daemon.service import Daemon

    require_root("guestagent run", ctx.hostfs)
    main_file, conf_dir = ctx.config_paths(args)

    def load() -> Config:
        return load_checked(main_file, conf_dir, ctx.hostfs)

    cfg = load()
    configure_logging(args, cfg)
    role = resolve_role(cfg, ctx.hostfs, args.role)
    try:
        return Daemon(ctx.hostfs, cfg, load, make_jobs, role, host=ctx.host)
    except PermissionError as e:
        raise _denied("guestagent run", e) from None


def run_daemon(args: argparse.Namespace, ctx: Any) -> int:
    """``guestagent run``: :func:`daemon_for`, then the daemon until SIGTERM or SIGINT."""
    daemon = daemon_for(args, ctx)
    try:
        daemon.run()
    except PermissionError as e:
        raise _denied("guestagent run", e) from None
    return 0


# --- one job: the long-running commands -----------------------------------------------------

#: A command-line option turned into a configuration key: (the option, section, key, value);
#: a value of None (the option not given) leaves the files' value.
Override = tuple[str, str, str, Any]


def with_overrides(cfg: Config, job: str, overrides: Sequence[Override]) -> Config:
    """``cfg`` with ``job`` the only job turned on and each given option set, checked as a file's
    values are (type, range, the sections' own rules); a problem names the option. Raises
    ConfigError."""
    problems: list[str] = []
    files = list(cfg.files)
    only = {name: {"enabled": name == job} for name, _roles, _target in JOBS}
    config_mod.apply_document(cfg, only, "command line", problems)
    for flag, section, key, value in overrides:
        if value is not None:
            config_mod.apply_document(cfg, {section: {key: value}}, flag, problems)
    cfg.files = [*files, "command line"]
    problems += config_mod.cross_checks(cfg)
    if problems:
        raise config_mod.ConfigError(problems)
    return cfg


def one_job_options(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--conf-dir`` (the files ``run`` reads) and ``--duration``."""
    config_file_options(parser)
    parser.add_argument(
        "--duration", type=finite_float, default=None, metavar="SECONDS",
        help="stop after this many seconds, as on SIGTERM (undo included; default: run until "
        "SIGTERM or SIGINT)")


def run_one_job(
    args: argparse.Namespace,
    ctx: Any,
    job: Any,
    overrides: Sequence[Override],
    role: str,
    xenstore_connect: Callable[[], Any] | None = None,
    command: str = "run",
) -> Any:
    """The daemon running ``job`` alone: the configuration ``run`` reads (``--config``,
    ``--conf-dir``) with the command's options as overrides, the same event loop, status socket,
    signals, undo and journal; until SIGTERM/SIGINT or ``--duration``. Returns the Daemon once
    it has stopped (its ``failure`` says why when the job gave up). Raises GuestAgentError
    (exit 1) when the configuration is refused or the job cannot start here. ``command`` names
    the command to another one the state directory's lock refuses meanwhile."""
    from guestagent.daemon.service import Daemon

    duration = getattr(args, "duration", None)
    if duration is not None and duration <= 0:
        raise InputError("--duration", "must be positive", duration)
    name = f"guestagent {job.name} run"
    require_root(name, ctx.hostfs)
    main_file, conf_dir = named_files(args, ctx)

    def load() -> Config:
        cfg = load_checked(main_file, conf_dir, ctx.hostfs)
        return with_overrides(cfg, job.name, overrides)

    cfg = load()
    configure_logging(args, cfg)
    daemon = Daemon(ctx.hostfs, cfg, load, lambda _cfg, _role: [job], role,
                    xenstore_connect=xenstore_connect, stop_after=duration, one_job=True,
                    command=command, host=ctx.host)
    try:
        daemon.run()
    except PermissionError as e:
        raise _denied(name, e) from None
    return daemon


def observer_config(args: argparse.Namespace, ctx: Any) -> Config:
    """The configuration a job that only reads runs under (``balloon record``): the files ``run``
    reads (``--config``, ``--conf-dir``, else the context's), checked as a file's values are,
    and the daemon's logging from it (``--log-level`` wins). The state directory is not
    checked: an observer uses none. Raises ConfigError or GuestAgentError (exit 1)."""
    cfg = config_mod.load(*named_files(args, ctx))
    configure_logging(args, cfg)
    return cfg


def config_file_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--conf-dir``: the files ``run`` reads."""
    parser.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help=f"main configuration file, read as by run (default {config_mod.MAIN_FILE}, "
        "used when present)")
    parser.add_argument(
        "--conf-dir", metavar="DIR", default=argparse.SUPPRESS,
        help=f"drop-in directory (default {config_mod.CONF_DIR}, used when present)")


def run_observer(args: argparse.Namespace, ctx: Any, cfg: Config, job: Any) -> Any:
    """The daemon running ``job``, which only reads (``balloon record``), under ``cfg``
    (:func:`observer_config`; SIGHUP reads the same files again) and over the command's Host
    (``ctx.host``), until the job is finished, SIGTERM or SIGINT: the same event loop, signals
    and job life, but no state directory lock, no status socket, no metrics (it runs beside the
    unit's daemon, which holds them). Returns the Daemon once it has stopped (``failure`` says
    why when the job ended on an error). Raises GuestAgentError when the job cannot start."""
    from guestagent.daemon.service import Daemon

    files = named_files(args, ctx)
    daemon = Daemon(ctx.hostfs, cfg, lambda: config_mod.load(*files),
                    lambda _cfg, _role: [job], "guest", one_job=True, observer=True,
                    host=ctx.host)
    daemon.run()
    return daemon


#: ``status``'s exit status when no daemon runs (LSB init scripts: "program is not running").
EXIT_NOT_RUNNING = 3


def show_status(args: argparse.Namespace, ctx: Any) -> int:
    """0: the daemon answered; 3: no daemon runs (no status socket, or nobody listens on it);
    1: any other failure (permission denied, no answer in time, an answer that is not JSON)."""
    from guestagent.daemon.service import DaemonNotRunning, read_status

    try:
        status = read_status(str(ctx.hostfs.path(args.state_dir)))
    except DaemonNotRunning as e:
        print(f"guestagent: {e}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if args.json:
        print_json(status)
    else:
        print_status(status)
    return 0


def print_status(status: dict[str, Any]) -> None:
    """The daemon's status (:meth:`~guestagent.daemon.service.Daemon.status`) for people: a line
    for the daemon, one per job, then its figures (no Python repr: :func:`human_value`)."""
    print(f"guestagent {status['version']} (pid {status['pid']}), role {status['role']}")
    print(f"xenstore: {status['xenstore']}; resumes seen: {status['resumes']}")
    for name, job in status["jobs"].items():
        state = "running" if job.get("running") else f"off: {job.get('error', 'stopped')}"
        print(f"  {name:10} {state}")
        for key, value in sorted(job.items()):
            if key in ("running", "error"):
                continue
            if isinstance(value, dict):  # e.g. the numa job's figures by vnode
                print(f"  {'':10} {key}:")
                for sub, inner in sorted(value.items()):
                    print(f"  {'':12} {sub}: {human_value(inner)}")
            else:
                print(f"  {'':10} {key}: {human_value(value)}")


def human_value(value: Any) -> str:
    """A status value for people: ``-`` for none, lists comma-joined, mappings as ``k=v``
    (never a Python repr such as ``None`` or ``['sysfs']``; ``--json`` has the values)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(human_value(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={human_value(v)}" for k, v in sorted(value.items())) or "-"
    return str(value)


def register_daemon(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the agent: every enabled job on one event loop (systemd Type=notify)",
        description="Run the daemon. SIGHUP reloads the configuration, SIGTERM undoes what the "
        "jobs changed and exits.",
    )
    run.add_argument("--config", metavar="FILE",
                     help=f"main configuration file (default: {config_mod.MAIN_FILE})")
    run.add_argument("--conf-dir", metavar="DIR",
                     help=f"drop-in directory (default: {config_mod.CONF_DIR})")
    run.add_argument("--role", choices=ROLES,
                     help="override [agent] role: 'auto' detects Dom0 from "
                     "/proc/xen/capabilities (default: the configuration's, itself auto)")
    run.set_defaults(func=run_daemon)
    status = subparsers.add_parser(
        "status", help="what the running daemon is doing",
        description="What the running daemon is doing, from its status socket. Exit status 0 "
        "when it answered, 3 when no daemon runs (LSB 'not running'), 1 when it could not be "
        "asked (permission denied: the socket is root-only) or did not answer.")
    add_json_option(status)
    status.add_argument(
        "--state-dir", default=config_mod.DEFAULT_STATE_DIR,
        help="where the daemon's status socket is",
    )
    status.set_defaults(func=show_status)
