"""procfs and sysfs into one :class:`~guestagent.numa.model.Sample`.

Files read (all through :class:`~guestagent.hostfs.HostFS`; the node directory only through
:mod:`guestagent.nodesysfs`):

* ``/sys/devices/system/node/online`` and, per node, ``cpulist``, ``meminfo`` (MemTotal,
  MemFree) and ``numastat`` (``numa_hit``, ``numa_miss``, ``numa_foreign``, ``local_node``,
  ``other_node``: pages, cumulative since boot);
* ``/proc/stat``: the ``cpuN`` lines (ticks);
* ``/proc/vmstat``: ``numa_hint_faults``, ``numa_pages_migrated`` (absent without
  CONFIG_NUMA_BALANCING: unknown, not a problem);
* ``/proc/pressure/memory``: ``some``/``full`` ``avg10`` (absent without PSI: unknown);
* ``/proc/sys/kernel/numa_balancing`` (absent without CONFIG_NUMA_BALANCING: unknown).

A file that is garbage, or absent where the kernel always has it, is one line in the sample's
``problems`` naming the file and the value, and only the figures that need it are unknown: the
others are still read.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import re
from collections.abc import Iterable

from guestagent import nodesysfs
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import MAX_CPU_ID, HostFS
from guestagent.numa.figures import BALANCING_SYSCTL
from guestagent.numa.model import (
    NUMASTAT_COUNTERS,
    VMSTAT_COUNTERS,
    CpuTime,
    NodeSample,
    Pressure,
    Sample,
)

PROC_STAT = "/proc/stat"
VMSTAT = "/proc/vmstat"
PRESSURE = "/proc/pressure/memory"

#: Kernel counters are u64 (unsigned long on 64-bit).
MAX_COUNTER = (1 << 64) - 1

_COUNTER_LINE = re.compile(r"([a-z_]{1,64})\s+(\d{1,20})")
_CPU_LINE = re.compile(r"cpu(\d{1,5})((?:\s+\d{1,20}){4,10})")


def numastat_path(node: int) -> str:
    return f"{nodesysfs.NODE_DIR}/node{node}/numastat"


def _counter(text: str, source: str, value: str) -> int:
    number = int(value)
    if number > MAX_COUNTER:
        raise InputError(source, "exceeds a 64-bit counter", text)
    return number


def parse_counters(text: str, source: str, wanted: Iterable[str]) -> dict[str, int]:
    """``name value`` lines (numastat): every line must be one; each ``wanted`` name must be
    there. Raises InputError naming the line."""
    values: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _COUNTER_LINE.fullmatch(line.strip())
        if m is None:
            raise InputError(f"{source} line {lineno}", "expected 'name number'", line)
        values[m.group(1)] = _counter(line, f"{source} line {lineno}", m.group(2))
    missing = [name for name in wanted if name not in values]
    if missing:
        raise InputError(source, f"has no {', '.join(missing)} line", text[:80])
    return {name: values[name] for name in wanted}


def read_numastat(hostfs: HostFS, node: int) -> dict[str, int]:
    path = numastat_path(node)
    return parse_counters(nodesysfs.read_nonempty(hostfs, path), path, NUMASTAT_COUNTERS)


def parse_proc_stat(text: str, source: str = PROC_STAT) -> dict[int, CpuTime]:
    """The ``cpuN`` lines: user nice system idle iowait irq softirq steal [guest guest_nice]
    (guest time is already inside user and nice). A ``cpuN`` line that does not parse raises."""
    cpus: dict[int, CpuTime] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        m = _CPU_LINE.fullmatch(line.strip())
        if m is None or int(m.group(1)) > MAX_CPU_ID:
            raise InputError(f"{source} line {lineno}", "expected 'cpuN' and 4 to 10 numbers",
                             line)
        ticks = [_counter(line, source, v) for v in m.group(2).split()][:8]
        ticks += [0] * (8 - len(ticks))
        user, nice, system, idle, iowait, irq, softirq, steal = ticks
        busy = user + nice + system + irq + softirq
        cpus[int(m.group(1))] = CpuTime(busy=busy, total=busy + idle + iowait + steal)
    if not cpus:
        raise InputError(source, "has no cpuN line", text[:80])
    return cpus


def parse_vmstat(text: str, source: str = VMSTAT) -> dict[str, int]:
    """The :data:`VMSTAT_COUNTERS` present; the other lines are not looked at (the file has
    hundreds, and one the agent does not use must not cost it the figures)."""
    found: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        name, _, value = line.partition(" ")
        if name not in VMSTAT_COUNTERS:
            continue
        if not re.fullmatch(r"\d{1,20}", value.strip()):
            raise InputError(f"{source} line {lineno}", f"{name}: expected a number", line)
        found[name] = _counter(line, f"{source} line {lineno}", value.strip())
    return found


def parse_pressure(text: str, source: str = PRESSURE) -> Pressure:
    """``some`` and ``full`` avg10 (percent), parsed and checked by the balloon's PSI reader
    (:func:`guestagent.balloon.signals.parse_psi`)."""
    from guestagent.balloon.signals import parse_psi

    psi = parse_psi(text, source)
    return Pressure(some_avg10=psi.some.avg10, full_avg10=psi.full.avg10)


def _optional(hostfs: HostFS, path: str) -> str | None:
    """A file the kernel may not have (None)."""
    try:
        return hostfs.read_text(path)
    except MissingInputError:
        return None


def read_node(hostfs: HostFS, node: int, problems: list[str]) -> NodeSample:
    """One vnode; each of its three files on its own (a bad one is one problem line)."""
    cpus: tuple[int, ...] | None = None
    numastat: dict[str, int] | None = None
    total = free = None
    try:
        cpus = tuple(nodesysfs.node_cpus(hostfs, node))
    except InputError as e:
        problems.append(str(e))
    try:
        meminfo = nodesysfs.node_meminfo(hostfs, node)
        if "MemFree" not in meminfo:
            raise InputError(f"{nodesysfs.NODE_DIR}/node{node}/meminfo", "has no MemFree line")
        total, free = meminfo["MemTotal"], meminfo["MemFree"]
    except InputError as e:
        problems.append(str(e))
    try:
        numastat = read_numastat(hostfs, node)
    except InputError as e:
        problems.append(str(e))
    return NodeSample(node=node, cpus=cpus, numastat=numastat, mem_total=total, mem_free=free)


def read_cpu(hostfs: HostFS, problems: list[str]) -> dict[int, CpuTime] | None:
    try:
        return parse_proc_stat(hostfs.read_text(PROC_STAT))
    except InputError as e:
        problems.append(str(e))
        return None


def read_vmstat(hostfs: HostFS, problems: list[str]) -> dict[str, int]:
    try:
        return parse_vmstat(hostfs.read_text(VMSTAT))
    except InputError as e:
        problems.append(str(e))
        return {}


def read_pressure(hostfs: HostFS, problems: list[str]) -> Pressure | None:
    try:
        text = _optional(hostfs, PRESSURE)
        return None if text is None else parse_pressure(text)
    except InputError as e:
        problems.append(str(e))
        return None


def read_balancing(hostfs: HostFS, problems: list[str]) -> int | None:
    """``/proc/sys/kernel/numa_balancing``: 0..3; None when the kernel has no such sysctl."""
    try:
        return hostfs.read_int(BALANCING_SYSCTL, minimum=0, maximum=3)
    except MissingInputError:
        return None
    except InputError as e:
        problems.append(str(e))
        return None


def read_sample(hostfs: HostFS, at: float) -> Sample:
    """Everything at once (``at``: the caller's monotonic clock). Raises InputError only when
    the kernel has no NUMA node directory at all (nothing per vnode to measure)."""
    if not nodesysfs.has_numa(hostfs):
        raise InputError(nodesysfs.NODE_DIR, "absent: a kernel without NUMA, no vnode to measure")
    problems: list[str] = []
    nodes = {n: read_node(hostfs, n, problems) for n in nodesysfs.online_nodes(hostfs, problems)}
    return Sample(
        at=at,
        nodes=nodes,
        cpu=read_cpu(hostfs, problems),
        vmstat=read_vmstat(hostfs, problems),
        pressure=read_pressure(hostfs, problems),
        balancing=read_balancing(hostfs, problems),
        problems=tuple(problems),
    )
