"""The ``[balloon]`` configuration keys and how they become a policy configuration."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from guestagent.balloon.policy import (
    POLICY_NAMES,
    ClassicConfig,
    PolicyConfig,
    PressureConfig,
    default_config,
)
from guestagent.units import MIB_KB


def config_keys() -> tuple[Any, ...]:
    """The ``[balloon]`` keys for :data:`guestagent.config.KEYS`."""
    from guestagent.config import Key

    return (
        Key(
            "balloon",
            "enabled",
            False,
            "Size the guest to its working set and give the rest back to Xen. Off by default: "
            "turn it on per image or from cloud-init. On stop the target goes back to the "
            "toolstack's ceiling.",
        ),
        Key(
            "balloon",
            "lock_memory",
            True,
            "While ballooning, keep the agent's own pages in RAM (mlockall with MCL_ONFAULT: its "
            "resident set, about 20-25 MiB), so it can still answer a memory spike while the "
            "guest evicts every other page. Needs CAP_IPC_LOCK (the systemd unit grants it).",
        ),
        Key(
            "balloon",
            "policy",
            "pressure",
            "`pressure` (feedback on PSI memory pressure, the default when enabled), `classic` "
            "(the old kernel self-balloon algorithm) or `none` (hold the ceiling).",
            choices=tuple(POLICY_NAMES),
        ),
        Key(
            "balloon",
            "floor_mb",
            0,
            "Never balloon below this (MiB). A hard minimum of max(256 MiB, static-max/16) "
            "applies whatever this says.",
            minimum=0,
            maximum=1 << 22,
        ),
        Key(
            "balloon",
            "interval_seconds",
            5.0,
            "How often the policy looks at the signals when no PSI trigger fires.",
            minimum=1,
            maximum=300,
        ),
        Key(
            "balloon",
            "psi_target_pct",
            0.2,
            "pressure: shrink only while memory stall stays under this share of time (%).",
            minimum=0.01,
            maximum=10,
        ),
        Key(
            "balloon",
            "psi_grow_pct",
            2.0,
            "pressure: grow at once when memory stall over an interval reaches this (%).",
            minimum=0.1,
            maximum=50,
        ),
        Key(
            "balloon",
            "reserved_mb",
            -1,
            "classic: headroom above Committed_AS (MiB); -1 means the kernel's default of 10 % "
            "of RAM.",
            minimum=-1,
            maximum=1 << 22,
        ),
    )


def policy_config(section: dict[str, Any]) -> PolicyConfig:
    """The policy configuration for a validated ``[balloon]`` section."""
    config = default_config(str(section["policy"]))
    common: dict[str, Any] = {"floor_kb": int(section["floor_mb"]) * MIB_KB}
    if isinstance(config, PressureConfig):
        common.update(
            interval_s=float(section["interval_seconds"]),
            psi_target_pct=float(section["psi_target_pct"]),
            psi_grow_pct=float(section["psi_grow_pct"]),
        )
    elif isinstance(config, ClassicConfig):
        reserved = int(section["reserved_mb"])
        common.update(
            interval_s=float(section["interval_seconds"]),
            reserved_mb=None if reserved < 0 else reserved,
        )
    return replace(config, **common)
