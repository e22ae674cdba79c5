"""A tunable declared once (guestagent/tunable.py, issue 14 item 5): the policy default, the
configuration key (hence the loader's validation, docs/CONFIG.md and the cloud-init schema) and
the checks beyond a key's type all come from one declaration. Every section is declared so; the
tests below go over every declared key, and a toy policy shows the pattern for the next one."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest

from guestagent import config as config_mod
from guestagent import tunable as tunables
from guestagent.balloon import config as balloon_config
from guestagent.balloon.policy import (
    DEFAULT_POLICY,
    POLICY_NAMES,
    ClassicConfig,
    NoneConfig,
    PressureConfig,
    default_config,
)
from guestagent.cloudinit.schema import build_schema, validate
from guestagent.devices.config import DevicesConfig, config_keys
from guestagent.errors import InputError
from guestagent.tiering import config as tiering_config
from guestagent.tiering.model import TieringConfig
from guestagent.tunable import METADATA, setting, tunable
from guestagent.units import MIB, MIB_KB

ROOT = Path(__file__).resolve().parents[1]


def test_every_devices_key_but_enabled_is_a_policy_field_with_the_same_default() -> None:
    keys = {k.name: k for k in config_keys()}
    fields = dict(tunables.tunables(DevicesConfig))
    assert set(keys) - set(fields) == {"enabled"}
    policy = DevicesConfig()
    for name, spec in fields.items():
        assert keys[name].default == spec.default and keys[name].doc == spec.doc
        assert getattr(policy, name) == spec.to_policy(spec.default, name), name
    # The loader's defaults make the policy's defaults.
    assert DevicesConfig.from_agent_config(config_mod.defaults()) == DevicesConfig(
        state_file="/run/guestagent/devices.json")


def test_the_devices_schema_and_the_loader_follow_the_declaration(tmp_path: Path) -> None:
    props = build_schema()["properties"]["guestagent"]["properties"]["devices"]["properties"]
    assert props["hugepages_2m_per_node"]["maximum"] == 1 << 20
    assert props["irqbalance"]["enum"] == ["auto", "defer", "pin"]
    main = tmp_path / "guestagent.toml"
    main.write_text("[devices]\nhugepages_2m_per_node = 2000000\n")
    with pytest.raises(config_mod.ConfigError, match="above the maximum 1048576"):
        config_mod.load(str(main), str(tmp_path / "conf.d"))


@dataclass
class Toy:
    """A policy configuration as a new feature would declare it."""

    interval_s: float = tunable(10.0, "How often.", minimum=1, maximum=600)
    mode: str = tunable("auto", "The mode.", choices=("auto", "off"))
    pairs: dict[str, int] = tunable([], "NAME=N strings.", convert=lambda items, source: {
        n: _count(v, source) for n, _, v in (str(i).partition("=") for i in items)})
    not_a_key: int = 3


def _count(text: str, source: str) -> int:
    if not text.isdigit():
        raise InputError(source, "expected NAME=N", text)
    return int(text)


def test_one_declaration_makes_the_key_the_default_and_the_checks() -> None:
    keys = tunables.keys(Toy, "toy")
    assert [(k.section, k.name, k.default, k.kind) for k in keys] == [
        ("toy", "interval_s", 10.0, "float"), ("toy", "mode", "auto", "str"),
        ("toy", "pairs", [], "list")]
    assert keys[0].maximum == 600 and keys[1].choices == ("auto", "off")
    assert Toy() == Toy(10.0, "auto", {}, 3)
    assert Toy().pairs is not Toy().pairs, "a mutable default is copied per instance"
    # A checked section: only convert runs; other fields are passed on.
    toy = tunables.from_section(Toy, {"pairs": ["a=1"], "mode": "off"}, "[toy]", not_a_key=4)
    assert toy == Toy(10.0, "off", {"a": 1}, 4)
    # A mapping nobody checked: the loader's check, then convert, in declaration order.
    assert tunables.checked(Toy, {"interval_s": 2, "pairs": ["b=2"]}, "toy") == {
        "interval_s": 2, "pairs": {"b": 2}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"interval_s": 0.5}, "toy interval_s: below the minimum 1"),
        ({"mode": "on", "interval_s": 1e9}, "toy interval_s: above the maximum 600"),
        ({"mode": "on"}, "toy mode: expected one of auto, off"),
        ({"pairs": ["a=x"]}, "toy pairs: expected NAME=N"),
    ]
    for data, message in cases:
        with pytest.raises(InputError, match=message):
            tunables.checked(Toy, data, "toy")


def test_section_problems_names_each_bad_entry_of_a_list() -> None:
    class Section:
        def get(self, section: str, name: str) -> Any:
            assert section == "toy"
            return {"pairs": ["a=1", "b=x", "c=y"]}.get(name)

    assert tunables.section_problems(Toy, Section(), "toy") == [
        ("toy", "pairs", "b=x", "expected NAME=N"), ("toy", "pairs", "c=y", "expected NAME=N")]


# --- every declared key ---------------------------------------------------------------------


def _doc_rows() -> dict[tuple[str, str], list[str]]:
    """docs/CONFIG.md as it is committed: (section, key) -> the cells of its row."""
    rows: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in (ROOT / "docs/CONFIG.md").read_text().splitlines():
        if line.startswith("## ["):
            section = line[4:-1]
        elif line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[(section, cells[0].strip("`"))] = cells
    return rows


def _schema_entry(key: tunables.Key) -> dict[str, Any]:
    guestagent = build_schema()["properties"]["guestagent"]["properties"]
    entry: dict[str, Any] = guestagent[key.section]["properties"][key.name]
    return entry


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _below_and_above(key: tunables.Key) -> list[tuple[float, str]]:
    """Values just outside the declared range and the loader's line for each."""
    step = 1 if key.kind == "int" else 0.001
    cases = []
    if key.minimum is not None:
        cases.append((key.minimum - step, "below the minimum"))
    if key.maximum is not None:
        cases.append((key.maximum + step, "above the maximum"))
    return cases


