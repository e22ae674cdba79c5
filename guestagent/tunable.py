"""A tunable declared once: one key of ``guestagent.toml`` with its default (as the file writes
it), documentation, bounds and, where the policy's form differs, the conversion to it.

A policy whose fields are the keys declares them on its fields::

    @dataclass
    class DevicesConfig:
        rebind: bool = tunable(False, "After writing numa_node, unbind and rebind ...")
        hugepages_2m_per_node: int = tunable(0, "Reserve ...", minimum=0, maximum=MAX_HUGEPAGES)

A key with another name or unit than its policy field, a key two policies share, or a key that is
no policy field (a job's ``enabled``) is declared with :func:`setting`, and the policy field (if
any) is that declaration's :meth:`Tunable.field`::

    MAX_RATE = setting("max_rate_mb", 64, "Upper bound ...", minimum=1, maximum=4096,
                       convert=scaled(MIB))
    class TieringConfig:
        max_rate: int = MAX_RATE.field()      # 64 MiB in bytes: derived, not typed again

Everything else comes from that one declaration:

* the policy default: the field's default is ``convert(default)`` (``TieringConfig().max_rate``);
* the configuration key: :func:`keys` / :func:`section_keys` make the section's :class:`Key`
  rows, so the loader's validation (:func:`guestagent.config.check_value`), ``docs/CONFIG.md``
  (``guestagent config doc``) and the cloud-init schema (:mod:`guestagent.cloudinit.schema`)
  follow it;
* the policy's value from a section the loader has checked: :func:`from_section` (only
  ``convert`` runs: MiB to bytes, ``["BDF=N"]`` to ``{BDF: N}``);
* what ``config check`` finds beyond a key's type and range: :func:`section_problems` runs the
  same ``convert`` (one line per bad entry of a list);
* the checks of a mapping from Python callers: :func:`checked`, the loader's check then
  ``convert``, key by key in declaration order;
* :func:`default_problems`: a policy field whose default is not its declaration's (a test runs it
  over every policy configuration).
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, TypeVar, Union

from guestagent.errors import InputError

METADATA = "guestagent.tunable"

T = TypeVar("T")
#: The file's value and the source to name in an error -> the policy's value (raises InputError).
Convert = Callable[[Any, str], Any]
#: What a key's value can be in a file.
Value = Union[bool, int, float, str, list[str]]


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
    #: The key's name; empty for a declaration on a dataclass field (the key is the field's name).
    name: str = ""

    def to_policy(self, value: Any, source: str) -> Any:
        return self.convert(value, source) if self.convert is not None else value

    def policy_default(self) -> Any:
        """The default in the policy's form: ``convert(default)``."""
        return self.to_policy(copy.deepcopy(self.default), "default")

    def field(self) -> Any:
        """A dataclass field declaring this tunable; its default is :meth:`policy_default`."""
        value = self.policy_default()
        if isinstance(value, (list, dict, set)):
            return field(default_factory=lambda: copy.deepcopy(value), metadata={METADATA: self})
        return field(default=value, metadata={METADATA: self})


@dataclass(frozen=True)
class Key:
    """One key of a ``[section]``: a row of :data:`guestagent.config.KEYS`, made from its
    declaration by :meth:`of` (:func:`keys`, :func:`section_keys`). The constructor of a row
    written by hand (before this module) still works; such a key has no policy field."""

    section: str
    name: str
    default: Value
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    #: The declaration the row was made from (None: written by hand).
    declaration: Tunable | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, section: str, name: str, spec: Tunable) -> Key:
        return cls(section, name, spec.default, spec.doc, spec.choices, spec.minimum,
                   spec.maximum, spec)

    @property
    def spec(self) -> Tunable:
        """The key's declaration."""
        if self.declaration is not None:
            return self.declaration
        return Tunable(self.default, self.doc, self.choices, self.minimum, self.maximum,
                       name=self.name)

    @property
    def kind(self) -> str:
        return type(self.default).__name__


def tunable(default: Any, doc: str, *, choices: tuple[str, ...] = (),
            minimum: float | None = None, maximum: float | None = None,
            convert: Convert | None = None, policy_form: type | None = None) -> Any:
    """A dataclass field declaring one tunable whose key is the field's name."""
    return Tunable(default, doc, choices, minimum, maximum, convert, policy_form).field()


