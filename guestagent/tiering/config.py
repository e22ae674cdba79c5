"""The ``[tiering]`` configuration keys, each declared once (:mod:`guestagent.tunable`), and the
policy configuration they make.

The fields of :class:`guestagent.tiering.model.TieringConfig` take their defaults from these
declarations (``max_rate = MAX_RATE.field()``: ``max_rate_mb`` in MiB/s, the field in bytes/s;
``interval_seconds`` is the field ``interval_s``). This module imports no policy at load time
(the model imports it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guestagent.errors import InputError
from guestagent.tunable import Key, as_float, scaled, section_keys, setting
from guestagent.units import MIB

if TYPE_CHECKING:
    from guestagent.tiering.model import TieringConfig

SECTION = "tiering"

ENABLED = setting(
    "enabled", False,
    "Move cold pages from a vnode short of free memory to the nearest vnode with room "
    "(DAMON migrate_cold, Linux 6.11+). Off by default; undone on stop.")
BACKEND = setting(
    "backend", "auto",
    "`auto` (the first that can serve), `damon` or `tmem` (tmem cannot choose a node: "
    "it is probed and reported, never used to move the guest's pages).",
    choices=("auto", "damon", "tmem"))
#: ``TieringConfig.interval_s``.
INTERVAL = setting(
    "interval_seconds", 10.0,
    "How often the plan is recomputed; up to 4 times less often while nothing moves (no vnode "
    "short, or every short one paused for want of a target's room) or while a move's plan "
    "stays the same.",
    minimum=1, maximum=600, convert=as_float)
SOURCE_LOW = setting(
    "source_low_pct", 10.0,
    "A vnode is short of memory when its free memory falls below this % of its own "
    "MemTotal.",
    minimum=1, maximum=90, convert=as_float)
SOURCE_HIGH = setting(
    "source_high_pct", 15.0,
    "...and stays short until its free memory is back above this %.",
    minimum=1, maximum=90, convert=as_float)
TARGET_MIN = setting(
    "target_min_pct", 25.0,
    "A vnode takes cold pages only while its free memory stays above this % (its own "
    "watermark).",
    minimum=1, maximum=95, convert=as_float)
#: ``TieringConfig.max_rate`` (bytes/s).
MAX_RATE = setting(
    "max_rate_mb", 64,
    "Upper bound on the migration rate (MiB/s per source vnode). The rate starts at 4, gains "
    "1 MiB/s per second while pages stay where they were moved and halves when they come "
    "back.",
    minimum=1, maximum=4096, convert=scaled(MIB))

#: Keys the job reads itself (no policy field).
JOB_KEYS = (ENABLED, BACKEND)
#: Keys that are fields of :class:`~guestagent.tiering.model.TieringConfig`.
POLICY_KEYS = (INTERVAL, SOURCE_LOW, SOURCE_HIGH, TARGET_MIN, MAX_RATE)


def config_keys() -> tuple[Key, ...]:
    """The ``[tiering]`` keys for :data:`guestagent.config.KEYS`."""
    return section_keys(SECTION, JOB_KEYS + POLICY_KEYS)


def policy_classes() -> tuple[type, ...]:
    """The policy configuration whose fields are ``[tiering]`` keys."""
    from guestagent.tiering.model import TieringConfig

    return (TieringConfig,)


def tiering_config(section: dict[str, Any]) -> TieringConfig:
    """A validated ``[tiering]`` section as the policy's configuration (raises InputError when
    the watermarks contradict each other). A ``max_rate_mb`` under the policy's starting (or
    least) rate lowers those to it: the bound is the bound."""
    from guestagent.tiering.model import TieringConfig
    from guestagent.tunable import section_values

    values = section_values(TieringConfig, section, f"[{SECTION}]")
    max_rate = values.get("max_rate", MAX_RATE.policy_default())
    defaults = TieringConfig()
    return TieringConfig(
        **values,
        initial_rate=min(defaults.initial_rate, max_rate),
        min_rate=min(defaults.min_rate, max_rate),
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
