"""From the cloud-config key ``guestagent:`` to the text of ``/etc/guestagent/guestagent.toml``.

Pure functions, no I/O: :func:`parse` validates the key (against the schema generated from the
daemon's key table, then with the daemon's own checks) and :func:`render_toml` writes TOML. The
writer covers what the configuration uses (tables of booleans, integers, floats, strings and
arrays of those) and refuses anything else by name, rather than depend on a TOML writer package
that Debian 12 and RHEL 9 do not install with cloud-init.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guestagent.errors import GuestAgentError, show_value

#: Written at the top of the file, so an operator knows where it came from.
HEADER = (
    "# Written by cloud-init (module cc_guestagent) from the cloud-config key 'guestagent:'.\n"
    "# It is written again for a new instance; for local changes use conf.d/*.toml.\n"
)

GUEST_UNIT = "guestagent.service"
DOM0_UNIT = "guestagent-dom0.service"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


class CloudConfigError(GuestAgentError):
    """The ``guestagent:`` key is unusable; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("cloud-config guestagent: " + "; ".join(self.problems))


@dataclass(frozen=True)
class CloudSettings:
    """What ``guestagent:`` asks for: the service on or off, and the configuration tables."""

    enabled: bool = True
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        """The unit to turn on or off: the Dom0 variant when the role says so."""
        role = self.sections.get("agent", {}).get("role")
        return DOM0_UNIT if role == "dom0" else GUEST_UNIT


def parse(value: object, source: str = "guestagent") -> CloudSettings:
    """Validate the value of the cloud-config key ``guestagent:``. Raises CloudConfigError."""
    from guestagent.cloudinit.schema import build_schema, validate

    schema = build_schema()["properties"]["guestagent"]
    problems = validate(value, schema, source)
    if problems:
        raise CloudConfigError(problems)
    assert isinstance(value, Mapping)
    enabled = bool(value.get("enabled", True))
    sections = {str(k): dict(v) for k, v in value.items() if k != "enabled"}
    problems = _daemon_checks(sections, source)
    if problems:
        raise CloudConfigError(problems)
    return CloudSettings(enabled=enabled, sections=sections)


def _daemon_checks(sections: dict[str, dict[str, Any]], source: str) -> list[str]:
    """The daemon's own checks (`guestagent config check`), including those across keys."""
    from guestagent import config

    problems: list[str] = []
    merged = config.defaults()
    config.apply_document(merged, sections, source, problems)
    if not problems:
        problems += config.cross_checks(merged)
    return problems


def render_toml(document: Mapping[str, Any], header: str = HEADER) -> str:
    """``document`` as TOML text: top-level scalars first, then one ``[table]`` per mapping.

    Raises CloudConfigError naming the key of a value TOML (or this writer) cannot hold: None,
    dates, arrays of tables, mixed arrays, non-string keys.
    """
    lines: list[str] = [header.rstrip("\n")] if header else []
    problems: list[str] = []
    _render_table(document, (), lines, problems)
    if problems:
        raise CloudConfigError(problems)
    return "\n".join(lines).lstrip("\n") + "\n"


def _render_table(table: Mapping[Any, Any], path: tuple[str, ...], lines: list[str],
                  problems: list[str]) -> None:
    subtables: list[tuple[str, Mapping[Any, Any]]] = []
    for key, value in table.items():
        if not isinstance(key, str):
            problems.append(f"{_dotted(path)}{show_value(key)}: keys must be strings")
            continue
        if isinstance(value, Mapping):
            subtables.append((key, value))
            continue
        try:
            lines.append(f"{_key(key)} = {_value(value)}")
        except ValueError as e:
            problems.append(f"{'.'.join((*path, key))} = {show_value(value)}: {e}")
    for key, sub in subtables:
        sub_path = (*path, key)
        lines += ["", "[" + ".".join(_key(k) for k in sub_path) + "]"]
        _render_table(sub, sub_path, lines, problems)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) + "." if path else ""


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        if any(isinstance(item, (Mapping, list, tuple)) for item in value):
            raise ValueError("arrays of tables or of arrays are not supported")
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if value is None:
        raise ValueError("TOML has no null: leave the key out for its default")
    raise ValueError(f"a {type(value).__name__} cannot be written as TOML (quote it)")

