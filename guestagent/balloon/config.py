"""The ``[balloon]`` configuration keys, each declared once (:mod:`guestagent.tunable`), and how a
section becomes a policy configuration.

The policy fields take their defaults from these declarations (``PolicyConfig.floor_kb =
FLOOR.field()``: ``floor_mb`` in MiB, the field in KiB); ``interval_seconds`` is one declaration
for the two policies that have an interval. This module imports no policy at load time (the
policies import it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guestagent.tunable import Key, as_float, scaled, section_keys, setting
from guestagent.units import MIB_KB

if TYPE_CHECKING:
    from guestagent.balloon.common import PolicyConfig

SECTION = "balloon"


def _reserved(value: Any, source: str) -> int | None:
    """``reserved_mb``: -1 (the kernel's default, 10 % of MemTotal) is None in the policy."""
    reserved = int(value)
    return None if reserved < 0 else reserved


ENABLED = setting(
    "enabled", False,
    "Size the guest to its working set and give the rest back to Xen. Off by default: "
    "turn it on per image or from cloud-init. On stop the target goes back to the "
    "toolstack's ceiling.")
LOCK_MEMORY = setting(
    "lock_memory", True,
    "While ballooning, keep the agent's own pages in RAM (mlockall with MCL_ONFAULT: its "
    "resident set, about 20-25 MiB), so it can still answer a memory spike while the "
    "guest evicts every other page. Needs CAP_IPC_LOCK (the systemd unit grants it).")
ALLOW_HVM = setting(
    "allow_hvm", False,
    "Move memory in an HVM guest too. Off by default: in an HVM guest the job holds the "
    "toolstack's ceiling (as the `none` policy does) and says why once, because HVM guests on "
    "the test bed were lost in 3 of 16 runs (a guest kernel panic while the driver gave memory "
    "back; docs/BALLOON.md). On: the policy runs there, with one warning at its start. PV and "
    "PVH guests are not affected.")
#: The policy's name (``guestagent.balloon.policy.POLICY_NAMES`` and ``DEFAULT_POLICY``).
POLICY = setting(
    "policy", "pressure",
    "`pressure` (feedback on PSI memory pressure, the default when enabled), `classic` "
    "(the old kernel self-balloon algorithm) or `none` (hold the ceiling).",
    choices=("none", "classic", "pressure"))
#: ``PolicyConfig.floor_kb`` (KiB).
FLOOR = setting(
    "floor_mb", 0,
    "Never balloon below this (MiB). A hard minimum of max(256 MiB, static-max/16) "
    "applies whatever this says.",
    minimum=0, maximum=1 << 22, convert=scaled(MIB_KB))
#: ``interval_s`` of ``PressureConfig`` and ``ClassicConfig``; 0 is each policy's own
#: (``own_interval_s``), set when the configuration is made.
INTERVAL = setting(
    "interval_seconds", 0.0,
    "How often the policy looks at the signals when no PSI trigger fires (seconds, 1-300). "
    "0, the default: the policy's own, 1 s for `pressure` (a rise of use is answered within "
    "a second) and 5 s for `classic` (the kernel's).",
    minimum=0, maximum=300, convert=as_float)
#: ``PressureConfig.psi_target_pct``.
PSI_TARGET = setting(
    "psi_target_pct", 0.2,
    "pressure: shrink only while memory stall stays under this share of time (%).",
    minimum=0.01, maximum=10, convert=as_float)
#: ``PressureConfig.psi_grow_pct``.
PSI_GROW = setting(
    "psi_grow_pct", 2.0,
    "pressure: grow at once when memory stall over an interval reaches this (%).",
    minimum=0.1, maximum=50, convert=as_float)
#: ``PressureConfig.reserve_min_kb`` (KiB).
RESERVE = setting(
    "reserve_mb", 32,
    "pressure: the reserve R, at least this (MiB) at a decision a second, scaled up with "
    "a slower interval_seconds (x3 at 5 s); R is the larger of it and 3 % of the ceiling. "
    "The guest keeps 2R available at a burst's peak and R plus room for the largest burst "
    "seen between bursts; smaller holds less memory and leaves less room before a spike "
    "must wait for a grow.",
    minimum=16, maximum=1 << 22, convert=scaled(MIB_KB))
#: ``PressureConfig.shrink_interval_s``.
PROBE_INTERVAL = setting(
    "probe_interval_seconds", 5.0,
    "pressure: at most one shrink (a probe) per this many seconds, so that a shrink's "
    "reclaim shows in PSI before the next one; 0: a probe may follow at every decision.",
    minimum=0, maximum=300, convert=as_float)
#: ``ClassicConfig.reserved_mb`` (None: the kernel's default).
RESERVED = setting(
    "reserved_mb", -1,
    "classic: headroom above Committed_AS (MiB); -1 means the kernel's default of 10 % "
    "of RAM.",
    minimum=-1, maximum=1 << 22, convert=_reserved)

#: Keys the job reads itself (no policy field).
JOB_KEYS = (ENABLED, LOCK_MEMORY, POLICY, ALLOW_HVM)
#: Keys that are fields of the policy configurations (:func:`policy_classes`).
POLICY_KEYS = (FLOOR, INTERVAL, PSI_TARGET, PSI_GROW, RESERVE, PROBE_INTERVAL, RESERVED)


def config_keys() -> tuple[Key, ...]:
    """The ``[balloon]`` keys for :data:`guestagent.config.KEYS`."""
    return section_keys(SECTION, JOB_KEYS + POLICY_KEYS)


def policy_classes() -> tuple[type, ...]:
    """The policy configurations whose fields are ``[balloon]`` keys."""
    from guestagent.balloon.policy import ClassicConfig, NoneConfig, PressureConfig

    return (PressureConfig, ClassicConfig, NoneConfig)


def policy_config(section: dict[str, Any]) -> PolicyConfig:
    """The policy configuration for a validated ``[balloon]`` section: the named policy with the
    keys that are its fields (the others keep their defaults)."""
    from guestagent.balloon.policy import default_config
    from guestagent.tunable import from_section

    return from_section(type(default_config(str(section["policy"]))), section, f"[{SECTION}]")


def section_problems(config: Any) -> list[tuple[str, str, object, str]]:
    """What ``config check`` finds wrong in ``[balloon]`` across keys (e.g. ``psi_target_pct``
    below ``psi_grow_pct``): the policy configuration built and validated exactly as the balloon
    job does when it starts, so a file that check accepts is one the job accepts."""
    from guestagent.errors import InputError

    section = config.section(SECTION)
    try:
        policy_config(section).validate()
    except InputError as e:
        # The source names the policy field(s): "balloon config psi_target_pct/psi_grow_pct".
        fields = e.source.rpartition(" ")[2].split("/")
        name = next((f for f in fields if f in section and (SECTION, f) in config.origins),
                    fields[0] if fields[0] in section else "policy")
        return [(SECTION, name, section.get(name), e.reason)]
    return []
