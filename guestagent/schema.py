"""The one versioned schema of what a guest publishes in its own xenstore tree.

Everything lives under ``data/guestagent`` (relative to ``/local/domain/<domid>``): ``data/`` is
the part of its tree a guest owns and may write (reference section 3.3); nothing is ever written
elsewhere. Version 1:

    data/guestagent/version                     "1"  (this schema's version)
    data/guestagent/agent                       "guestagent 0.1.0"
    data/guestagent/vnuma/sources               "hypercall,sysfs"  (those that answered)
    data/guestagent/vnuma/hypercall-status      "ok", or why XENMEM_get_vnumainfo did not answer
    data/guestagent/vnuma/nr-nodes              "3"
    data/guestagent/vnuma/nodes/<id>/cpus       "0-1"  (Linux cpulist; "" for a CPU-less node)
    data/guestagent/vnuma/nodes/<id>/memory-kb  "514388"
    data/guestagent/vnuma/nodes/<id>/distances  "0:10,1:21,2:31"  (to each node id)
    data/guestagent/vnuma/vcpu-to-vnode         "0,0,1,2"  (from the hypercall, when it answered)
    data/guestagent/vnuma/mismatches/<i>        one operator-readable line each (at most 16)

The numa job adds (additive: still version 1; docs/NUMA-HEALTH.md says what each figure means)
one section written once per ``[numa] interval_seconds``, its figures over the last interval:

    data/guestagent/numa/interval-seconds       "60"  (configured)
    data/guestagent/numa/sampled-seconds        "60.0"  (between the two samples)
    data/guestagent/numa/updated                "1764870000"  (guest wall clock, Unix seconds)
    data/guestagent/numa/nr-vnodes              "2"
    data/guestagent/numa/balancing              "1"  (/proc/sys/kernel/numa_balancing)
    data/guestagent/numa/hint-faults-per-s      "12"
    data/guestagent/numa/pages-migrated-per-s   "3"
    data/guestagent/numa/psi-some-avg10         "0.00"  (percent)
    data/guestagent/numa/psi-full-avg10         "0.00"
    data/guestagent/numa/problems               "0"  (inputs that could not be read)
    data/guestagent/numa/vnodes/<id>/numa-hit-per-s, numa-miss-per-s, numa-foreign-per-s,
        local-node-per-s, other-node-per-s      pages per second
    data/guestagent/numa/vnodes/<id>/local-pct     "97.5"
    data/guestagent/numa/vnodes/<id>/mem-used-kb   "514388"
    data/guestagent/numa/vnodes/<id>/mem-free-kb   "61836"
    data/guestagent/numa/vnodes/<id>/cpu-busy-pct  "12.5"

Every key is always written (a fixed number: 10, and 9 per vnode for the first
:data:`MAX_NUMA_VNODES` vnodes); a figure that is not known is the empty string. Each
publisher syncs the header and its own section and leaves the other's alone (:data:`SECTIONS`).

Readers must check ``version`` first; a change that is not purely additive bumps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guestagent import __version__
from guestagent.hostfs import format_cpulist
from guestagent.topology.model import Topology
from guestagent.units import KIB

if TYPE_CHECKING:
    from guestagent.numa.model import Figures

SCHEMA_VERSION = 1
BASE = "data/guestagent"

#: The sections under BASE, each written by one publisher: the topology (job and ``publish``
#: command) and the numa job. A publisher syncs the header and its section and passes the others
#: as ``leave`` to :func:`guestagent.xen.xs_sync.sync_tree`.
TOPOLOGY_SECTION = "vnuma"
NUMA_SECTION = "numa"
SECTIONS = (TOPOLOGY_SECTION, NUMA_SECTION)

#: The vnodes whose figures are published (the rest are counted in ``nr-vnodes`` only).
MAX_NUMA_VNODES = 32

MAX_MISMATCHES = 16
MAX_TEXT = 256


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """Free text made safe for a xenstore value: printable ASCII, bounded."""
    cleaned = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def header_keys() -> dict[str, str]:
    return {"version": str(SCHEMA_VERSION), "agent": f"guestagent {__version__}"}


def topology_keys(topology: Topology) -> dict[str, str]:
    """The ``vnuma/`` section for one topology."""
    keys = {
        "vnuma/sources": ",".join(topology.sources),
        "vnuma/hypercall-status": printable(topology.hypercall_status),
        "vnuma/nr-nodes": str(len(topology.nodes)),
    }
    for node in topology.nodes:
        prefix = f"vnuma/nodes/{node.id}"
        keys[f"{prefix}/cpus"] = format_cpulist(node.cpus)
        keys[f"{prefix}/memory-kb"] = str(node.memory_bytes // KIB)
        keys[f"{prefix}/distances"] = ",".join(
            f"{other}:{distance}" for other, distance in sorted(node.distances.items())
        )
    if topology.hypercall is not None:
        keys["vnuma/vcpu-to-vnode"] = ",".join(str(n) for n in topology.hypercall.vcpu_to_vnode)
    for i, line in enumerate(topology.mismatches[:MAX_MISMATCHES]):
        keys[f"vnuma/mismatches/{i}"] = printable(line)
    return keys


def guest_tree(topology: Topology) -> dict[str, str]:
    """Everything the guest publishes, relative to :data:`BASE`."""
    return {**header_keys(), **topology_keys(topology)}


def others(section: str) -> tuple[str, ...]:
    """The sections another publisher owns: what ``section``'s publisher leaves alone."""
    return tuple(s for s in SECTIONS if s != section)


