"""Configuration: ``/etc/guestagent/guestagent.toml`` plus ``/etc/guestagent/conf.d/*.toml``.

Every key, its type, default and meaning is declared once (:mod:`guestagent.tunable`: the core
keys here, a job's in its package's ``config.py``, on its policy configuration where it has one);
:data:`KEYS` holds their rows, ``guestagent config doc`` prints them as Markdown (docs/CONFIG.md is
generated from them and checked by a test) and the cloud-init schema is built from them.
Files are read in order (main file, then conf.d in name order); a later file overrides a key of an
earlier one. Every problem is reported as ``FILE: [section] key = value: what is wrong``; a
configuration with any problem is refused as a whole, so a bad file at reload keeps the old
configuration running.
"""

from __future__ import annotations

import math
import os
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from guestagent.errors import GuestAgentError, show_value
from guestagent.tunable import Key as Key
from guestagent.tunable import Value as Value
from guestagent.tunable import as_float, section_keys, setting

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Debian 12 has 3.11; RHEL 9 (3.9) needs tomli
    import tomli as tomllib

MAIN_FILE = "/etc/guestagent/guestagent.toml"
CONF_DIR = "/etc/guestagent/conf.d"

DEFAULT_STATE_DIR = "/run/guestagent"

# The core keys, each declared once (guestagent.tunable): the jobs' own sections are declared in
# their packages (SECTION_MODULES).
AGENT = (
    setting("role", "auto",
            "Which variant runs: `guest`, `dom0`, or `auto` (Dom0 when "
            "/proc/xen/capabilities says control_d).",
            choices=("auto", "guest", "dom0")),
    setting("log_format", "kv", "Log lines as key=value (`kv`, journal-friendly) or `json`.",
            choices=("kv", "json")),
    setting("log_level", "info", "Least severe level logged.",
            choices=("debug", "info", "warning", "error")),
    setting("state_dir", DEFAULT_STATE_DIR,
            "Runtime state: the status socket and what must be undone after a crash. An absolute "
            "path of the agent's own: a shared directory (/tmp, /run, one others can write to or "
            "with the sticky bit) is refused, never changed; a missing one is created, mode 0700."),
    setting("idle_watchdog_seconds", 720.0,
            "Under systemd's watchdog (the unit's `WatchdogSec=3min`): the timeout the daemon "
            "asks for instead while no job moves memory (balloon and tiering off) and xenstore "
            "is connected, so that the idle daemon wakes to feed it every half of this (10 times "
            "an hour) rather than every 90 s. Never shorter than the unit's; 0 keeps the unit's. "
            "The unit's comes back at once when balloon or tiering starts or xenstore is lost "
            "(docs/FAULTS.md).",
            minimum=0, maximum=86400, convert=as_float),
)
TOPOLOGY = (
    setting("enabled", True,
            "Read the vNUMA topology and publish it in xenstore (data/guestagent)."),
    setting("refresh_seconds", 3600,
            "Re-read and republish at least this often; "
            "resume, migration and CPU hotplug republish at once.",
            minimum=10, maximum=86400),
)
#: ``[dom0] resync_seconds`` (also the default ``dom0 run --resync`` names).
DOM0_RESYNC = setting(
    "resync_seconds", 60.0,
    "In Dom0: a full pass over every guest at least this often, in case a xenstore watch "
    "event was lost.",
    minimum=1, maximum=86400)
DOM0 = (
    setting("enabled", True,
            "In Dom0: publish each guest's passthrough devices with their host NUMA node and "
            "the guest vnode on it (under /local/domain/<domid>/guestagent-dom0, read-only to "
            "the guest). Hints stay published when the agent stops."),
    DOM0_RESYNC,
    setting("own_devices", "off",
            "In Dom0, at start, every resync and on reload (docs/IONUMA.md): pin the IRQs of the "
            "devices Dom0 drives itself (not pciback's) onto the Dom0 vCPUs kept on each "
            "device's node, and netback's and blkback's threads onto those of their guest's "
            "node; nothing for a node no Dom0 vCPU is kept on (Xen's dom0_vcpus_pin or "
            "dom0_nodes place them). `auto` pins the IRQs only while irqbalance does not run "
            "in Dom0 (even with guestagent's policy script, which would ban them only from its "
            "next rescan), `pin` also while it runs (with a warning); both pin the threads. "
            "`off` touches nothing. Journalled in dom0-devices.json, undone when the agent "
            "stops or this turns `off`, and by `guestagent reset` after a crash.",
            choices=("off", "auto", "pin")),
)
METRICS = (
    setting("enabled", False, "Serve metrics in Prometheus text format on `listen`."),
    setting("listen", "127.0.0.1:9731",
            "Address for metrics, `HOST:PORT` (port 1..65535); only loopback addresses are "
            "accepted."),
    setting("textfile", "",
            "Instead of (or besides) serving: write metrics to this file "
            "for node_exporter's textfile collector (empty: off)."),
)