def setting(name: str, default: Any, doc: str, *, choices: tuple[str, ...] = (),
            minimum: float | None = None, maximum: float | None = None,
            convert: Convert | None = None) -> Tunable:
    """A tunable declared by its key's ``name``: a job's own setting (``enabled``), or a policy
    field's declaration (:meth:`Tunable.field`) where the key's name or unit is not the field's."""
    return Tunable(default, doc, choices, minimum, maximum, convert, name=name)


def scaled(factor: int) -> Convert:
    """``convert`` for a key in a larger unit than its field: MiB in the file, KiB or bytes in
    the policy (``int(value) * factor``)."""

    def convert(value: Any, source: str) -> int:
        return int(value) * factor

    return convert


def as_float(value: Any, source: str) -> float:
    """``convert`` for a float field whose key a Python caller may give as an integer."""
    return float(value)


def _key_name(field_name: str, spec: Tunable) -> str:
    return spec.name or field_name


def tunables(cls: type) -> list[tuple[str, Tunable]]:
    """The tunable fields of a policy configuration class, in declaration order."""
    return [(f.name, f.metadata[METADATA]) for f in fields(cls) if METADATA in f.metadata]


def keys(cls: type, section: str) -> tuple[Key, ...]:
    """The ``[section]`` keys of ``cls``'s tunable fields (rows of
    :data:`guestagent.config.KEYS`)."""
    return tuple(Key.of(section, _key_name(name, spec), spec) for name, spec in tunables(cls))


def section_keys(section: str, declared: Sequence[Tunable]) -> tuple[Key, ...]:
    """The ``[section]`` keys of declarations made with :func:`setting`, in their order."""
    return tuple(Key.of(section, spec.name, spec) for spec in declared)


def from_section(cls: Callable[..., T], section: Mapping[str, Any], source: str,
                 **others: Any) -> T:
    """``cls`` from a section whose values the loader has checked against :func:`keys`: only
    ``convert`` runs (raises InputError naming ``source`` and the key). ``others``: fields that
    are not tunables."""
    return cls(**section_values(cls, section, source), **others)  # type: ignore[arg-type]


def section_values(cls: type, section: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The tunable fields of ``cls`` the checked ``section`` sets, in the policy's form (by field
    name; keys the section does not hold are left to the field's default)."""
    values: dict[str, Any] = {}
    for name, spec in tunables(cls):
        key = _key_name(name, spec)
        if key in section:
            values[name] = spec.to_policy(section[key], f"{source} {key}")
    return values


def checked(cls: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The tunables of ``data`` (a mapping nobody has checked, by key name) in the policy's form
    (by field name): each value checked as the loader checks a file's
    (:func:`guestagent.config.check_value`), then converted, in declaration order; the first
    problem raises InputError naming the key."""
    from guestagent.config import check_value

    out: dict[str, Any] = {}
    for name, spec in tunables(cls):
        key = _key_name(name, spec)
        if key not in data:
            continue
        value = data[key]
        if spec.policy_form is not None and isinstance(value, spec.policy_form):
            out[name] = value
            continue
        why = check_value(Key.of("", key, spec), value)
        if why is not None:
            raise InputError(f"{source} {key}", why, value)
        out[name] = spec.to_policy(value, f"{source} {key}")
    return out


def section_problems(cls: type, config: Any, section: str) -> list[tuple[str, str, object, str]]:
    """``(section, key, value, why)`` for every value the tunables' ``convert`` refuses (what
    ``config check`` reports beyond a key's type and range); a list is tried entry by entry."""
    found: list[tuple[str, str, object, str]] = []
    for name, spec in tunables(cls):
        if spec.convert is None:
            continue
        key = _key_name(name, spec)
        value = config.get(section, key)
        for item in ([[entry] for entry in value] if isinstance(value, list) else [value]):
            try:
                spec.convert(item, key)
            except InputError as e:
                shown = item[0] if isinstance(value, list) else item
                found.append((section, key, shown, e.reason))
    return found


def default_problems(cls: type) -> list[str]:
    """One line per tunable field of ``cls`` whose default is not its declaration's
    (``convert(default)``): a default typed twice that has drifted. Empty when they agree."""
    problems: list[str] = []
    for f in fields(cls):
        spec = f.metadata.get(METADATA)
        if spec is None:
            continue
        actual = f.default if f.default_factory is MISSING else f.default_factory()
        wanted = spec.policy_default()
        if actual != wanted or type(actual) is not type(wanted):
            problems.append(f"{cls.__name__}.{f.name} = {actual!r}: its declaration "
                            f"({_key_name(f.name, spec)} = {spec.default!r}) makes {wanted!r}")
    return problems
