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
from dataclasses import dataclass
from typing import Any

from guestagent import tunable as tunables
from guestagent.devices.irqbalance import IRQ_MODES, IrqMode
from guestagent.devices.model import is_bdf
from guestagent.devices.state import STATE_FILE
from guestagent.errors import InputError
from guestagent.tunable import setting, tunable

#: Largest per-node hugepage count accepted (2 MiB pages: 2 TiB).
MAX_HUGEPAGES = 1 << 20
SECTION = "devices"

#: The job's own key (no policy field).
ENABLED = setting(
    "enabled", True,
    "Bind passthrough PCI devices to their NUMA node (IRQs, numa_node, optional rebind "
    "and hugepages); everything is undone on stop.")
#: Keys the job reads itself (no policy field).
JOB_KEYS = (ENABLED,)


def parse_override(item: str, source: str) -> tuple[str, int]:
    """``"0000:00:05.0=1"`` -> ``("0000:00:05.0", 1)``."""
    bdf, sep, node = item.partition("=")
    bdf, node = bdf.strip(" "), node.strip(" ")
    if not sep or not is_bdf(bdf) or not re.fullmatch(r"\d{1,4}", node):
        raise InputError(source, "expected BDF=N like 0000:00:05.0=1", item)
    return bdf, int(node)


def parse_overrides(items: list[str], source: str) -> dict[str, int]:
    """The TOML form ``["0000:00:05.0=1", ...]`` as the policy's ``{bdf: node}``."""
    return dict(parse_override(str(item), source) for item in items)


@dataclass
class DevicesConfig:
    """The devices job's policy configuration; each tunable is declared here once (its key in
    ``[devices]``, its documentation, bounds and default: :mod:`guestagent.tunable`)."""

    write_numa_node: bool = tunable(
        True,
        "Write a device's numa_node where the kernel says -1 and Dom0 or node_overrides "
        "know the node. This taints the kernel (flag I, TAINT_FIRMWARE_WORKAROUND).")
    rebind: bool = tunable(
        False,
        "After writing numa_node, unbind and rebind the driver so its rings and DMA buffers "
        "are allocated on the node. Never done for the root file system's or the default "
        "route's device.")
    irqbalance: IrqMode = tunable(
        "auto",
        "IRQ affinity and irqbalance: `auto` (pin the IRQs, unless irqbalance runs without "
        "guestagent's policy script: then leave them to it), `defer` (never pin), `pin` "
        "(always pin; warns while irqbalance runs without the policy script). The packages' "
        "drop-in for irqbalance.service passes the script, which bans the pinned IRQs.",
        choices=IRQ_MODES)
    hugepages_2m_per_node: int = tunable(
        0,
        "Reserve this many 2 MiB hugepages on each node that has a device (0: off).",
        minimum=0, maximum=MAX_HUGEPAGES)
    node_overrides: dict[str, int] = tunable(
        [],
        "Node for devices neither the kernel nor Dom0 places, as `BDF=N` strings, e.g. "
        "[\"0000:00:05.0=1\"].",
        # Entries of a mapping are validated by ConfigHintSource and validate_hints.
        convert=parse_overrides, policy_form=dict)
    #: Not a key: ``[agent] state_dir`` + ``/devices.json``.
    state_file: str = STATE_FILE

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "devices config") -> DevicesConfig:
        """From a mapping nobody has checked yet (Python callers): every key is validated here,
        as the loader validates a file's (:func:`guestagent.tunable.checked`).

        Besides the ``[devices]`` keys it takes ``state_file`` and ``node_overrides`` as a mapping.
        """
        known = {name for name, _ in tunables.tunables(cls)} | {"state_file"}
        for key in data:
            if key not in known:
                raise InputError(f"{source} {key}", "unknown key", key)
        cfg = cls(**tunables.checked(cls, data, source))
        if "state_file" in data:
            path = data["state_file"]
            if not isinstance(path, str) or not path.startswith("/"):
                raise InputError(f"{source} state_file", "expected an absolute path", path)
            cfg.state_file = path
        return cfg

    @classmethod
    def from_agent_config(cls, config: Any) -> DevicesConfig:
        """From the agent's :class:`guestagent.config.Config`: its ``[devices]`` section (checked
        by the loader against :func:`config_keys`; only ``convert`` runs here) and ``[agent]
        state_dir``."""
        try:
            section = dict(config.section(SECTION))
        except KeyError:
            section = {}
        cfg = tunables.from_section(cls, section, f"[{SECTION}]")
        try:
            state_dir = str(config.get("agent", "state_dir")).rstrip("/")
        except KeyError:
            state_dir = ""
        if state_dir.startswith("/"):
            cfg.state_file = f"{state_dir}/devices.json"
        return cfg


def section_problems(config: Any) -> list[tuple[str, str, object, str]]:
    """What ``config check`` finds wrong in ``[devices]`` beyond each key's type: every
    ``node_overrides`` entry must parse (as the job parses it at start)."""
    return tunables.section_problems(DevicesConfig, config, SECTION)


def config_keys() -> tuple[tunables.Key, ...]:
    """The ``[devices]`` keys to add to :data:`guestagent.config.KEYS`: ``enabled``, then every
    tunable of :class:`DevicesConfig`."""
    return (*tunables.section_keys(SECTION, JOB_KEYS), *tunables.keys(DevicesConfig, SECTION))


def policy_classes() -> tuple[type, ...]:
    """The policy configurations whose fields are ``[devices]`` keys."""
    return (DevicesConfig,)