CORE_KEYS: tuple[Key, ...] = (
    *section_keys("agent", AGENT),
    *section_keys("topology", TOPOLOGY),
    *section_keys("dom0", DOM0),
    *section_keys("metrics", METRICS),
)


#: Job packages that declare their own section through a ``config_keys()`` function.
JOB_KEY_MODULES = (
    "guestagent.balloon.config",
    "guestagent.devices.config",
    "guestagent.tiering.config",
    "guestagent.numa.config",
    "guestagent.hostnuma.config",
)


def _all_keys() -> tuple[Key, ...]:
    from importlib import import_module

    keys = list(CORE_KEYS)
    for name in JOB_KEY_MODULES:
        keys.extend(import_module(name).config_keys())
    return tuple(keys)


KEYS: tuple[Key, ...] = _all_keys()


class ConfigError(GuestAgentError):
    """One or more problems; ``problems`` holds one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class Config:
    """The loaded configuration: the values by section, the files read, which file set each key."""

    values: dict[str, dict[str, Value]]
    files: list[str] = field(default_factory=list)
    #: The file that set each key (absent: the default), to name it in a problem.
    origins: dict[tuple[str, str], str] = field(default_factory=dict)

    def get(self, section: str, name: str) -> Any:
        return self.values[section][name]

    def section(self, section: str) -> dict[str, Value]:
        return dict(self.values[section])


def defaults() -> Config:
    values: dict[str, dict[str, Value]] = {}
    for key in KEYS:
        values.setdefault(key.section, {})[key.name] = key.default
    return Config(values)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: A key's kind (the type of its declared default) -> the test of a value and the problem.
_KIND_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "bool": (lambda v: isinstance(v, bool), "expected true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "expected an integer"),
    "float": (_is_number, "expected a number"),
    "str": (lambda v: isinstance(v, str), "expected a string"),
    "list": (lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
             "expected a list of strings"),
}


def check_value(key: Key, value: object) -> str | None:
    """Why ``value`` is not acceptable for ``key``, or None (the one check of a key's type,
    choices and range: files, cloud-config through the loader, Python callers through
    :func:`guestagent.tunable.checked`)."""
    accepts, why = _KIND_CHECKS[key.kind]
    if not accepts(value):
        return why
    if key.choices and value not in key.choices:
        return "expected one of " + ", ".join(key.choices)
    if _is_number(value):
        return _check_number(key, value)  # type: ignore[arg-type]
    return None


def _check_number(key: Key, value: float) -> str | None:
    """Why a number is not acceptable: NaN and infinities pass every comparison, so they are
    refused first (a NaN interval never fires)."""
    if not math.isfinite(value):
        return "expected a finite number"
    if key.minimum is not None and value < key.minimum:
        return f"below the minimum {_bound(key.minimum)}"
    if key.maximum is not None and value > key.maximum:
        return f"above the maximum {_bound(key.maximum)}"
    return None


def _bound(value: float) -> str:
    """A bound as written in the key (1048576, not 1.04858e+06)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def apply_document(
    config: Config, document: Mapping[str, Any], source: str, problems: list[str]
) -> None:
    """Merge one parsed TOML document into ``config``, recording every problem."""
    by_name = {(k.section, k.name): k for k in KEYS}
    sections = {k.section for k in KEYS}
    for section, table in document.items():
        if section not in sections:
            problems.append(
                f"{source}: [{section}]: unknown section (known: {', '.join(sorted(sections))})"
            )
            continue
        if not isinstance(table, dict):
            problems.append(
                f"{source}: {section} = {show_value(table)}: expected a [{section}] table"
            )
            continue
        for name, value in table.items():
            key = by_name.get((section, name))
            if key is None:
                known = ", ".join(k.name for k in KEYS if k.section == section)
                problems.append(f"{source}: [{section}] {name}: unknown key (known: {known})")
                continue
            why = check_value(key, value)
            if why is not None:
                problems.append(f"{source}: [{section}] {name} = {show_value(value)}: {why}")
                continue
            config.values[section][name] = float(value) if key.kind == "float" else value
            config.origins[(section, name)] = source
    config.files.append(source)


