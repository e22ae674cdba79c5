"""The human-readable ``guestagent topology`` table (``--json``: ``Topology.to_json`` through
:func:`guestagent.cli.print_json`)."""

from __future__ import annotations

from collections.abc import Sequence

from guestagent.hostfs import format_cpulist
from guestagent.topology.model import SOURCE_HYPERCALL, Node, Topology
from guestagent.units import MIB
from guestagent.xen.vnuma import VnumaInfo

NO_HYPERVISOR_LINE = "no hypervisor found: showing the Linux view only"


def _mib(nbytes: int) -> str:
    return str(nbytes // MIB)


def _cpus(cpus: Sequence[int]) -> str:
    return format_cpulist(list(cpus)) if cpus else "-"


def _table(header: list[str], rows: list[list[str]], text_last: bool = False) -> list[str]:
    """Right-aligned columns; with ``text_last`` the last column is free text."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    last = len(header) - 1 if text_last else -1
    for row in [header, *rows]:
        cells = [c if i == last else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _distance_matrix(
    ids: list[int], rows: dict[int, dict[int, int]], label: str = "node"
) -> list[str]:
    header = [label, *[str(i) for i in ids]]
    body = []
    for i in ids:
        row = rows.get(i, {})
        body.append([str(i), *[str(row[j]) if j in row else "?" for j in ids]])
    return _table(header, body)


def _nodes_section(nodes: list[Node]) -> list[str]:
    rows = [
        [str(n.id), _cpus(n.cpus), _mib(n.memory_bytes), "" if n.has_memory else "(no memory)"]
        for n in nodes
    ]
    lines = _table(["node", "cpus", "memory MiB", ""], rows, text_last=True)
    lines.append("")
    lines.append("  distances:")
    ids = [n.id for n in nodes]
    lines.extend("  " + line for line in _distance_matrix(ids, {n.id: n.distances for n in nodes}))
    return lines


def _hypercall_section(info: VnumaInfo) -> list[str]:
    rows = []
    vcpus, memory, ranges = info.vcpus_by_vnode(), info.memory_by_vnode(), info.ranges_by_vnode()
    for v in range(info.nr_vnodes):
        shown = ", ".join(f"{r.start:#x}-{r.end:#x}" for r in ranges[v]) or "-"
        rows.append([str(v), _cpus(vcpus[v]), _mib(memory[v]), shown])
    lines = _table(["vnode", "vcpus", "memory MiB", "ranges"], rows, text_last=True)
    lines.append("")
    lines.append("  distances:")
    ids = list(range(info.nr_vnodes))
    matrix = {i: dict(enumerate(info.distances[i])) for i in ids}
    lines.extend("  " + line for line in _distance_matrix(ids, matrix, "vnode"))
    return lines


def render_table(topology: Topology) -> str:
    hv = topology.hypervisor
    out: list[str] = [f"hypervisor: {hv.describe()}"]
    if not hv.is_xen:
        out.append(NO_HYPERVISOR_LINE)
    else:
        out.append(f"hypercall: {topology.hypercall_status}")
    out.append(f"sources: {', '.join(topology.sources) or 'none'}")
    out.append("")

    linux = topology.linux
    if topology.nodes:
        if topology.nodes_from == SOURCE_HYPERCALL:
            why = "no NUMA view in Linux" if linux is not None else "sysfs unreadable"
            title = f"Nodes (from the hypercall: {why})"
        elif linux is not None and not linux.numa:
            title = "Linux view (no NUMA in this kernel: one node with all CPUs and memory)"
        else:
            title = "Linux view (sysfs)"
        out.append(f"{title}:")
        out.extend(_nodes_section(topology.nodes))
        if linux is not None:
            out.append(f"  online CPUs: {_cpus(linux.online_cpus)}")
        out.append("")

    if topology.hypercall is not None:
        out.append(f"Xen view (XENMEM_get_vnumainfo, {topology.hypercall.nr_vnodes} vnodes):")
        out.extend(_hypercall_section(topology.hypercall))
        out.append("")

    if topology.hypercall is not None and topology.linux is not None:
        if topology.mismatches:
            out.append("mismatches:")
            out.extend(f"  - {m}" for m in topology.mismatches)
        else:
            out.append("mismatches: none (Linux and Xen agree)")
    if topology.errors:
        out.append("errors:")
        out.extend(f"  - {e}" for e in topology.errors)
    return "\n".join(out).rstrip() + "\n"