def number(value: float | None, digits: int = 0) -> str:
    """A figure for xenstore: rounded to ``digits`` decimals; the empty string when unknown."""
    if value is None:
        return ""
    return str(round(value)) if digits == 0 else f"{value:.{digits}f}"


def numa_keys(figures: Figures, interval_s: float, updated: float, problems: int) -> dict[str, str]:
    """The ``numa/`` section: always the same keys for a given number of vnodes."""
    from guestagent.numa.model import NUMASTAT_COUNTERS

    pressure = figures.pressure
    rates = figures.balancing_rates
    keys = {
        "interval-seconds": number(interval_s),
        "sampled-seconds": number(figures.elapsed_s, 1),
        "updated": number(updated),
        "nr-vnodes": str(len(figures.vnodes)),
        "balancing": number(figures.balancing),
        "hint-faults-per-s": number(rates.get("numa_hint_faults")),
        "pages-migrated-per-s": number(rates.get("numa_pages_migrated")),
        "psi-some-avg10": number(None if pressure is None else pressure.some_avg10, 2),
        "psi-full-avg10": number(None if pressure is None else pressure.full_avg10, 2),
        "problems": str(problems),
    }
    keys = {f"{NUMA_SECTION}/{k}": v for k, v in keys.items()}
    for vnode in figures.vnodes[:MAX_NUMA_VNODES]:
        prefix = f"{NUMA_SECTION}/vnodes/{vnode.node}"
        for counter in NUMASTAT_COUNTERS:
            keys[f"{prefix}/{counter.replace('_', '-')}-per-s"] = number(vnode.rates.get(counter))
        keys[f"{prefix}/local-pct"] = number(vnode.local_pct, 1)
        keys[f"{prefix}/mem-used-kb"] = number(vnode.mem_used_kb)
        keys[f"{prefix}/mem-free-kb"] = number(vnode.mem_free_kb)
        keys[f"{prefix}/cpu-busy-pct"] = number(vnode.cpu_busy_pct, 1)
    return keys


def numa_tree(figures: Figures, interval_s: float, updated: float, problems: int) -> dict[str, str]:
    """What the numa job publishes, relative to :data:`BASE` (the header and its section)."""
    return {**header_keys(), **numa_keys(figures, interval_s, updated, problems)}