#: Directories shared by everyone (or the whole system): never a state directory.
SHARED_DIRS = ("/", "/tmp", "/var/tmp", "/run", "/var/run", "/var", "/dev", "/dev/shm",
               "/run/user", "/run/lock", "/var/lock", "/etc", "/usr", "/home", "/root")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def listen_problem(listen: str) -> str | None:
    """Why ``listen`` is not a loopback ``HOST:PORT`` the metrics server can bind, or None."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or host not in LOOPBACK_HOSTS or not port.isdigit():
        return "expected a loopback address with a port, e.g. 127.0.0.1:9731"
    if not 1 <= int(port) <= 65535:
        return "the port must be 1..65535"
    return None


def state_dir_text_problem(path: str) -> str | None:
    """Why ``path`` cannot be a state directory whatever the host holds, or None."""
    if not path.startswith("/"):
        return "expected an absolute path"
    if ".." in path.split("/"):
        return "expected a path without '..'"
    normal = os.path.normpath(path)
    normal = "/" + normal.lstrip("/")
    if normal in SHARED_DIRS:
        return "a shared system directory; use a directory of the agent's own, e.g. /run/guestagent"
    return None


def state_dir_problem(real_path: str) -> str | None:
    """Why the existing directory at ``real_path`` (on this host) is not the agent's own, or
    None (also when it does not exist yet: the agent creates it, mode 0700).

    The agent never changes the mode of a directory it did not create: a directory that others
    can write to, or that has the sticky bit (as /tmp), is refused instead."""
    try:
        st = os.lstat(real_path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be examined ({os.strerror(e.errno or 0)})"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link; name the directory itself"
    if not stat.S_ISDIR(st.st_mode):
        return "exists and is not a directory"
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not by the agent (uid {os.geteuid()}) or root"
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH):
        return (f"mode {mode:04o}: a shared directory (sticky or writable by others); "
                "the agent needs one of its own and never changes this one")
    return None


def job_section(module: str) -> str:
    """The section a :data:`JOB_KEY_MODULES` entry declares: ``guestagent.<section>.config``."""
    return module.split(".")[1]


def at_defaults(config: Config, section: str) -> bool:
    """True when every key of ``section`` holds its declared default (set by no file, or set to
    the default)."""
    values = config.values.get(section, {})
    return all(values.get(k.name) == k.default for k in KEYS if k.section == section)


def _section_problems(config: Config) -> list[tuple[str, str, object, str]]:
    """The job packages' own checks of their sections (``section_problems``, where a package
    has one): what a key's type and range cannot say, such as ``BDF=N`` strings or low < high."""
    from importlib import import_module

    found: list[tuple[str, str, object, str]] = []
    for name in JOB_KEY_MODULES:
        if at_defaults(config, job_section(name)):
            # The declared defaults pass every check (tests/test_config.py proves it for each
            # package); skipping them keeps the policy modules out of an idle daemon that does
            # not run the job (about 0.5 MiB: benchmarks/README.md, "What each MiB is").
            continue
        check = getattr(import_module(name), "section_problems", None)
        if check is not None:
            found += check(config)
    return found


def cross_checks(config: Config) -> list[str]:
    """Rules beyond one key's type and range: addresses, paths, the jobs' own sections, and
    rules that span keys. Each line names the file that set the key (the same checks as ``run``).
    """
    found: list[tuple[str, str, object, str]] = []
    listen = str(config.get("metrics", "listen"))
    why = listen_problem(listen)
    if why is not None:
        found.append(("metrics", "listen", listen, why))
    state_dir = str(config.get("agent", "state_dir"))
    why = state_dir_text_problem(state_dir)
    if why is not None:
        found.append(("agent", "state_dir", state_dir, why))
    found += _section_problems(config)
    return [problem_line(config, *item) for item in found]


def problem_line(config: Config, section: str, name: str, value: object, why: str) -> str:
    """``FILE: [section] key = value: why``; FILE is the file that set the key."""
    source = config.origins.get((section, name), "default value")
    return f"{source}: [{section}] {name} = {show_value(value)}: {why}"


def host_problems(config: Config, real_state_dir: str) -> list[str]:
    """What the host says against the configuration (``run`` and ``config check``): the state
    directory must be the agent's own."""
    why = state_dir_problem(real_state_dir)
    if why is None:
        return []
    return [problem_line(config, "agent", "state_dir", config.get("agent", "state_dir"), why)]


