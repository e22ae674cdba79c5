"""The figures and reasons of ``host numa``, pure: plain data in, plain data out, no I/O, no clock.

The law, in a paragraph: between two samples a vCPU ran ``cpu_time`` nanoseconds (Xen's
``XEN_DOMCTL_getvcpuinfo``). That time is charged to the node of the pCPU it was on at both
samples, or half to each when it moved between nodes in between (Xen tells where a vCPU is, not
where it was: the halves are the estimate that is right on average for a move at a random
moment). Over the window, a vnode's locality is the share of its vCPUs' time charged to the
pnode that holds its memory (libxl's ``vnuma_nodes[].pnode``); a guest's locality is the same
share over all its vnodes. A guest whose locality is under the threshold is bad, and its reason
names its worst vnode and the pnode where that vnode's vCPUs ran instead.

:func:`decide` is the hostnuma job's decide step (and ``host numa``'s): a :class:`HostModel`
read by :class:`guestagent.hostnuma.collect.Monitor` into the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from guestagent.hostnuma.model import (
    UNKNOWN_NODE,
    GuestFigures,
    GuestLayout,
    GuestReported,
    HostFigures,
    HostModel,
    HostNode,
    NodeTime,
    Snapshot,
    VnodeFigures,
    VnodeLayout,
)

#: A vnode whose vCPUs ran less than this over the window has no locality (an idle vnode's
#: few timer ticks say nothing about where its work would run).
MIN_CPU_SECONDS = 0.1
NS = 1_000_000_000


def node_of(cpu: int, cpu_node: Mapping[int, int]) -> int:
    """The node of a pCPU, :data:`UNKNOWN_NODE` when Xen does not place it."""
    return cpu_node.get(cpu, UNKNOWN_NODE)


def interval_node_time(prev: Snapshot, cur: Snapshot, cpu_node: Mapping[int, int]) -> NodeTime:
    """Each vCPU's run time between two snapshots, by node (see the module docstring).

    A vCPU missing from either snapshot, or whose counter went backwards (a new domain with a
    reused id), is left out. A counter that grew by more than the interval is capped to it: one
    vCPU cannot run longer than the wall clock.
    """
    elapsed_ns = max(0, int((cur.at - prev.at) * NS))
    out: NodeTime = {}
    for domid, vcpus in cur.vcpus.items():
        before = {v.vcpu: v for v in prev.vcpus.get(domid, ())}
        for v in vcpus:
            old = before.get(v.vcpu)
            if old is None or v.cpu_time_ns < old.cpu_time_ns:
                continue
            ran = min(v.cpu_time_ns - old.cpu_time_ns, elapsed_ns)
            a, b = node_of(old.cpu, cpu_node), node_of(v.cpu, cpu_node)
            share = {a: ran} if a == b else {a: ran // 2, b: ran - ran // 2}
            out[(domid, v.vcpu)] = share
    return out


def sum_node_time(parts: Iterable[NodeTime]) -> NodeTime:
    """The intervals of a window added up."""
    total: NodeTime = {}
    for part in parts:
        for key, by_node in part.items():
            into = total.setdefault(key, {})
            for node, ns in by_node.items():
                into[node] = into.get(node, 0) + ns
    return total


def format_window(seconds: float) -> str:
    """``10 s``, ``10 min``, ``2 h``: the window as the reason names it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 1)


def vnode_figures(
    domid: int, vnode: VnodeLayout, totals: NodeTime, reported: GuestReported | None
) -> VnodeFigures:
    """One vnode's time by pnode and its locality."""
    by_node: dict[int, int] = {}
    for vcpu in vnode.vcpus:
        for node, ns in totals.get((domid, vcpu), {}).items():
            by_node[node] = by_node.get(node, 0) + ns
    total_ns = sum(by_node.values())
    seconds = total_ns / NS
    local = _pct(by_node.get(vnode.pnode, 0), total_ns) if seconds >= MIN_CPU_SECONDS else None
    return VnodeFigures(
        vnode=vnode.vnode,
        pnode=vnode.pnode,
        vcpus=vnode.vcpus,
        cpu_seconds=round(seconds, 3),
        seconds_by_pnode={n: round(ns / NS, 3) for n, ns in sorted(by_node.items())},
        local_pct=local,
        guest_local_pct=None if reported is None else reported.local_pct.get(vnode.vnode),
        guest_cpu_busy_pct=None if reported is None else reported.cpu_busy_pct.get(vnode.vnode),
        memkb=vnode.memkb,
    )


def guest_locality(vnodes: Sequence[VnodeFigures]) -> float | None:
    """Time on the memory's pnode over all vnodes with a locality; None when none has one."""
    counted = [v for v in vnodes if v.local_pct is not None]
    total = sum(v.cpu_seconds for v in counted)
    if not counted or total <= 0:
        return None
    local = sum(v.seconds_by_pnode.get(v.pnode, 0.0) for v in counted)
    return _pct(local, total)


