"""The one reader of Linux's NUMA node directory, ``/sys/devices/system/node``, for every job.

Topology, tiering and the devices job read the same files; they read them here, with one failure
behaviour:

* the node set: ``online`` (cpulist format, ascending; also the column order of every
  ``distance`` file). Absent, as on old kernels: the ``nodeN`` directories, which the kernel
  creates for exactly the online nodes. Empty or garbage: one line in ``problems`` and the
  directories. No node either way: :class:`~guestagent.errors.InputError`. No node directory at
  all (``CONFIG_NUMA=n``): :func:`has_numa` is false and the callers choose their fallback.
* per node, each raising :class:`~guestagent.errors.InputError` (or its subclass
  :class:`~guestagent.errors.MissingInputError` when the file is absent) that names the file and
  the value: ``cpulist``, ``meminfo`` (values in bytes; every line must be ``Node N`` of this
  node) and ``distance`` (one entry per online node, 1-255). Which of these is fatal is the
  caller's decision: a node's CPUs and memory are needed by all, a distance row is not (an
  unreadable row is one problem line and that node's distances unknown).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection

from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import MAX_NODE_ID, HostFS, parse_cpulist, parse_int, parse_meminfo
from guestagent.units import KIB

NODE_DIR = "/sys/devices/system/node"

#: Node distances are u8 in the ACPI SLIT.
MAX_DISTANCE = 255

_NODE_NAME = re.compile(r"node(\d{1,4})")
_NODE_PREFIX = re.compile(r"Node\s+(\d+)\s")
#: A distance row as the kernel writes it: numbers of 1-3 digits separated by spaces.
_DISTANCE_ROW = re.compile(r"\s*\d{1,3}(?:\s+\d{1,3})*\s*")


def has_numa(hostfs: HostFS) -> bool:
    """Whether the kernel has the node directory at all (``CONFIG_NUMA=y``)."""
    return hostfs.exists(NODE_DIR)


def read_nonempty(hostfs: HostFS, path: str) -> str:
    """A sysfs file's text; zero bytes is a truncated file (the kernel writes a newline)."""
    text = hostfs.read_text(path)
    if text == "":
        raise InputError(path, "is empty (truncated? the kernel writes at least a newline)", text)
    return text


def read_optional_list(
    hostfs: HostFS, path: str, problems: list[str], maximum: int = MAX_NODE_ID
) -> list[int] | None:
    """A cpulist-format file that may be absent (None); garbage is one problem line and None."""
    try:
        return parse_cpulist(read_nonempty(hostfs, path), path, maximum)
    except MissingInputError:
        return None
    except InputError as e:
        problems.append(str(e))
        return None


def node_ids_from_dirs(hostfs: HostFS) -> list[int]:
    """The ``nodeN`` directories' ids, ascending."""
    ids: list[int] = []
    for name in hostfs.listdir(NODE_DIR):
        m = _NODE_NAME.fullmatch(name)
        if m is not None and int(m.group(1)) <= MAX_NODE_ID:
            ids.append(int(m.group(1)))
    return sorted(ids)


def online_nodes(hostfs: HostFS, problems: list[str]) -> list[int]:
    """The online node ids, ascending; see the module's docstring for the fallbacks."""
    online = read_optional_list(hostfs, f"{NODE_DIR}/online", problems)
    if online:
        return online
    if online is not None:
        problems.append(f"{NODE_DIR}/online lists no node; using the node directories")
    ids = node_ids_from_dirs(hostfs)
    if not ids:
        raise InputError(NODE_DIR, "has no online node and no nodeN directory")
    return ids


def node_cpus(hostfs: HostFS, node: int) -> list[int]:
    """Node ``node``'s CPUs from its ``cpulist``."""
    path = f"{NODE_DIR}/node{node}/cpulist"
    return parse_cpulist(read_nonempty(hostfs, path), path)


def node_meminfo(hostfs: HostFS, node: int,
                 keys: Collection[str] | None = None) -> dict[str, int]:
    """Node ``node``'s ``meminfo`` in bytes (HugePages_* as counts); MemTotal is required.
    With ``keys`` only those ``kB`` lines are parsed and checked, their node too (the rest is
    not read: a tiering tick reads every node's file)."""
    path = f"{NODE_DIR}/node{node}/meminfo"
    text = read_nonempty(hostfs, path)
    if keys is None:
        values = parse_meminfo(text, path)
        nodes = {m.group(1) for m in _NODE_PREFIX.finditer(text)}
    else:
        values, nodes = _some_kb_lines(text, keys)
    if "MemTotal" not in values:
        raise InputError(path, "has no MemTotal line", text[:80])
    for other in sorted(nodes):
        if int(other) != node:
            where = f"has lines for node {other}, expected node {node}"
            raise InputError(path, where, text[:80])
    return values


@functools.lru_cache(maxsize=8)
def _kb_line_pattern(keys: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"^Node[ \t]+(\d{1,4})[ \t]+(" + "|".join(re.escape(k) for k in keys)
                      + r"):[ \t]+(\d{1,20})[ \t]+kB[ \t]*$", re.M)


def _some_kb_lines(text: str, keys: Collection[str]) -> tuple[dict[str, int], set[str]]:
    """The ``Node N Key: V kB`` lines of ``keys`` alone, in bytes, and the node numbers ``N``
    they name (the caller checks them)."""
    values: dict[str, int] = {}
    nodes: set[str] = set()
    for m in _kb_line_pattern(tuple(keys)).finditer(text):
        nodes.add(m.group(1))
        values[m.group(2)] = int(m.group(3)) * KIB
    return values, nodes


def distance_row(hostfs: HostFS, node: int, online: list[int]) -> dict[int, int]:
    """Node ``node``'s distance row, keyed by the online node ids it is ordered by."""
    path = f"{NODE_DIR}/node{node}/distance"
    text = read_nonempty(hostfs, path)
    words = text.split()
    if len(words) != len(online):
        raise InputError(
            path,
            f"expected {len(online)} distances (one per online node), found {len(words)}",
            text,
        )
    # The common case checked by one regular expression over the row (a 1,024-node host has a
    # million entries); anything else goes through parse_int, whose error names the file and
    # the word.
    if _DISTANCE_ROW.fullmatch(text):
        values = list(map(int, words))
        if min(values) >= 1 and max(values) <= MAX_DISTANCE:
            return dict(zip(online, values))
    return dict(zip(online, (parse_int(w, path, minimum=1, maximum=MAX_DISTANCE) for w in words)))
