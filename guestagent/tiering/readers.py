"""sysfs and procfs into the policy's plain inputs.

Files read (all through :class:`~guestagent.hostfs.HostFS`):

* ``/sys/devices/system/node/online``: the node ids, and the column order of every ``distance``
  file (the kernel prints one entry per *online* node, ascending);
* ``/sys/devices/system/node/nodeN/meminfo`` (MemTotal, MemFree, Active, Inactive,
  Active(file), Inactive(file); between two full snapshots those lines alone are parsed) and
  ``.../nodeN/distance``;
* ``/sys/devices/system/node/nodeN/memoryX`` entries and
  ``/sys/devices/system/memory/block_size_bytes`` (hex): the node's physical address ranges;
* ``/proc/vmstat`` ``numa_pages_migrated``: pages automatic NUMA balancing moved to the node that
  touches them, the agent's proxy for "cold pages that came back" (0 when balancing is off);
* ``/proc/sys/kernel/osrelease``: the kernel version, a hint for DAMON features;
* ``/sys/kernel/mm/lru_gen/enabled`` (hex mask, bit 0 = the multi-generational LRU is on; absent
  before Linux 6.1 or without CONFIG_LRU_GEN): whether meminfo's inactive lists mean "cold".
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import re

from guestagent import nodesysfs
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS
from guestagent.nodesysfs import NODE_DIR
from guestagent.tiering.model import MemorySnapshot, NodeMemory

MEMORY_DIR = "/sys/devices/system/memory"
BLOCK_SIZE = f"{MEMORY_DIR}/block_size_bytes"
VMSTAT = "/proc/vmstat"
OSRELEASE = "/proc/sys/kernel/osrelease"
LRU_GEN = "/sys/kernel/mm/lru_gen/enabled"

_MEMORY_NAME = re.compile(r"memory(\d{1,9})")
_RELEASE = re.compile(r"(\d{1,3})\.(\d{1,3})")

_MEMINFO_KEYS = {
    "total": "MemTotal",
    "free": "MemFree",
    "active": "Active",
    "inactive": "Inactive",
    "active_file": "Active(file)",
    "inactive_file": "Inactive(file)",
}


def node_ids(hostfs: HostFS, problems: list[str] | None = None) -> list[int]:
    """Online nodes (:func:`guestagent.nodesysfs.online_nodes`)."""
    return nodesysfs.online_nodes(hostfs, [] if problems is None else problems)


def read_node_memory(hostfs: HostFS, node: int, lines_used_only: bool = False) -> NodeMemory:
    """The node's MemTotal, MemFree and LRU sizes (bytes). Every line is checked
    (:func:`guestagent.nodesysfs.node_meminfo`), or with ``lines_used_only`` the policy's
    alone (the runner's ticks between two full snapshots)."""
    path = f"{NODE_DIR}/node{node}/meminfo"
    keys = _MEMINFO_KEYS.values() if lines_used_only else None
    values = nodesysfs.node_meminfo(hostfs, node, keys)
    if "MemFree" not in values:
        raise InputError(path, "lacks MemFree", hostfs.read_text(path)[:60])
    fields = {name: values.get(key, 0) for name, key in _MEMINFO_KEYS.items()}
    if fields["free"] > fields["total"]:
        raise InputError(path, "MemFree exceeds MemTotal", (fields["free"], fields["total"]))
    return NodeMemory(node=node, **fields)


def read_distances(
    hostfs: HostFS, ids: list[int], problems: list[str] | None = None
) -> dict[tuple[int, int], int]:
    """Distances between online nodes; a node whose ``distance`` row is unreadable is left out
    (its distances unknown) with one line in ``problems``."""
    out: dict[tuple[int, int], int] = {}
    for a in ids:
        try:
            row = nodesysfs.distance_row(hostfs, a, ids)
        except InputError as e:
            if problems is not None:
                problems.append(f"{e}; distances of node {a} unknown")
            continue
        out.update({(a, b): d for b, d in row.items()})
    return out


def read_snapshot(hostfs: HostFS, known: MemorySnapshot | None = None) -> MemorySnapshot:
    """Every online node's memory and the distance matrix, with what could not be read.

    ``known``: an earlier snapshot whose online nodes, distances and ``lru_gen`` are taken over
    instead of read again when it had no problem (they change only with a hotplug or an
    administrator's switch; the runner passes one at most a minute old, and none after a
    snapshot that failed, so a node gone offline, whose ``meminfo`` is gone with it, costs one
    paused tick). Then a snapshot reads each node's ``meminfo``, nothing else, and parses only
    the meminfo lines the policy uses."""
    if known is not None and not known.problems:
        nodes = {n: read_node_memory(hostfs, n, lines_used_only=True) for n in known.nodes}
        return MemorySnapshot(nodes=nodes, distances=known.distances, lru_gen=known.lru_gen)
    problems: list[str] = []
    ids = node_ids(hostfs, problems)
    nodes = {n: read_node_memory(hostfs, n) for n in ids}
    return MemorySnapshot(
        nodes=nodes,
        distances=read_distances(hostfs, ids, problems),
        lru_gen=lru_gen_enabled(hostfs),
        problems=problems,
    )


def lru_gen_enabled(hostfs: HostFS) -> bool:
    """Bit 0 of ``lru_gen/enabled`` (the kernel prints ``0x%04x``); False when it is absent."""
    try:
        text = hostfs.read_text(LRU_GEN).strip()
    except MissingInputError:
        return False
    if not re.fullmatch(r"0x[0-9a-fA-F]{1,8}", text):
        raise InputError(LRU_GEN, "expected a hexadecimal mask like 0x0007", text)
    return bool(int(text, 16) & 1)


def block_size(hostfs: HostFS) -> int:
    text = hostfs.read_text(BLOCK_SIZE).strip()
    if not re.fullmatch(r"[0-9a-fA-F]{1,16}", text):
        raise InputError(BLOCK_SIZE, "expected a hexadecimal size", text)
    size = int(text, 16)
    if size <= 0 or size & (size - 1):
        raise InputError(BLOCK_SIZE, "not a power of two", text)
    return size


def node_ranges(hostfs: HostFS, node: int) -> list[tuple[int, int]]:
    """The node's physical address ranges ``[start, end)`` from its memory blocks, merged.

    A block whose ``state`` file says other than ``online`` is skipped (offline memory has no pages
    to migrate); a block without a ``state`` file counts as online.
    """
    size = block_size(hostfs)
    path = f"{NODE_DIR}/node{node}"
    blocks = []
    for name in hostfs.listdir(path):
        m = _MEMORY_NAME.fullmatch(name)
        if m is None:
            continue
        try:
            state = hostfs.read_text(f"{path}/{name}/state").strip()
        except MissingInputError:
            state = "online"
        if state == "online":
            blocks.append(int(m.group(1)))
    ranges: list[tuple[int, int]] = []
    for b in sorted(blocks):
        start, end = b * size, (b + 1) * size
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    if not ranges:
        raise InputError(path, "has no online memoryN block")
    return ranges


def read_vmstat(hostfs: HostFS) -> dict[str, int]:
    values: dict[str, int] = {}
    for lineno, line in enumerate(hostfs.read_text(VMSTAT).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not re.fullmatch(r"\d{1,20}", parts[1]):
            raise InputError(f"{VMSTAT} line {lineno}", "expected 'name number'", line)
        values[parts[0]] = int(parts[1])
    return values


#: ``numa_pages_migrated``'s line of ``/proc/vmstat``, found without parsing the other ~190.
_MIGRATED_LINE = re.compile(r"^numa_pages_migrated\b(.*)$", re.M)


def returned_pages(hostfs: HostFS) -> int | None:
    """``numa_pages_migrated`` (cumulative), or None where the kernel does not count it. Only
    its own line is parsed (a tick reads it every interval; :func:`read_vmstat` parses all)."""
    text = hostfs.read_text(VMSTAT)
    m = _MIGRATED_LINE.search(text)
    if m is None:
        return None
    value = m.group(1).strip()
    if not re.fullmatch(r"\d{1,20}", value):
        lineno = text.count("\n", 0, m.start()) + 1
        raise InputError(f"{VMSTAT} line {lineno}", "expected 'name number'", m.group(0))
    return int(value)


def kernel_version(hostfs: HostFS) -> tuple[int, int] | None:
    """(major, minor) from ``osrelease``, None when unreadable."""
    try:
        text = hostfs.read_text(OSRELEASE).strip()
    except MissingInputError:
        return None
    m = _RELEASE.match(text)
    if m is None:
        raise InputError(OSRELEASE, "expected a release like 6.12.0", text)
    return int(m.group(1)), int(m.group(2))
