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

Readers must check ``version`` first; a change that is not purely additive bumps it.
"""

from __future__ import annotations

from guestagent import __version__
from guestagent.hostfs import format_cpulist
from guestagent.topology.model import Topology

SCHEMA_VERSION = 1
BASE = "data/guestagent"

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
        keys[f"{prefix}/memory-kb"] = str(node.memory_bytes // 1024)
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
