"""Which watchdog timeout the daemon asks systemd for (``WATCHDOG_USEC=`` in sd_notify(3)).

The unit's ``WatchdogSec=3min`` is the bound for a daemon that moves memory: a hung balloon job
could hold a guest's target low while its programs need more, a hung tiering job would leave
its kdamond on an old plan. A daemon whose jobs only publish (topology, devices, the Dom0 hints)
or sample changes nothing a hang makes worse within minutes, and its only wakeups are the
watchdog's feeds: each costs CPU time (about 6-18 ms in the testbed's emulated guest), 40 an hour
at the unit's period. So while no job moves memory and xenstore is connected, the daemon asks for
``[agent] idle_watchdog_seconds`` instead (12 min by default: a feed every 6 min, 10 an hour),
and goes back to the unit's timeout as soon as that changes. Plain functions over plain data.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Jobs that move memory while they run: the daemon keeps the unit's watchdog timeout for them.
MEMORY_MOVING_JOBS = frozenset({"balloon", "tiering"})


def watchdog_timeout(unit_s: float, idle_s: float, running: Iterable[str],
                     xenstore_lost: bool) -> tuple[float, str]:
    """The timeout (seconds) to ask systemd for, and why, in a few words for the log.

    ``unit_s`` is the unit's ``WatchdogSec=``, ``idle_s`` the idle timeout (0: never longer
    than the unit's), ``running`` the names of the running jobs. Never shorter than the unit's.
    """
    moving = sorted(MEMORY_MOVING_JOBS.intersection(running))
    if moving:
        return unit_s, f"the {' and '.join(moving)} job moves memory"
    if xenstore_lost:
        return unit_s, "xenstore is being reconnected"
    if idle_s <= unit_s:
        return unit_s, "idle_watchdog_seconds is not above the unit's WatchdogSec="
    return idle_s, "no job moves memory"
