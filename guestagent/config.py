"""Configuration: ``/etc/guestagent/guestagent.toml`` plus ``/etc/guestagent/conf.d/*.toml``.

Every key, its type, default and meaning is declared once, in :data:`KEYS`; ``guestagent config
doc`` prints that table as Markdown (docs/CONFIG.md is generated from it and checked by a test).
Files are read in order (main file, then conf.d in name order); a later file overrides a key of an
earlier one. Every problem is reported as ``FILE: [section] key = value: what is wrong``; a
configuration with any problem is refused as a whole, so a bad file at reload keeps the old
configuration running.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from guestagent.errors import GuestAgentError, show_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Debian 12 has 3.11; RHEL 9 (3.9) needs tomli
    import tomli as tomllib

MAIN_FILE = "/etc/guestagent/guestagent.toml"
CONF_DIR = "/etc/guestagent/conf.d"

Value = Union[bool, int, float, str, list[str]]


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    default: Value
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def kind(self) -> str:
        return type(self.default).__name__


CORE_KEYS: tuple[Key, ...] = (
    # --- agent -------------------------------------------------------------------------------
    Key(
        "agent",
        "role",
        "auto",
        "Which variant runs: `guest`, `dom0`, or `auto` (Dom0 when "
        "/proc/xen/capabilities says control_d).",
        choices=("auto", "guest", "dom0"),
    ),
    Key(
        "agent",
        "log_format",
        "kv",
        "Log lines as key=value (`kv`, journal-friendly) or `json`.",
        choices=("kv", "json"),
    ),
    Key(
        "agent",
        "log_level",
        "info",
        "Least severe level logged.",
        choices=("debug", "info", "warning", "error"),
    ),
    Key(
        "agent",
        "state_dir",
        "/run/guestagent",
        "Runtime state: the status socket and what must be undone after a crash.",
    ),
    # --- topology ----------------------------------------------------------------------------
    Key(
        "topology",
        "enabled",
        True,
        "Read the vNUMA topology and publish it in xenstore (data/guestagent).",
    ),
    Key(
        "topology",
        "refresh_seconds",
        3600,
        "Re-read and republish at least this often; "
        "resume, migration and CPU hotplug republish at once.",
        minimum=10,
        maximum=86400,
    ),
    # --- dom0 --------------------------------------------------------------------------------
    Key(
        "dom0",
        "enabled",
        True,
        "In Dom0: publish each guest's passthrough devices with their "
        "host NUMA node and the guest vnode on it (under /local/domain/<domid>/guestagent-dom0, "
        "read-only to the guest). Hints stay published when the agent stops.",
    ),
    # --- metrics -----------------------------------------------------------------------------
    Key("metrics", "enabled", False, "Serve metrics in Prometheus text format on `listen`."),
    Key(
        "metrics",
        "listen",
        "127.0.0.1:9731",
        "Address for metrics; only loopback addresses are accepted.",
    ),
    Key(
        "metrics",
        "textfile",
        "",
        "Instead of (or besides) serving: write metrics to this file "
        "for node_exporter's textfile collector (empty: off).",
    ),
)


#: Job packages that declare their own section through a ``config_keys()`` function.
JOB_KEY_MODULES = (
    "guestagent.balloon.config",
    "guestagent.devices.config",
    "guestagent.tiering.config",
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
    values: dict[str, dict[str, Value]]
    files: list[str] = field(default_factory=list)

    def get(self, section: str, name: str) -> Any:
        return self.values[section][name]

    def section(self, section: str) -> dict[str, Value]:
        return dict(self.values[section])


def defaults() -> Config:
    values: dict[str, dict[str, Value]] = {}
    for key in KEYS:
        values.setdefault(key.section, {})[key.name] = key.default
    return Config(values)


def _check_value(key: Key, value: object) -> str | None:
    """Why ``value`` is not acceptable for ``key``, or None."""
    if key.kind == "bool":
        if not isinstance(value, bool):
            return "expected true or false"
    elif key.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected an integer"
    elif key.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "expected a number"
    elif key.kind == "str":
        if not isinstance(value, str):
            return "expected a string"
        if key.choices and value not in key.choices:
            return "expected one of " + ", ".join(key.choices)
    elif key.kind == "list" and (
        not isinstance(value, list) or not all(isinstance(v, str) for v in value)
    ):
        return "expected a list of strings"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if key.minimum is not None and value < key.minimum:
            return f"below the minimum {key.minimum:g}"
        if key.maximum is not None and value > key.maximum:
            return f"above the maximum {key.maximum:g}"
    return None


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
            why = _check_value(key, value)
            if why is not None:
                problems.append(f"{source}: [{section}] {name} = {show_value(value)}: {why}")
                continue
            config.values[section][name] = float(value) if key.kind == "float" else value
    config.files.append(source)


def cross_checks(config: Config) -> list[str]:
    """Rules that span keys."""
    problems = []
    listen = str(config.get("metrics", "listen"))
    host = listen.rpartition(":")[0].strip("[]")
    port = listen.rpartition(":")[2]
    if host not in ("127.0.0.1", "::1", "localhost") or not port.isdigit():
        problems.append(
            f"[metrics] listen = {show_value(listen)}: expected a loopback "
            "address with a port, e.g. 127.0.0.1:9731"
        )
    return problems


def load(main_file: str = MAIN_FILE, conf_dir: str = CONF_DIR) -> Config:
    """Defaults, then the main file (if present), then conf.d/*.toml. Raises ConfigError."""
    config = defaults()
    problems: list[str] = []
    paths = [Path(main_file)] if Path(main_file).exists() else []
    directory = Path(conf_dir)
    if directory.is_dir():
        paths += sorted(p for p in directory.iterdir() if p.suffix == ".toml")
    for path in paths:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{path}: cannot be read: {e}")
            continue
        except tomllib.TOMLDecodeError as e:
            problems.append(f"{path}: not valid TOML: {e}")
            continue
        apply_document(config, document, str(path), problems)
    problems += cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def markdown() -> str:
    """Every key as a Markdown table per section (docs/CONFIG.md)."""
    lines = [
        "# guestagent configuration",
        "",
        f"Files: `{MAIN_FILE}`, then `{CONF_DIR}/*.toml` in name order (later files override",
        "earlier ones key by key). Check them with `guestagent config check`. Generated from",
        "`guestagent/config.py` by `guestagent config doc`.",
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
