"""Pure functions: two samples into the figures, and the automatic NUMA balancing decisions.

No I/O and no clock: the samples carry their own time. The control law, such as it is:

* a rate is the counter's increase over the seconds between the samples; a counter that went
  backwards was reset (or wrapped): that interval's rate is unknown, never negative or huge;
* locality is the share of pages allocated on the node of the CPU that asked
  (``local_node / (local_node + other_node)``), unknown when nothing was allocated;
* a vnode's vCPU busy share is the ticks its CPUs ran something over all their ticks;
* balancing is warned about (and, in ``auto`` mode, turned on) only where it can help: more than
  one vnode and the sysctl at 0.

The numa job's decide steps live here too: :func:`decide` (a tick: figures, reports, the tree to
publish), :func:`balancing_to_write` (the switch) and :func:`leaves_auto` (the undo on reload).
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from guestagent.numa.model import (
    NUMASTAT_COUNTERS,
    VMSTAT_COUNTERS,
    CpuTime,
    Figures,
    NodeSample,
    Sample,
    VnodeFigures,
)
from guestagent.units import KIB

BALANCING_SYSCTL = "/proc/sys/kernel/numa_balancing"
#: The value ``auto`` writes: NUMA_BALANCING_NORMAL (2 is the memory-tiering mode, not locality).
BALANCING_ON = 1


def rate(before: int | None, after: int | None, elapsed: float | None) -> float | None:
    """Increase per second; None when a side is unknown, the interval is not positive, or the
    counter went backwards (a reset or a wrap: the increase is not knowable)."""
    if before is None or after is None or elapsed is None or elapsed <= 0 or after < before:
        return None
    return (after - before) / elapsed


def counter_rates(
    before: Mapping[str, int] | None,
    after: Mapping[str, int] | None,
    names: Iterable[str],
    elapsed: float | None,
    source: str,
    resets: list[str],
) -> dict[str, float | None]:
    """The rate of each named counter; each one that went backwards is added to ``resets``."""
    out: dict[str, float | None] = {}
    for name in names:
        old = None if before is None else before.get(name)
        new = None if after is None else after.get(name)
        if old is not None and new is not None and new < old:
            resets.append(f"{source} {name}")
        out[name] = rate(old, new, elapsed)
    return out


def local_pct(rates: Mapping[str, float | None]) -> float | None:
    """Share of the allocations made on the asking CPU's own node, in percent (None: nothing
    allocated, or a side unknown)."""
    local, other = rates.get("local_node"), rates.get("other_node")
    if local is None or other is None or local + other <= 0:
        return None
    return 100.0 * local / (local + other)


def cpu_busy_pct(
    before: Mapping[int, CpuTime] | None,
    after: Mapping[int, CpuTime] | None,
    cpus: Iterable[int] | None,
) -> float | None:
    """Busy share of ``cpus`` over the interval, in percent. A CPU missing from either sample
    (offline) or whose counters went backwards is left out; None when no CPU is left or no time
    passed."""
    if before is None or after is None or cpus is None:
        return None
    busy = total = 0
    for cpu in cpus:
        old, new = before.get(cpu), after.get(cpu)
        if old is None or new is None or new.busy < old.busy or new.total < old.total:
            continue
        busy += new.busy - old.busy
        total += new.total - old.total
    if total <= 0:
        return None
    return 100.0 * min(busy, total) / total


def _kb(value: int | None) -> int | None:
    return None if value is None else value // KIB


def vnode_figures(
    before: NodeSample | None,
    after: NodeSample,
    cpu_before: Mapping[int, CpuTime] | None,
    cpu_after: Mapping[int, CpuTime] | None,
    elapsed: float | None,
    resets: list[str],
) -> VnodeFigures:
    """One vnode's figures; memory is the latest sample's, the rest needs both."""
    source = f"node{after.node}/numastat"
    rates = counter_rates(None if before is None else before.numastat, after.numastat,
                          NUMASTAT_COUNTERS, elapsed, source, resets)
    used = None
    if after.mem_total is not None and after.mem_free is not None:
        used = max(0, after.mem_total - after.mem_free)
    return VnodeFigures(
        node=after.node,
        rates=rates,
        local_pct=local_pct(rates),
        mem_used_kb=_kb(used),
        mem_free_kb=_kb(after.mem_free),
        cpu_busy_pct=cpu_busy_pct(cpu_before, cpu_after, after.cpus),
    )


def interval(before: Sample | None, after: Sample) -> float | None:
    """Seconds between the samples; None for a first sample or a zero (or negative) interval."""
    if before is None or after.at <= before.at:
        return None
    return after.at - before.at


def compute(before: Sample | None, after: Sample) -> Figures:
    """The figures of the interval from ``before`` (None: the first sample) to ``after``."""
    elapsed = interval(before, after)
    resets: list[str] = []
    vnodes = tuple(
        vnode_figures(None if before is None else before.nodes.get(node), sample,
                      None if before is None else before.cpu, after.cpu, elapsed, resets)
        for node, sample in sorted(after.nodes.items())
    )
    balancing_rates = counter_rates(None if before is None else before.vmstat, after.vmstat,
                                    VMSTAT_COUNTERS, elapsed, "/proc/vmstat", resets)
    return Figures(elapsed_s=elapsed, vnodes=vnodes, balancing_rates=balancing_rates,
                   pressure=after.pressure, balancing=after.balancing, resets=tuple(resets))


def balancing_warning(nr_vnodes: int, balancing: int | None) -> str | None:
    """Why the operator should look at automatic NUMA balancing, or None. Only a guest with more
    than one vnode gains from it; the kernel turns it on by itself at boot on such a guest
    (CONFIG_NUMA_BALANCING_DEFAULT_ENABLED), so 0 means someone turned it off."""
    if nr_vnodes <= 1 or (balancing is not None and balancing != 0):
        return None
    if balancing is None:
        return (f"automatic NUMA balancing is not available ({BALANCING_SYSCTL} is absent: a "
                f"kernel without CONFIG_NUMA_BALANCING) in a guest with {nr_vnodes} vnodes")
    return (f"automatic NUMA balancing is off ({BALANCING_SYSCTL} = 0) in a guest with "
            f"{nr_vnodes} vnodes: pages and tasks are not moved toward each other; turn it on "
            "with 'sysctl kernel.numa_balancing=1' (kept across boots in /etc/sysctl.d/) or "
            "set [numa] balancing = \"auto\"")


def balancing_to_write(mode: str, nr_vnodes: int, balancing: int | None) -> int | None:
    """The value ``auto`` writes now, or None: only where the warning applies (more than one
    vnode, the sysctl present and 0); any other value is the operator's choice and is kept."""
    if mode != "auto" or nr_vnodes <= 1 or balancing != 0:
        return None
    return BALANCING_ON


