"""The ``[tiering]`` configuration keys and the policy configuration they make."""

from __future__ import annotations

from typing import Any

from guestagent.errors import InputError
from guestagent.tiering.model import TieringConfig
from guestagent.units import MIB


def config_keys() -> tuple[Any, ...]:
    """The ``[tiering]`` keys for :data:`guestagent.config.KEYS`."""
    from guestagent.config import Key

    return (
        Key(
            "tiering",
            "enabled",
            False,
            "Move cold pages from a vnode short of free memory to the nearest vnode with room "
            "(DAMON migrate_cold, Linux 6.11+). Off by default; undone on stop.",
        ),
        Key(
            "tiering",
            "backend",
            "auto",
            "`auto` (the first that can serve), `damon` or `tmem` (tmem cannot choose a node: "
            "it is probed and reported, never used to move the guest's pages).",
            choices=("auto", "damon", "tmem"),
        ),
        Key(
            "tiering",
            "interval_seconds",
            10.0,
            "How often the plan is recomputed.",
            minimum=1,
            maximum=600,
        ),
        Key(
            "tiering",
            "source_low_pct",
            10.0,
            "A vnode is short of memory when its free memory falls below this % of its own "
            "MemTotal.",
            minimum=1,
            maximum=90,
        ),
        Key(
            "tiering",
            "source_high_pct",
            15.0,
            "...and stays short until its free memory is back above this %.",
            minimum=1,
            maximum=90,
        ),
        Key(
            "tiering",
            "target_min_pct",
            25.0,
            "A vnode takes cold pages only while its free memory stays above this % (its own "
            "watermark).",
            minimum=1,
            maximum=95,
        ),
        Key(
            "tiering",
            "max_rate_mb",
            64,
            "Upper bound on the migration rate (MiB/s per source vnode).",
            minimum=1,
            maximum=4096,
        ),
    )


def tiering_config(section: dict[str, Any]) -> TieringConfig:
    """A validated ``[tiering]`` section as the policy's configuration (raises InputError when
    the watermarks contradict each other). A ``max_rate_mb`` under the policy's starting (or
    least) rate lowers those to it: the bound is the bound."""
    max_rate = int(section["max_rate_mb"]) * MIB
    defaults = TieringConfig()
    return TieringConfig(
        source_low_pct=float(section["source_low_pct"]),
        source_high_pct=float(section["source_high_pct"]),
        target_min_pct=float(section["target_min_pct"]),
        max_rate=max_rate,
        initial_rate=min(defaults.initial_rate, max_rate),
        min_rate=min(defaults.min_rate, max_rate),
        interval_s=float(section["interval_seconds"]),
    )


def section_problems(config: Any) -> list[tuple[str, str, object, str]]:
    """What ``config check`` finds wrong in ``[tiering]`` across keys (the watermarks' order), by
    building the policy configuration exactly as the job does at start."""
    section = config.section("tiering")
    try:
        tiering_config(section)
    except InputError as e:
        name = e.source.rpartition(" ")[2]
        if name not in section:
            name = "source_low_pct"
        why = e.reason
        if ("tiering", name) not in config.origins:
            # Name the key a file set, so the line points at the file to fix.
            other = next((k for k in section if k != name and k in e.reason
                          and ("tiering", k) in config.origins), None)
            if other is not None:
                why = f"{name} = {section[name]:g} (its default) {e.reason}"
                name = other
        return [("tiering", name, section[name], why)]
    return []
