"""Configuration of the devices job, validated from a mapping (the agent's ``[devices]`` table).

In the agent's TOML configuration (once :func:`config_keys` is in ``guestagent.config.KEYS``)::

    [devices]
    write_numa_node = true           # write numa_node where the kernel says -1 (taints: 'I')
    rebind = false                   # unbind/rebind the driver after writing numa_node
    irqbalance = "auto"              # auto | defer | pin (see guestagent.devices.irqbalance)
    hugepages_2m_per_node = 0        # reserve this many 2 MiB pages on each device node
    node_overrides = ["0000:00:05.0=1"]

The state file is ``[agent] state_dir`` + ``/devices.json``. ``node_overrides`` is also accepted
as a mapping (``{"0000:00:05.0": 1}``) from Python callers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guestagent.devices.irqbalance import IRQ_MODES, IrqMode
from guestagent.devices.model import is_bdf
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
        """From a mapping nobody has checked yet (Python callers): every key is validated here.

        Besides the ``[devices]`` keys it takes ``state_file`` and ``node_overrides`` as a mapping.
        """
        known = {"write_numa_node", "rebind", "irqbalance", "hugepages_2m_per_node",
                 "node_overrides", "state_file"}
        for key in data:
            if key not in known:
                raise InputError(f"{source} {key}", "unknown key", key)
        for key in ("write_numa_node", "rebind"):
            if key in data and not isinstance(data[key], bool):
                raise InputError(f"{source} {key}", "expected true or false", data[key])
        if "irqbalance" in data and data["irqbalance"] not in IRQ_MODES:
            raise InputError(f"{source} irqbalance", f"expected one of {', '.join(IRQ_MODES)}",
                             data["irqbalance"])
        if "hugepages_2m_per_node" in data:
            value = data["hugepages_2m_per_node"]
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    0 <= value <= MAX_HUGEPAGES):
                raise InputError(f"{source} hugepages_2m_per_node",
                                 f"expected an integer 0..{MAX_HUGEPAGES}", value)
        if "node_overrides" in data and not isinstance(data["node_overrides"], (list, dict)):
            raise InputError(f"{source} node_overrides",
                             'expected ["0000:00:05.0=1", ...]', data["node_overrides"])
        cfg = cls._from_section(data, source)
        if "state_file" in data:
            path = data["state_file"]
            if not isinstance(path, str) or not path.startswith("/"):
                raise InputError(f"{source} state_file", "expected an absolute path", path)
            cfg.state_file = path
        return cfg

    @classmethod
    def _from_section(cls, data: Mapping[str, Any], source: str) -> DevicesConfig:
        """From ``[devices]`` keys whose values already have their declared type and range (as
        :func:`guestagent.config.load` checks them against :func:`config_keys`). Only the
        ``node_overrides`` strings are checked here: BDF=N is beyond what a key declares."""
        cfg = cls()
        for key in ("write_numa_node", "rebind", "irqbalance", "hugepages_2m_per_node"):
            if key in data:
                setattr(cfg, key, data[key])
        overrides = data.get("node_overrides")
        if isinstance(overrides, list):
            # The TOML form: ["0000:00:05.0=1", ...].
            cfg.node_overrides = dict(
                parse_override(str(item), f"{source} node_overrides") for item in overrides)
        elif isinstance(overrides, dict):
            # Entries are validated by ConfigHintSource and validate_hints (one line each).
            cfg.node_overrides = dict(overrides)
        return cfg

    @classmethod
    def from_agent_config(cls, config: Any) -> DevicesConfig:
        """From the agent's :class:`guestagent.config.Config`: its ``[devices]`` section (when
        declared, see :data:`CONFIG_KEYS`) and ``[agent] state_dir``."""
        try:
            section = dict(config.section("devices"))
        except KeyError:
            section = {}
        section.pop("enabled", None)
        # The configuration loader validated the section against config_keys(): not again.
        cfg = cls._from_section(section, "[devices]")
        try:
            state_dir = str(config.get("agent", "state_dir")).rstrip("/")
        except KeyError:
            state_dir = ""
        if state_dir.startswith("/"):
            cfg.state_file = f"{state_dir}/devices.json"
        return cfg


def parse_override(item: str, source: str) -> tuple[str, int]:
    """``"0000:00:05.0=1"`` -> ``("0000:00:05.0", 1)``."""
    bdf, sep, node = item.partition("=")
    bdf, node = bdf.strip(" "), node.strip(" ")
    if not sep or not is_bdf(bdf) or not re.fullmatch(r"\d{1,4}", node):
        raise InputError(source, "expected BDF=N like 0000:00:05.0=1", item)
    return bdf, int(node)


def section_problems(config: Any) -> list[tuple[str, str, object, str]]:
    """What ``config check`` finds wrong in ``[devices]`` beyond each key's type: every
    ``node_overrides`` entry must parse (as the job parses it at start)."""
    found: list[tuple[str, str, object, str]] = []
    for item in config.get("devices", "node_overrides"):
        try:
            parse_override(str(item), "node_overrides")
        except InputError as e:
            found.append(("devices", "node_overrides", item, e.reason))
    return found


def config_keys() -> tuple[Any, ...]:
    """The ``[devices]`` keys to add to :data:`guestagent.config.KEYS`."""
    from guestagent.config import Key

    return (
        Key("devices", "enabled", True,
            "Bind passthrough PCI devices to their NUMA node (IRQs, numa_node, optional rebind "
            "and hugepages); everything is undone on stop."),
        Key("devices", "write_numa_node", True,
            "Write a device's numa_node where the kernel says -1 and Dom0 or node_overrides "
            "know the node. This taints the kernel (flag I, TAINT_FIRMWARE_WORKAROUND)."),
        Key("devices", "rebind", False,
            "After writing numa_node, unbind and rebind the driver so its rings and DMA buffers "
            "are allocated on the node. Never done for the root file system's or the default "
            "route's device."),
        Key("devices", "irqbalance", "auto",
            "IRQ affinity and irqbalance: `auto` (leave IRQs to irqbalance while it runs, pin "
            "them otherwise), `defer` (never pin), `pin` (always pin; warns while irqbalance "
            "runs without guestagent's policy script).",
            choices=IRQ_MODES),
        Key("devices", "hugepages_2m_per_node", 0,
            "Reserve this many 2 MiB hugepages on each node that has a device (0: off).",
            minimum=0, maximum=MAX_HUGEPAGES),
        Key("devices", "node_overrides", [],
            "Node for devices neither the kernel nor Dom0 places, as `BDF=N` strings, e.g. "
            "[\"0000:00:05.0=1\"]."),
    )
