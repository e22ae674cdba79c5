"""A tunable declared once: a field of a feature's policy configuration that is also a key of
``guestagent.toml``.

::

    @dataclass
    class DevicesConfig:
        rebind: bool = tunable(False, "After writing numa_node, unbind and rebind ...")
        hugepages_2m_per_node: int = tunable(0, "Reserve ...", minimum=0, maximum=MAX_HUGEPAGES)

Everything else comes from that one declaration:

* the policy default: the field's default (``DevicesConfig().rebind``);
* the configuration key: :func:`keys` makes the section's :class:`guestagent.config.Key` rows, so
  the loader's validation (:func:`guestagent.config.check_value`), ``docs/CONFIG.md``
  (``guestagent config doc``) and the cloud-init schema (:mod:`guestagent.cloudinit.schema`)
  follow it;
* the policy's value from a section the loader has checked: :func:`from_section`, through the
  tunable's ``convert`` where the file's form is not the policy's (``node_overrides``:
  ``["BDF=N"]`` in TOML, ``{BDF: N}`` in the policy);
* what ``config check`` finds beyond a key's type and range: :func:`section_problems` runs the
  same ``convert`` (one line per bad entry of a list);
* the checks of a mapping from Python callers: :func:`checked`, the loader's check then
  ``convert``, key by key in declaration order.

A key that is not a policy field (a job's ``enabled``) is still declared as a plain ``Key``.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable, TypeVar

from guestagent.errors import InputError

METADATA = "guestagent.tunable"

T = TypeVar("T")
#: The file's value and the source to name in an error -> the policy's value (raises InputError).
Convert = Callable[[Any, str], Any]


@dataclass(frozen=True)
class Tunable:
    """One tunable: its key's default (as the file writes it), documentation and bounds."""

    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    convert: Convert | None = None
    #: A value already in the policy's form (Python callers) is taken as is.
    policy_form: type | None = None

    def to_policy(self, value: Any, source: str) -> Any:
        return self.convert(value, source) if self.convert is not None else value


def tunable(default: Any, doc: str, *, choices: tuple[str, ...] = (),
            minimum: float | None = None, maximum: float | None = None,
            convert: Convert | None = None, policy_form: type | None = None) -> Any:
    """A dataclass field declaring one tunable (see the module text)."""
    spec = Tunable(default, doc, choices, minimum, maximum, convert, policy_form)
    value = spec.to_policy(copy.deepcopy(default), "default")
    if isinstance(value, (list, dict, set)):
        return field(default_factory=lambda: copy.deepcopy(value), metadata={METADATA: spec})
    return field(default=value, metadata={METADATA: spec})


def tunables(cls: type) -> list[tuple[str, Tunable]]:
    """The tunable fields of a policy configuration class, in declaration order."""
    return [(f.name, f.metadata[METADATA]) for f in fields(cls) if METADATA in f.metadata]


def keys(cls: type, section: str) -> tuple[Any, ...]:
    """The ``[section]`` keys of ``cls``'s tunables (rows of :data:`guestagent.config.KEYS`)."""
    from guestagent.config import Key

    return tuple(
        Key(section, name, spec.default, spec.doc, choices=spec.choices, minimum=spec.minimum,
            maximum=spec.maximum)
        for name, spec in tunables(cls)
    )


def from_section(cls: Callable[..., T], section: Mapping[str, Any], source: str,
                 **others: Any) -> T:
    """``cls`` from a section whose values the loader has checked against :func:`keys`: only
    ``convert`` runs (raises InputError naming ``source`` and the key). ``others``: fields that
    are not tunables."""
    values = {name: spec.to_policy(section[name], f"{source} {name}")
              for name, spec in tunables(cls) if name in section}  # type: ignore[arg-type]
    return cls(**values, **others)


def checked(cls: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The tunables of ``data`` (a mapping nobody has checked) in the policy's form: each value
    checked as the loader checks a file's (:func:`guestagent.config.check_value`), then
    converted, in declaration order; the first problem raises InputError naming the key."""
    from guestagent.config import check_value

    out: dict[str, Any] = {}
    for key, (name, spec) in zip(keys(cls, ""), tunables(cls)):
        if name not in data:
            continue
        value = data[name]
        if spec.policy_form is not None and isinstance(value, spec.policy_form):
            out[name] = value
            continue
        why = check_value(key, value)
        if why is not None:
            raise InputError(f"{source} {name}", why, value)
        out[name] = spec.to_policy(value, f"{source} {name}")
    return out


def section_problems(cls: type, config: Any, section: str) -> list[tuple[str, str, object, str]]:
    """``(section, key, value, why)`` for every value the tunables' ``convert`` refuses (what
    ``config check`` reports beyond a key's type and range); a list is tried entry by entry."""
    found: list[tuple[str, str, object, str]] = []
    for name, spec in tunables(cls):
        if spec.convert is None:
            continue
        value = config.get(section, name)
        for item in ([[entry] for entry in value] if isinstance(value, list) else [value]):
            try:
                spec.convert(item, name)
            except InputError as e:
                shown = item[0] if isinstance(value, list) else item
                found.append((section, name, shown, e.reason))
    return found
