"""The ``[numa]`` configuration keys, each declared once (:mod:`guestagent.tunable`)."""

from __future__ import annotations

from guestagent.tunable import Key, section_keys, setting

SECTION = "numa"

#: ``balancing`` values: ``leave`` never writes; ``auto`` turns automatic NUMA balancing on in a
#: guest with more than one vnode (journalled, undone on stop).
BALANCING_MODES = ("leave", "auto")

INTERVAL = setting(
    "interval_seconds", 60,
    "Seconds between two samples; the figures are rates over that interval, and they are "
    "published once per interval at most.",
    minimum=10, maximum=3600)

DECLARED = (
    setting(
        "enabled", False,
        "Sample NUMA health per vnode (allocation locality, memory, vCPU busy time, automatic "
        "NUMA balancing, pressure) every `interval_seconds` and publish it under "
        "data/guestagent/numa and as metrics (docs/NUMA-HEALTH.md). Off by default: besides "
        "a few small file reads, each interval costs a xenstore transaction served by Dom0 "
        "(2 requests plus one per changed key) and a wakeup of its own "
        "(docs/NUMA-HEALTH.md, Cost)."),
    INTERVAL,
    setting(
        "balancing", "leave",
        "`leave`: never touch /proc/sys/kernel/numa_balancing (a guest with more than one "
        "vnode and balancing off gets one warning); `auto`: turn it on (write 1) when it is "
        "off and the guest has more than one vnode, journalled and put back on stop.",
        choices=BALANCING_MODES),
)


def config_keys() -> tuple[Key, ...]:
    """The ``[numa]`` keys for :data:`guestagent.config.KEYS`."""
    return section_keys(SECTION, DECLARED)
