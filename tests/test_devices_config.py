"""``DevicesConfig``: from a mapping (checked key by key) and from the agent's configuration
(checked once, by the loader; only the BDF=N strings are parsed after it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guestagent import config as config_mod
from guestagent.devices.config import MAX_HUGEPAGES, DevicesConfig
from guestagent.errors import InputError

VF = "0000:00:05.0"


def test_from_mapping_takes_every_key() -> None:
    cfg = DevicesConfig.from_mapping({
        "write_numa_node": False,
        "rebind": True,
        "irqbalance": "pin",
        "hugepages_2m_per_node": MAX_HUGEPAGES,
        "node_overrides": [f"{VF}=1", " 0000:00:06.0 = 0 "],
        "state_file": "/var/lib/ga/devices.json",
    })
    assert cfg == DevicesConfig(write_numa_node=False, rebind=True, irqbalance="pin",
                                hugepages_2m_per_node=MAX_HUGEPAGES,
                                node_overrides={VF: 1, "0000:00:06.0": 0},
                                state_file="/var/lib/ga/devices.json")
    assert DevicesConfig.from_mapping({}) == DevicesConfig()
    assert DevicesConfig.from_mapping({"node_overrides": {VF: 2}}).node_overrides == {VF: 2}


@pytest.mark.parametrize(
    ("data", "where", "why"),
    [
        ({"enabled": True}, "enabled", "unknown key"),
        ({"rebind": "yes"}, "rebind", "expected true or false"),
        ({"write_numa_node": 1}, "write_numa_node", "expected true or false"),
        ({"irqbalance": "fight"}, "irqbalance", "expected one of auto, defer, pin"),
        ({"hugepages_2m_per_node": True}, "hugepages_2m_per_node", "expected an integer"),
        # The loader's messages: one check of a key's type and range for files and callers.
        ({"hugepages_2m_per_node": -1}, "hugepages_2m_per_node", "below the minimum 0"),
        ({"hugepages_2m_per_node": MAX_HUGEPAGES + 1}, "hugepages_2m_per_node",
         f"above the maximum {MAX_HUGEPAGES}"),
        ({"node_overrides": "x=1"}, "node_overrides", "expected"),
        ({"node_overrides": ["eth0=1"]}, "node_overrides", "BDF=N"),
        ({"state_file": "devices.json"}, "state_file", "expected an absolute path"),
        # Keys are checked in this order: an override before the state file.
        ({"node_overrides": ["eth0=1"], "state_file": 1}, "node_overrides", "BDF=N"),
        ({"node_overrides": 1, "hugepages_2m_per_node": -1}, "hugepages_2m_per_node",
         "below the minimum 0"),
    ],
)
def test_from_mapping_names_the_bad_key(data: dict[str, Any], where: str, why: str) -> None:
    with pytest.raises(InputError, match=why) as e:
        DevicesConfig.from_mapping(data, "[test]")
    assert str(e.value).startswith(f"[test] {where}")


def test_from_agent_config(tmp_path: Path) -> None:
    main = tmp_path / "guestagent.toml"
    conf_d = str(tmp_path / "conf.d")
    assert DevicesConfig.from_agent_config(config_mod.load(str(main), conf_d)) == DevicesConfig(
        state_file="/run/guestagent/devices.json")
    main.write_text('[agent]\nstate_dir = "/run/ga/"\n\n'
                    f'[devices]\nenabled = false\nrebind = true\nirqbalance = "defer"\n'
                    f'hugepages_2m_per_node = 8\nnode_overrides = ["{VF}=1"]\n')
    cfg = DevicesConfig.from_agent_config(config_mod.load(str(main), conf_d))
    assert cfg == DevicesConfig(rebind=True, irqbalance="defer", hugepages_2m_per_node=8,
                                node_overrides={VF: 1}, state_file="/run/ga/devices.json")
    main.write_text('[devices]\nnode_overrides = ["eth0=1"]\n')
    with pytest.raises(config_mod.ConfigError, match="BDF=N"):  # config check refuses it
        config_mod.load(str(main), conf_d)
    bad = config_mod.defaults()
    bad.values["devices"]["node_overrides"] = ["eth0=1"]
    with pytest.raises(InputError, match="BDF=N") as e:
        DevicesConfig.from_agent_config(bad)
    assert str(e.value).startswith("[devices] node_overrides")
