"""A tunable declared once (guestagent/tunable.py, issue 14 item 5): the policy default, the
configuration key (hence the loader's validation, docs/CONFIG.md and the cloud-init schema) and
the checks beyond a key's type all come from one dataclass field. The devices job is converted;
a toy policy shows the pattern for the next one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from guestagent import config as config_mod
from guestagent import tunable as tunables
from guestagent.cloudinit.schema import build_schema
from guestagent.devices.config import DevicesConfig, config_keys
from guestagent.errors import InputError
from guestagent.tunable import tunable


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
