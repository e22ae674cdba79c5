"""JSON schema of the cloud-config key ``guestagent:``, and a validator for the subset it uses.

The schema is generated from :data:`guestagent.config.KEYS`, the rows of the keys' declarations
(:mod:`guestagent.tunable`), so every configuration key the daemon knows can be set from
cloud-config, with the same type, choices, bounds and default, and nothing else can. cloud-init
(22.4 in Debian 12) takes module schemas only from its own bundled file, so ``cc_guestagent``
validates with this one itself; the packages ship it as
``/usr/share/guestagent/cloud-config.schema.json`` for editors and linters (``python3 -m
guestagent.cloudinit.schema`` prints it).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guestagent.tunable import Key

#: Keys of ``guestagent:`` itself; every other key is a section of guestagent.toml.
MODULE_KEYS: dict[str, dict[str, Any]] = {
    "enabled": {
        "type": "boolean",
        "default": True,
        "description": "Enable and start the agent's service (false: disable and stop it). "
        "The other keys are written to /etc/guestagent/guestagent.toml either way.",
    },
}

_JSON_TYPES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


def key_schema(key: Key) -> dict[str, Any]:
    """The schema of one key, from its declaration (type, choices, bounds, default, doc)."""
    prop: dict[str, Any]
    if key.kind == "list":
        prop = {"type": "array", "items": {"type": "string"}}
    else:
        prop = {"type": _JSON_TYPES[key.kind]}
    if key.choices:
        prop["enum"] = list(key.choices)
    if key.minimum is not None:
        prop["minimum"] = key.minimum
    if key.maximum is not None:
        prop["maximum"] = key.maximum
    prop["default"] = key.default
    prop["description"] = key.doc
    return prop


def build_schema() -> dict[str, Any]:
    """The schema of a cloud-config document's ``guestagent:`` key."""
    from guestagent.config import KEYS

    sections: dict[str, dict[str, Any]] = {}
    for key in KEYS:
        section = sections.setdefault(key.section, {
            "type": "object",
            "description": f"The [{key.section}] table of /etc/guestagent/guestagent.toml.",
            "additionalProperties": False,
            "properties": {},
        })
        section["properties"][key.name] = key_schema(key)
    return {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "title": "cloud-config key 'guestagent' (cloud-init module cc_guestagent)",
        "type": "object",
        "properties": {
            "guestagent": {
                "type": "object",
                "description": "Configuration of guestagent, written to "
                "/etc/guestagent/guestagent.toml; `enabled` turns the service on or off.",
                "additionalProperties": False,
                "properties": {**MODULE_KEYS, **sections},
            },
        },
    }


def _type_ok(expected: str, value: object) -> bool:
    if expected == "object":
        return isinstance(value, Mapping)
    if expected == "array":
        return isinstance(value, list)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == "string":
        return isinstance(value, str)
    raise ValueError(f"schema type {expected!r} is not supported")


def validate(value: object, schema: Mapping[str, Any], path: str) -> list[str]:
    """Every way ``value`` breaks ``schema``, one line each naming the key path.

    Supports the keywords :func:`build_schema` uses: type, properties, additionalProperties,
    items, enum, minimum, maximum.
    """
    from guestagent.errors import show_value

    expected = schema.get("type")
    if expected is not None and not _type_ok(expected, value):
        return [f"{path} = {show_value(value)}: expected {_article(expected)}"]
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path} = {show_value(value)}: expected one of "
                        + ", ".join(str(v) for v in schema["enum"]))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        problems += _number_problems(value, schema, path)
    if isinstance(value, Mapping):
        problems += _mapping_problems(value, schema, path)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += validate(item, schema["items"], f"{path}[{i}]")
    return problems


def _number_problems(value: float, schema: Mapping[str, Any], path: str) -> list[str]:
    """A number's bounds (a NaN or an infinity is refused before them: it passes every one)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path} = {value}: expected a finite number"]
    problems: list[str] = []
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{path} = {value}: below the minimum {schema['minimum']:g}")
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(f"{path} = {value}: above the maximum {schema['maximum']:g}")
    return problems


def _mapping_problems(value: Mapping[Any, Any], schema: Mapping[str, Any], path: str) -> list[str]:
    """Each known key against its schema; an unknown key where the schema allows none."""
    problems: list[str] = []
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name, item in value.items():
        if name in properties:
            problems += validate(item, properties[name], f"{path}.{name}")
        elif schema.get("additionalProperties", True) is False:
            known = ", ".join(properties)
            problems.append(f"{path}.{name}: unknown key (known: {known})")
    return problems


def _article(json_type: str) -> str:
    return {"object": "a mapping", "array": "a list", "boolean": "true or false",
            "integer": "an integer", "number": "a number", "string": "a string"}[json_type]


def main() -> int:
    json.dump(build_schema(), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
