"""Configuration of the devices job, validated from a mapping (a JSON file or the daemon config).

Keys (all optional)::

    {
      "write_numa_node": true,        # write numa_node where the kernel says -1 (taints: 'I')
      "rebind": false,                # unbind/rebind the driver after writing numa_node
      "irqbalance": "auto",           # auto | defer | pin (see guestagent.devices.irqbalance)
      "hugepages_2m_per_node": 0,     # reserve this many 2 MiB pages on each device node
      "node_overrides": {"0000:00:05.0": 1},
      "state_file": "/run/guestagent/devices.json"
    }
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guestagent.devices.irqbalance import IRQ_MODES, IrqMode
from guestagent.devices.state import STATE_FILE
from guestagent.errors import InputError

#: Largest per-node hugepage count accepted (2 MiB pages: 2 TiB).
MAX_HUGEPAGES = 1 << 20


@dataclass
class DevicesConfig:
    write_numa_node: bool = True
    rebind: bool = False
    irqbalance: IrqMode = "auto"
    hugepages_2m_per_node: int = 0
    node_overrides: dict[str, int] = field(default_factory=dict)
    state_file: str = STATE_FILE

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "devices config") -> DevicesConfig:
        known = {"write_numa_node", "rebind", "irqbalance", "hugepages_2m_per_node",
                 "node_overrides", "state_file"}
        for key in data:
            if key not in known:
                raise InputError(f"{source} {key}", "unknown key", key)
        cfg = cls()
        for key in ("write_numa_node", "rebind"):
            if key in data:
                if not isinstance(data[key], bool):
                    raise InputError(f"{source} {key}", "expected true or false", data[key])
                setattr(cfg, key, data[key])
        if "irqbalance" in data:
            if data["irqbalance"] not in IRQ_MODES:
                raise InputError(f"{source} irqbalance", f"expected one of {', '.join(IRQ_MODES)}",
                                 data["irqbalance"])
            cfg.irqbalance = data["irqbalance"]
        if "hugepages_2m_per_node" in data:
            value = data["hugepages_2m_per_node"]
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    0 <= value <= MAX_HUGEPAGES):
                raise InputError(f"{source} hugepages_2m_per_node",
                                 f"expected an integer 0..{MAX_HUGEPAGES}", value)
            cfg.hugepages_2m_per_node = value
        if "node_overrides" in data:
            overrides = data["node_overrides"]
            if not isinstance(overrides, dict):
                raise InputError(f"{source} node_overrides",
                                 'expected an object like {"0000:00:05.0": 1}', overrides)
            # Entries are validated by ConfigHintSource and validate_hints (one line each).
            cfg.node_overrides = dict(overrides)
        if "state_file" in data:
            path = data["state_file"]
            if not isinstance(path, str) or not path.startswith("/"):
                raise InputError(f"{source} state_file", "expected an absolute path", path)
            cfg.state_file = path
        return cfg

    @classmethod
    def from_json_text(cls, text: str, source: str) -> DevicesConfig:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(source, f"not JSON: {e}") from None
        if not isinstance(data, dict):
            raise InputError(source, "expected a JSON object", text[:60])
        section = data.get("devices", data)
        if not isinstance(section, dict):
            raise InputError(f"{source} devices", "expected an object", section)
        return cls.from_mapping(section, source)