@pytest.mark.parametrize("key", config_mod.KEYS, ids=lambda k: f"{k.section}.{k.name}")
def test_the_docs_row_the_schema_and_both_validators_follow_the_declaration(
    key: tunables.Key,
) -> None:
    spec = key.spec
    assert (key.default, key.doc, key.choices) == (spec.default, spec.doc, spec.choices)
    assert (key.minimum, key.maximum) == (spec.minimum, spec.maximum)
    # docs/CONFIG.md (as committed): the row says the declared type, default and meaning.
    assert _doc_rows()[(key.section, key.name)] == [
        f"`{key.name}`", key.kind, f"`{_shown(spec.default)}`", spec.doc]
    # The cloud-init schema entry.
    entry = _schema_entry(key)
    assert entry["default"] == spec.default and entry["description"] == spec.doc
    assert entry.get("enum", []) == list(spec.choices)
    assert (entry.get("minimum"), entry.get("maximum")) == (spec.minimum, spec.maximum)
    # The loader and the cloud-init validator accept the default and the bounds ...
    path = f"guestagent.{key.section}.{key.name}"
    for good in [spec.default, *(b for b in (spec.minimum, spec.maximum) if b is not None)]:
        good = int(good) if key.kind == "int" else good
        assert config_mod.check_value(key, good) is None, good
        assert validate(good, entry, path) == [], good
    # ... and refuse just past them, with the same words.
    for bad, words in _below_and_above(key):
        assert words in str(config_mod.check_value(key, bad)), bad
        assert words in " ".join(validate(bad, entry, path)), bad
    if spec.choices:
        assert "expected one of" in str(config_mod.check_value(key, "no-such-choice"))
        assert validate("no-such-choice", entry, path) != []


def _policy_sections() -> list[Any]:
    """The job packages whose section feeds a policy configuration (``policy_classes()``); the
    other sections' keys are all read by their jobs ([numa], [hostnuma], the core keys)."""
    modules = [import_module(name) for name in config_mod.JOB_KEY_MODULES]
    return [m for m in modules if hasattr(m, "policy_classes")]


def test_the_sections_with_a_policy_configuration() -> None:
    assert [m.SECTION for m in _policy_sections()] == ["balloon", "devices", "tiering"]


def _declared_in(section: str) -> list[tunables.Tunable]:
    return [k.spec for k in config_mod.KEYS if k.section == section]


@pytest.mark.parametrize("module", _policy_sections(), ids=lambda m: m.SECTION)
def test_every_policy_field_is_a_declared_key_and_every_declared_key_a_field(module: Any) -> None:
    """A section with a policy configuration: each key that is not the job's own is a field of
    a policy class, made by its declaration (so its default is the declaration's), and each
    tunable field of those classes is one of the section's keys."""
    declared = _declared_in(module.SECTION)
    on_fields = [f.metadata[METADATA] for cls in module.policy_classes()
                 for f in cls.__dataclass_fields__.values() if METADATA in f.metadata]
    for spec in on_fields:
        assert any(spec is d for d in declared), spec
    for spec in declared:
        is_field = any(spec is s for s in on_fields)
        is_job_key = any(spec is s for s in module.JOB_KEYS)
        assert is_field != is_job_key, (spec.name or spec.doc)
    for cls in module.policy_classes():
        assert tunables.default_problems(cls) == [], cls


