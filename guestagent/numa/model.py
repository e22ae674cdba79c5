"""Plain data for NUMA health: one sample of the counters (what the readers produce) and the
figures two samples make (what is published).

Units: counters as the kernel counts them (pages for numastat and vmstat, USER_HZ ticks for
``/proc/stat``), memory in bytes in a sample and KiB in the figures, rates per second, shares in
percent. ``None`` is "not known": the file was absent or garbage, the first sample, a counter
that went backwards.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

from dataclasses import dataclass, field

#: The per-node numastat counters sampled, in the order they are published.
NUMASTAT_COUNTERS = ("numa_hit", "numa_miss", "numa_foreign", "local_node", "other_node")
#: The automatic NUMA balancing counters of ``/proc/vmstat``.
VMSTAT_COUNTERS = ("numa_hint_faults", "numa_pages_migrated")


@dataclass(frozen=True)
class CpuTime:
    """One CPU's ``/proc/stat`` line, in ticks: time it ran something (user, nice, system, irq,
    softirq) and all of its time (those plus idle, iowait and steal)."""

    busy: int
    total: int


@dataclass(frozen=True)
class NodeSample:
    """One vnode at one instant; a field is None when its file could not be read."""

    node: int
    cpus: tuple[int, ...] | None = None
    #: numastat counter -> value (every name of :data:`NUMASTAT_COUNTERS`).
    numastat: dict[str, int] | None = None
    mem_total: int | None = None
    mem_free: int | None = None


@dataclass(frozen=True)
class Pressure:
    """``/proc/pressure/memory``'s avg10 figures (percent of the last 10 s)."""

    some_avg10: float
    full_avg10: float | None = None


@dataclass(frozen=True)
class Sample:
    """Everything read at one instant (``at``: monotonic seconds)."""

    at: float
    nodes: dict[int, NodeSample] = field(default_factory=dict)
    #: CPU id -> its times; None when ``/proc/stat`` could not be read.
    cpu: dict[int, CpuTime] | None = None
    #: The :data:`VMSTAT_COUNTERS` the kernel has (absent without CONFIG_NUMA_BALANCING).
    vmstat: dict[str, int] = field(default_factory=dict)
    pressure: Pressure | None = None
    #: ``/proc/sys/kernel/numa_balancing`` (0 off, 1 on, 2 tiering mode, 3 both); None: absent.
    balancing: int | None = None
    #: One line per file that was garbage or missing (file and value named).
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class VnodeFigures:
    """One vnode over one interval."""

    node: int
    #: numastat counter -> pages per second (None: unknown this interval).
    rates: dict[str, float | None]
    #: local_node / (local_node + other_node) in percent; None when nothing was allocated.
    local_pct: float | None
    mem_used_kb: int | None
    mem_free_kb: int | None
    #: Busy share of the vnode's vCPUs, percent of their time (steal counts as not busy).
    cpu_busy_pct: float | None


@dataclass(frozen=True)
class Figures:
    """The guest over one interval: what is published and exported."""

    #: Seconds between the two samples (None: only one sample so far, or a zero interval).
    elapsed_s: float | None
    vnodes: tuple[VnodeFigures, ...]
    #: vmstat counter -> events per second.
    balancing_rates: dict[str, float | None]
    pressure: Pressure | None
    balancing: int | None
    #: ``"file counter"`` for each counter that went backwards this interval (a reset).
    resets: tuple[str, ...] = ()