# -- the numa job's decide steps ------------------------------------------------------------------


@dataclass(frozen=True)
class NumaState:
    """What the numa job carries from one tick to the next: the last sample (None: the next one
    is a first sample), the counter resets already reported, and the balancing warning in
    force (None: none)."""

    previous: Sample | None = None
    resets_seen: frozenset[str] = frozenset()
    warning: str | None = None


@dataclass(frozen=True)
class TickPlan:
    """What one tick does: the figures (status and metrics), the counter resets to report (new
    ones only), the balancing warning to log (None: none, or the same as before), and the tree
    to publish under ``schema.BASE`` (None: a first sample, no interval to publish yet)."""

    figures: Figures
    new_resets: tuple[str, ...] = ()
    warn: str | None = None
    tree: dict[str, str] | None = None


def warning_change(sample: Sample, warning: str | None) -> tuple[str | None, str | None]:
    """The balancing warning to log now and the one in force after ``sample``: a warning is
    logged once when it appears or its text changes (another vnode count, the sysctl gone),
    not on every tick."""
    now = balancing_warning(len(sample.nodes), sample.balancing)
    return (now if now is not None and now != warning else None), now


def decide(sample: Sample, state: NumaState, interval_s: float,
           wall_time: float) -> tuple[TickPlan, NumaState]:
    """The numa job's decide step (pure): ``sample`` read now (``wall_time``: the guest's Unix
    time at the read, what ``numa/updated`` says), the figures of the interval since
    ``state.previous``, what to report and what to publish. The published tree always holds the
    same keys for a given number of vnodes (:func:`guestagent.schema.numa_tree`)."""
    from guestagent.schema import numa_tree

    figures = compute(state.previous, sample)
    new_resets = tuple(r for r in dict.fromkeys(figures.resets) if r not in state.resets_seen)
    warn, warning = warning_change(sample, state.warning)
    tree = None
    if figures.elapsed_s is not None:
        tree = numa_tree(figures, interval_s, wall_time, len(sample.problems))
    plan = TickPlan(figures, new_resets, warn, tree)
    return plan, NumaState(sample, state.resets_seen | frozenset(new_resets), warning)


def leaves_auto(mode: str, new_mode: str) -> bool:
    """A reload from ``auto`` to anything else puts the previous value back first (the undo);
    ``leave`` -> ``auto`` and ``auto`` -> ``auto`` undo nothing."""
    return new_mode != mode and mode == "auto"