def test_the_default_sections_make_the_policy_defaults() -> None:
    defaults = config_mod.defaults()
    balloon = defaults.section("balloon")
    assert balloon["policy"] == DEFAULT_POLICY == "pressure"
    # The declared choices are the policies there are.
    assert [default_config(n).name for n in balloon_config.POLICY.choices] == list(POLICY_NAMES)
    for name, cls in (("pressure", PressureConfig), ("classic", ClassicConfig),
                      ("none", NoneConfig)):
        made = balloon_config.policy_config({**balloon, "policy": name})
        assert made == default_config(name) == cls(), name
    assert ClassicConfig().reserved_mb is None  # reserved_mb = -1: the kernel's default
    assert tiering_config.tiering_config(defaults.section("tiering")) == TieringConfig()
    assert TieringConfig().max_rate == 64 * MIB


def test_a_key_in_another_unit_reaches_its_field_converted(tmp_path: Path) -> None:
    main = tmp_path / "guestagent.toml"
    main.write_text("[balloon]\npolicy = \"classic\"\nfloor_mb = 512\ninterval_seconds = 7\n"
                    "reserved_mb = 100\n[tiering]\nmax_rate_mb = 2\ninterval_seconds = 3\n")
    loaded = config_mod.load(str(main), str(tmp_path / "conf.d"))
    classic = balloon_config.policy_config(loaded.section("balloon"))
    assert classic == ClassicConfig(floor_kb=512 * MIB_KB, interval_s=7.0, reserved_mb=100)
    tiering = tiering_config.tiering_config(loaded.section("tiering"))
    assert (tiering.max_rate, tiering.interval_s) == (2 * MIB, 3.0)
    # A bound under the starting rate lowers it (the least rate, 1 MiB/s, stays).
    assert (tiering.initial_rate, tiering.min_rate) == (2 * MIB, 1 * MIB)
    pressure = balloon_config.policy_config({**loaded.section("balloon"), "policy": "pressure"})
    assert isinstance(pressure, PressureConfig)
    assert (pressure.floor_kb, pressure.interval_s) == (512 * MIB_KB, 7.0)


def test_a_policy_default_typed_apart_from_its_declaration_is_found() -> None:
    interval = setting("interval_seconds", 5.0, "How often.", minimum=1, convert=tunables.as_float)
    floor = setting("floor_mb", 1, "Floor.", convert=tunables.scaled(1024))

    @dataclass(frozen=True)
    class Derived:
        interval_s: float = interval.field()
        floor_kb: int = floor.field()

    @dataclass(frozen=True)
    class TypedTwice:
        interval_s: float = field(default=6.0, metadata={METADATA: interval})
        floor_kb: int = field(default=1, metadata={METADATA: floor})  # MiB, not KiB

    assert Derived() == Derived(5.0, 1024)
    assert tunables.default_problems(Derived) == []
    assert tunables.default_problems(TypedTwice) == [
        "TypedTwice.interval_s = 6.0: its declaration (interval_seconds = 5.0) makes 5.0",
        "TypedTwice.floor_kb = 1: its declaration (floor_mb = 1) makes 1024",
    ]
    # A field named apart from its key is read, checked and reported under the key's name.
    assert tunables.keys(Derived, "x")[1].name == "floor_mb"
    assert tunables.from_section(Derived, {"floor_mb": 2}, "[x]") == Derived(5.0, 2048)
    assert tunables.checked(Derived, {"interval_seconds": 3}, "x") == {"interval_s": 3.0}
    with pytest.raises(InputError, match="x interval_seconds: below the minimum 1"):
        tunables.checked(Derived, {"interval_seconds": 0}, "x")


def test_a_row_made_from_a_declaration_equals_one_written_by_hand() -> None:
    """A branch written before tunable.py that adds ``Key(section, name, default, doc, ...)``
    still merges: the row is the same and its ``spec`` is made from it."""
    spec = setting("refresh_seconds", 3600, "How often.", minimum=10, maximum=86400)
    made = tunables.Key.of("topology", "refresh_seconds", spec)
    by_hand = tunables.Key("topology", "refresh_seconds", 3600, "How often.", minimum=10,
                           maximum=86400)
    assert made == by_hand and made.spec is spec
    assert (by_hand.spec.default, by_hand.spec.minimum, by_hand.spec.name) == (
        3600, 10, "refresh_seconds")
    assert config_mod.check_value(by_hand, 9) == config_mod.check_value(made, 9) == (
        "below the minimum 10")