def load(main_file: str, conf_dir: str) -> Config:
    """Defaults, then the main file (if present), then conf.d/*.toml. Raises ConfigError. The
    files are the caller's: a command's come from its context (``cli.Context.config_paths``),
    whose default is :data:`MAIN_FILE` and :data:`CONF_DIR`."""
    config = defaults()
    problems: list[str] = []
    for path in _config_paths(main_file, conf_dir):
        document = _read_document(path, problems)
        if document is not None:
            apply_document(config, document, str(path), problems)
    problems += cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def named_path_problem(main_file: str | None, conf_dir: str | None) -> str | None:
    """Why a file or directory named on the command line (``--config``, ``--conf-dir``; None:
    not named, the default applies) cannot be the configuration, or None. The defaults may be
    absent (defaults only); a named path must be there: a typo must not check the defaults."""
    for path, flag, want_dir in ((main_file, "--config", False), (conf_dir, "--conf-dir", True)):
        if path is None:
            continue
        try:
            st = os.stat(path)
            if want_dir and stat.S_ISDIR(st.st_mode):
                os.listdir(path)
        except FileNotFoundError:
            return f"{path}: does not exist (named on the command line by {flag})"
        except OSError as e:
            return (f"{path}: cannot be read: {e.strerror or e} "
                    f"(named on the command line by {flag})")
        if want_dir and not stat.S_ISDIR(st.st_mode):
            return f"{path}: not a directory (named on the command line by {flag})"
        if not want_dir and stat.S_ISDIR(st.st_mode):
            return f"{path}: a directory, not a file (named on the command line by {flag})"
    return None


def _config_paths(main_file: str, conf_dir: str) -> list[Path]:
    """The files in the order they apply: the main file (if present), then conf.d/*.toml."""
    paths = [Path(main_file)] if Path(main_file).exists() else []
    directory = Path(conf_dir)
    if directory.is_dir():
        paths += sorted(p for p in directory.iterdir() if p.suffix == ".toml")
    return paths


#: Largest configuration file read (a real one is a few KiB).
MAX_FILE_BYTES = 1 << 20


def _read_file(path: Path) -> str:
    """A regular file's text, read with a bound. Opened non-blocking and checked on the open
    descriptor: a FIFO (which would block) or a device such as /dev/zero (which never ends) is
    refused without reading it. Raises ValueError with the reason."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8")


def _read_document(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """The file's TOML document, or None and one line in ``problems``."""
    try:
        text = _read_file(path)
    except OSError as e:
        problems.append(f"{path}: cannot be read: {e.strerror or e}")
        return None
    except ValueError as e:  # UnicodeDecodeError too
        problems.append(f"{path}: cannot be read: {e}")
        return None
    try:
        document: dict[str, Any] = tomllib.loads(text)
        return document
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{path}: not valid TOML: {e}")
    except (ValueError, RecursionError) as e:  # a 5,000-digit integer, 100,000 nested arrays
        problems.append(f"{path}: not usable TOML: {type(e).__name__}: {str(e)[:120]}")
    return None


def read_state_dir(main_file: str, conf_dir: str) -> tuple[str, list[str]]:
    """``[agent] state_dir`` alone, for the undo commands, which must work whatever else the
    files hold: every other key is ignored, and a file that cannot be read or a value that is not
    usable is skipped (one line each in the returned problems; then the default applies)."""
    value = str(DEFAULT_STATE_DIR)
    problems: list[str] = []
    for path in _config_paths(main_file, conf_dir):
        document = _read_document(path, problems)
        agent = document.get("agent") if document is not None else None
        if not isinstance(agent, dict) or "state_dir" not in agent:
            continue
        candidate = agent["state_dir"]
        why = (state_dir_text_problem(candidate) if isinstance(candidate, str)
               else "expected a string")
        if why is None:
            value = candidate
        else:
            problems.append(f"{path}: [agent] state_dir = {show_value(candidate)}: {why}")
    return value, problems


def markdown() -> str:
    """Every key as a Markdown table per section (docs/CONFIG.md)."""
    lines = [
        "# guestagent configuration",
        "",
        f"Files: `{MAIN_FILE}`, then `{CONF_DIR}/*.toml` in name order (later files override",
        "earlier ones key by key). Check them with `guestagent config check`. Generated from",
        "the declarations (`guestagent/config.py` and each job's `config.py`,",
        "`guestagent/tunable.py`) by `guestagent config doc`.",
    ]
    section = None
    for key in KEYS:
        if key.section != section:
            section = key.section
            lines += [
                "",
                f"## [{section}]",
                "",
                "| key | type | default | meaning |",
                "|---|---|---|---|",
            ]
        default = str(key.default).lower() if isinstance(key.default, bool) else repr(key.default)
        if isinstance(key.default, str):
            default = f'"{key.default}"'
        lines.append(f"| `{key.name}` | {key.kind} | `{default}` | {key.doc} |")
    return "\n".join(lines) + "\n"