def bad_reason(vnodes: Sequence[VnodeFigures], window_seconds: float) -> str:
    """The worst vnode, where its vCPUs ran instead, and where its memory is."""
    worst = min((v for v in vnodes if v.local_pct is not None), key=lambda v: v.local_pct or 0.0)
    away = {n: s for n, s in worst.seconds_by_pnode.items() if n != worst.pnode}
    node, seconds = max(away.items(), key=lambda item: (item[1], -item[0]),
                        default=(UNKNOWN_NODE, 0.0))
    where = "pCPUs of no known node" if node == UNKNOWN_NODE else f"pnode {node}"
    return (
        f"vnode {worst.vnode}'s vCPUs ran on {where} for {_pct(seconds, worst.cpu_seconds):.0f} % "
        f"of the last {format_window(window_seconds)} while its memory is on pnode {worst.pnode}"
    )


def guest_node_ns(domid: int, totals: NodeTime) -> dict[int, int]:
    """All the guest's vCPUs' run time over the window by pnode, in nanoseconds."""
    by_node: dict[int, int] = {}
    for (owner, _vcpu), times in totals.items():
        if owner == domid:
            for node, ns in times.items():
                by_node[node] = by_node.get(node, 0) + ns
    return dict(sorted(by_node.items()))


def where_vcpus_ran(ns_by_pnode: Mapping[int, int]) -> str:
    """``its vCPUs ran 70 % on pnode 0, 30 % on pnode 1`` (largest share first)."""
    total = sum(ns_by_pnode.values())
    if total / NS < MIN_CPU_SECONDS:
        return f"its vCPUs ran less than {MIN_CPU_SECONDS} s in the window"
    shares = sorted(ns_by_pnode.items(), key=lambda item: (-item[1], item[0]))
    parts = [f"{_pct(s, total):.0f} % on "
             + ("pCPUs of no known node" if n == UNKNOWN_NODE else f"pnode {n}")
             for n, s in shares]
    return "its vCPUs ran " + ", ".join(parts)


def _note(layout: GuestLayout, locality: float | None,
          ns_by_pnode: Mapping[int, int]) -> str | None:
    if not layout.vnodes:
        # Where its vCPUs ran is measured; where its memory is, Dom0 cannot tell (Xen keeps no
        # per-domain per-node page count a hypercall returns): no locality is made up.
        return ("no vNUMA: no vnode -> pnode map, Dom0 cannot tell which nodes hold its "
                "memory; " + where_vcpus_ran(ns_by_pnode))
    if locality is None:
        return f"its vCPUs ran less than {MIN_CPU_SECONDS} s per vnode in the window"
    return None


def guest_figures(
    layout: GuestLayout,
    totals: NodeTime,
    reported: GuestReported | None,
    window_seconds: float,
    threshold_pct: float,
) -> GuestFigures:
    """One guest: each vnode's figures, its locality, and the reason when it is bad."""
    vnodes = tuple(vnode_figures(layout.domid, v, totals, reported) for v in layout.vnodes)
    locality = guest_locality(vnodes)
    by_pnode = guest_node_ns(layout.domid, totals)
    bad = locality is not None and locality < threshold_pct
    return GuestFigures(
        domid=layout.domid,
        name=layout.name,
        vnuma=bool(layout.vnodes),
        locality_pct=locality,
        bad=bad,
        reason=bad_reason(vnodes, window_seconds) if bad else None,
        vnodes=vnodes,
        note=_note(layout, locality, by_pnode),
        seconds_by_pnode={n: round(ns / NS, 3) for n, ns in by_pnode.items()},
    )


def worst_first(guest: GuestFigures) -> tuple[float, str, int]:
    """Sort key: lowest locality first, guests without a figure last, then by name."""
    locality = 101.0 if guest.locality_pct is None else guest.locality_pct
    return (locality, guest.name, guest.domid)


def compute(
    layouts: Sequence[GuestLayout],
    totals: NodeTime,
    window_seconds: float,
    threshold_pct: float,
    reported: Mapping[int, GuestReported] | None = None,
    nodes: Sequence[HostNode] = (),
    problems: Sequence[str] = (),
) -> HostFigures:
    """Every guest's figures, worst locality first, with the host's nodes."""
    reported = reported or {}
    by_domain: dict[int, NodeTime] = {}
    for key, times in totals.items():
        by_domain.setdefault(key[0], {})[key] = times
    guests = [
        guest_figures(g, by_domain.get(g.domid, {}), reported.get(g.domid), window_seconds,
                      threshold_pct)
        for g in layouts
    ]
    return HostFigures(
        window_seconds=window_seconds,
        threshold_pct=threshold_pct,
        guests=tuple(sorted(guests, key=worst_first)),
        nodes=tuple(nodes),
        problems=tuple(problems),
    )


def decide(model: HostModel, threshold_pct: float) -> HostFigures:
    """The hostnuma job's decide step (pure): the figures and reasons of every guest read,
    worst first, a guest bad under ``threshold_pct`` (``[hostnuma] bad_locality_pct``). There
    is no state: the window (:class:`~guestagent.hostnuma.collect.Window`) is what the reader
    keeps, and the job changes nothing on the host, so there is no apply."""
    return compute(model.layouts, model.totals, model.window_seconds, threshold_pct,
                   model.reported, model.nodes, model.problems)
