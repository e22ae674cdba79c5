"""``host numa``'s output: a table (worst locality first, a reason under each bad guest), one JSON
object, and the job's status entries that become the ``guestagent_hostnuma_*`` metrics."""

from __future__ import annotations

from typing import Any

from guestagent.hostnuma.figures import format_window
from guestagent.hostnuma.model import GuestFigures, HostFigures, VnodeFigures
from guestagent.units import KIB, MIB


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def _vnode_cell(v: VnodeFigures) -> str:
    return f"{v.vnode}@p{v.pnode} {_pct(v.local_pct)}"


def _guest_lines(g: GuestFigures) -> list[str]:
    cells = "  ".join(_vnode_cell(v) for v in g.vnodes) or "-"
    flag = "BAD" if g.bad else ""
    lines = [f"{g.name[:24]:24} {g.domid:5}  {_pct(g.locality_pct):>8}  {flag:3}  {cells}"]
    if g.reason is not None:
        lines.append(f"    {g.reason}")
    elif g.note is not None:
        lines.append(f"    ({g.note})")
    return lines


def render_table(report: HostFigures) -> str:
    bad = sum(g.bad for g in report.guests)
    lines = [
        f"host numa: {len(report.guests)} guests, {bad} under {report.threshold_pct:g} % "
        f"locality, vCPU time over the last {format_window(report.window_seconds)}",
        f"{'guest':24} {'domid':>5}  {'locality':>8}  {'':3}  vnode@pnode local",
    ]
    for g in report.guests:
        lines += _guest_lines(g)
    if not report.guests:
        lines.append("no guest")
    lines.append("node  size MiB  free MiB")
    for n in report.nodes:
        size = "offline" if n.size_bytes is None else str(n.size_bytes // MIB)
        free = "-" if n.free_bytes is None else str(n.free_bytes // MIB)
        lines.append(f"{n.node:4}  {size:>8}  {free:>8}")
    lines += [f"problem: {p}" for p in report.problems]
    return "\n".join(lines) + "\n"


def _vnode_json(v: VnodeFigures) -> dict[str, Any]:
    return {
        "vnode": v.vnode,
        "pnode": v.pnode,
        "vcpus": list(v.vcpus),
        "memkb": v.memkb,
        "cpu_seconds": v.cpu_seconds,
        "seconds_by_pnode": {str(n): s for n, s in v.seconds_by_pnode.items()},
        "local_pct": v.local_pct,
        "guest_local_pct": v.guest_local_pct,
        "guest_cpu_busy_pct": v.guest_cpu_busy_pct,
    }


def to_json(report: HostFigures) -> dict[str, Any]:
    return {
        "window_seconds": round(report.window_seconds, 3),
        "threshold_pct": report.threshold_pct,
        "guests": [
            {
                "domid": g.domid,
                "name": g.name,
                "vnuma": g.vnuma,
                "locality_pct": g.locality_pct,
                "bad": g.bad,
                "reason": g.reason,
                "note": g.note,
                "seconds_by_pnode": {str(n): s for n, s in g.seconds_by_pnode.items()},
                "vnodes": [_vnode_json(v) for v in g.vnodes],
            }
            for g in report.guests
        ],
        "nodes": [
            {"node": n.node, "size_bytes": n.size_bytes, "free_bytes": n.free_bytes}
            for n in report.nodes
        ],
        "problems": list(report.problems),
    }




def _known(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if v is not None}


def status(report: HostFigures) -> dict[str, Any]:
    """The job's status entries. ``by_node`` becomes ``guestagent_hostnuma_node_<figure>{node}``;
    each ``series_<name>`` row (labels and figures) becomes
    ``guestagent_hostnuma_<name>_<figure>{<labels>}`` (guestagent/daemon/metrics.py):
    ``series_node_vnode`` gives ``guestagent_hostnuma_node_vnode_memory_bytes{node,guest,vnode}``
    and ``_vcpus``, one per vnode on the node that holds its memory; ``series_guest_node``
    gives ``guestagent_hostnuma_guest_node_cpu_seconds{guest,node}``, where all its vCPUs ran
    (the one figure a guest without vNUMA has)."""
    guests = []
    vnodes = []
    placed = []
    ran = []
    for g in report.guests:
        # The name, not the domid, labels a guest: libxl keeps names unique on a host, and a
        # domid changes at every reboot of the guest (a new series each time).
        labels = {"guest": g.name}
        guests.append({"labels": labels, **_known(
            {"domid": g.domid, "locality_pct": g.locality_pct, "bad": int(g.bad)})})
        ran += [{"labels": {**labels, "node": str(n)}, "cpu_seconds": s}
                for n, s in g.seconds_by_pnode.items()]
        for v in g.vnodes:
            vnodes.append({
                "labels": {**labels, "vnode": str(v.vnode)},
                **_known({"pnode": v.pnode, "local_pct": v.local_pct,
                          "cpu_seconds": v.cpu_seconds, "guest_local_pct": v.guest_local_pct,
                          "guest_cpu_busy_pct": v.guest_cpu_busy_pct}),
            })
            # Where the vnode's memory sits, with the node as a label: Prometheus can join it
            # with the node's free memory (a figure cannot become a label in PromQL).
            placed.append({
                "labels": {"node": str(v.pnode), **labels, "vnode": str(v.vnode)},
                **_known({"memory_bytes": None if v.memkb is None else v.memkb * KIB,
                          "vcpus": len(v.vcpus)}),
            })
    return {
        "window_seconds": round(report.window_seconds, 3),
        "guests": len(report.guests),
        "bad_guests": sum(g.bad for g in report.guests),
        "problems": len(report.problems),
        "by_node": {
            str(n.node): _known({"size_bytes": n.size_bytes, "free_bytes": n.free_bytes})
            for n in report.nodes
        },
        "series_guest": guests,
        "series_guest_vnode": vnodes,
        "series_node_vnode": placed,
        "series_guest_node": ran,
    }
