"""Read the Linux view of the NUMA topology from sysfs (and /proc/meminfo).

Files read, all below the :class:`~guestagent.hostfs.HostFS` root:

* ``/sys/devices/system/node/online`` (the node set, and the column order of every ``distance``
  file), ``possible``, ``has_cpu``, ``has_memory``;
* ``/sys/devices/system/node/nodeN/cpulist``, ``distance`` (space-separated, one entry per online
  node in ascending order), ``meminfo`` (``Node N MemTotal:   123 kB``);
* ``/sys/devices/system/cpu/online``, ``present``, ``possible``;
* ``/proc/meminfo`` only when there is no node directory at all (CONFIG_NUMA=n).

What is fatal and what degrades (an :class:`~guestagent.errors.InputError` either way names the file
and the value; fatal ones propagate, the others land in :attr:`LinuxView.problems`):

* fatal: a node's ``cpulist`` or ``meminfo`` missing, empty (zero bytes: the kernel always writes
  at least a newline), garbage or with a MemTotal line that lacks its ``kB`` unit, or naming another
  node; a node listed in ``online`` without its directory; no node at all. Without these the node's
  CPUs or memory are unknown, and a partial table would mislead.
* degrades: a node's ``distance`` file (that node's distances become unknown: ``{}``); ``online``
  (falls back to the ``nodeN`` directories, which the kernel creates for exactly the online
  nodes, in the same ascending order); ``has_cpu`` / ``has_memory`` (a disagreement with the
  cpulist / MemTotal is reported and the cpulist / MemTotal win; absent, as on old kernels, they
  are not needed); ``possible``; ``cpu/present`` and ``cpu/possible``; ``cpu/online`` (falls back
  to the union of the node cpulists) except without NUMA sysfs, where it is the only CPU source and
  so fatal.
"""

from __future__ import annotations

import re

from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import MAX_NODE_ID, HostFS, parse_cpulist, parse_meminfo
from guestagent.nodesysfs import (
    NODE_DIR,
    distance_row,
    has_numa,
    node_cpus,
    node_meminfo,
    online_nodes,
    read_nonempty,
    read_optional_list,
)
from guestagent.topology.model import LOCAL_DISTANCE, LinuxView, Node
from guestagent.units import KIB

CPU_DIR = "/sys/devices/system/cpu"
PROC_MEMINFO = "/proc/meminfo"

_MEMTOTAL_LINE = re.compile(r"^MemTotal:\s+\d+\s+kB\s*$", re.MULTILINE)


def read_memtotal(hostfs: HostFS, path: str) -> int:
    """MemTotal in bytes from ``/proc/meminfo`` (the kernel without NUMA)."""
    text = read_nonempty(hostfs, path)
    values = parse_meminfo(text, path)
    if "MemTotal" not in values or not _MEMTOTAL_LINE.search(text):
        raise InputError(path, "has no 'MemTotal: <number> kB' line", text[:80])
    return values["MemTotal"]


def _read_node(
    hostfs: HostFS,
    node: int,
    online: list[int],
    has_cpu: list[int] | None,
    has_memory: list[int] | None,
    problems: list[str],
) -> Node:
    base = f"{NODE_DIR}/node{node}"
    try:
        hostfs.listdir(base)
    except MissingInputError:
        raise InputError(
            base, f"listed in {NODE_DIR}/online but the directory is missing"
        ) from None
    cpulist_path = f"{base}/cpulist"
    cpus = node_cpus(hostfs, node)
    memory = node_meminfo(hostfs, node)["MemTotal"]
    try:
        distances = distance_row(hostfs, node, online)
    except InputError as e:
        problems.append(f"{e}; distances of node {node} unknown")
        distances = {}

    node_has_cpu = bool(cpus)
    if has_cpu is not None and (node in has_cpu) != node_has_cpu:
        problems.append(
            f"{NODE_DIR}/has_cpu {'lists' if node in has_cpu else 'omits'} node {node} but "
            f"{cpulist_path} has {'no CPUs' if not cpus else 'CPUs'}; going by the cpulist"
        )
    node_has_memory = memory > 0
    if has_memory is not None and (node in has_memory) != node_has_memory:
        problems.append(
            f"{NODE_DIR}/has_memory {'lists' if node in has_memory else 'omits'} node {node} but "
            f"{base}/meminfo says MemTotal {memory // KIB} kB; going by meminfo"
        )
    return Node(node, cpus, memory, distances, node_has_cpu, node_has_memory)


def _read_cpu_lists(hostfs: HostFS, problems: list[str]) -> list[list[int] | None]:
    return [
        read_optional_list(hostfs, f"{CPU_DIR}/{name}", problems, 8191)
        for name in ("online", "present", "possible")
    ]


def read_linux_view(hostfs: HostFS) -> LinuxView:
    """Read the NUMA topology Linux sees; raises InputError when it cannot be read at all."""
    problems: list[str] = []
    if not has_numa(hostfs):
        return _read_without_numa(hostfs, problems)

    online = online_nodes(hostfs, problems)
    possible_nodes = read_optional_list(hostfs, f"{NODE_DIR}/possible", problems, MAX_NODE_ID)
    has_cpu = read_optional_list(hostfs, f"{NODE_DIR}/has_cpu", problems, MAX_NODE_ID)
    has_memory = read_optional_list(hostfs, f"{NODE_DIR}/has_memory", problems, MAX_NODE_ID)

    nodes = [_read_node(hostfs, n, online, has_cpu, has_memory, problems) for n in online]

    cpu_online, present, possible = _read_cpu_lists(hostfs, problems)
    if cpu_online is None:
        union: set[int] = set()
        for node in nodes:
            union.update(node.cpus)
        cpu_online = sorted(union)
        problems.append(
            f"{CPU_DIR}/online unreadable; taking the CPUs of the node cpulists as online"
        )
    return LinuxView(
        nodes=nodes,
        online_cpus=cpu_online,
        present_cpus=present,
        possible_cpus=possible,
        possible_nodes=possible_nodes,
        numa=True,
        problems=problems,
    )


def _read_without_numa(hostfs: HostFS, problems: list[str]) -> LinuxView:
    """CONFIG_NUMA=n: one node 0 holding every online CPU and all of /proc/meminfo's MemTotal."""
    online_path = f"{CPU_DIR}/online"
    cpus = parse_cpulist(read_nonempty(hostfs, online_path), online_path)
    if not cpus:
        raise InputError(online_path, "lists no online CPU", "")
    memory = read_memtotal(hostfs, PROC_MEMINFO)
    _, present, possible = _read_cpu_lists(hostfs, problems)
    node = Node(0, cpus, memory, {0: LOCAL_DISTANCE}, True, memory > 0)
    return LinuxView(
        nodes=[node],
        online_cpus=cpus,
        present_cpus=present,
        possible_cpus=possible,
        possible_nodes=None,
        numa=False,
        problems=problems,
    )
