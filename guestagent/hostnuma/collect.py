"""Reading the host NUMA view in Dom0: Xen (cputopoinfo, numainfo, getvcpuinfo), xenstore (the
domains, their ``vm`` uuid, their own published figures) and libxl's stored configuration (each
guest's vnode -> pnode map and vCPUs). :class:`Monitor` keeps the samples of a sliding window and
reads the rest into a :class:`~guestagent.hostnuma.model.HostModel` (:meth:`Monitor.read`) for
:func:`guestagent.hostnuma.figures.decide`.

Per sample: one xenstore ``directory`` of ``/local/domain``; per vCPU of every guest one
``XEN_DOMCTL_getvcpuinfo``; ``cputopoinfo`` (2 sysctls). A guest's libxl configuration is read
once per domain (cached by domid and uuid); ``numainfo`` (free memory) and the guests' own
figures (1 + 2 per vnode xenstore reads) only when a report is made.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None where evaluated (3.9).

from __future__ import annotations

import errno
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Callable

from guestagent.errors import GuestAgentError, InputError
from guestagent.hostfs import HostFS
from guestagent.hostnuma import figures as figures_mod
from guestagent.hostnuma import reported as reported_mod
from guestagent.hostnuma.model import (
    GuestLayout,
    GuestReported,
    HostFigures,
    HostModel,
    HostNode,
    NodeTime,
    Snapshot,
    VcpuSample,
    VnodeLayout,
)
from guestagent.log import get_logger

DOMAINS_ROOT = "/local/domain"
MAX_NAME = 64
_VM_RE = re.compile(r"/vm/(.{1,64})")
_NAME_RE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,63}")
MAX_VCPU_ID = 4095


def _int_list(value: Any, source: str, high: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > high + 1:
        raise InputError(source, f"expected a list of at most {high + 1} numbers", value)
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= high:
            raise InputError(source, f"expected 0..{high}", v)
    return tuple(sorted(set(value)))


def guest_layout(doc: dict[str, Any], domid: int, source: str, fallback_name: str) -> GuestLayout:
    """A guest's vnodes from its ``libxl_domain_config``: pnode (checked by
    :func:`guestagent.dom0.toolstack.guest_config`), vCPUs (a libxl bitmap: the list of set
    bits) and size; its name from ``c_info.name`` when it is a sane one."""
    from guestagent.dom0.toolstack import guest_config

    config = guest_config(doc, domid, source)
    name = doc.get("c_info", {}).get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        name = fallback_name
    vnodes = []
    raw = doc.get("b_info", {}).get("vnuma_nodes") or []
    for i, (vnode, pnode) in enumerate(zip(raw, config.vnode_pnodes)):
        where = f"{source}: b_info.vnuma_nodes[{i}]"
        vcpus = _int_list(vnode.get("vcpus", []), f"{where}.vcpus", MAX_VCPU_ID)
        memkb = vnode.get("memkb")
        if not isinstance(memkb, int) or isinstance(memkb, bool) or memkb < 0:
            memkb = None
        vnodes.append(VnodeLayout(i, pnode, vcpus, memkb))
    return GuestLayout(domid, name, config.type, tuple(vnodes))


class Collector:
    """The reads, over Dom0's xenstore connection, a Sysctl and a Domctl on one privcmd."""

    def __init__(self, client: Any, hostfs: HostFS, sysctl: Any, domctl: Any,
                 read_config: Callable[[int, str | None], Any] | None = None,
                 vcpu_to_vnode: Callable[[int], list[int] | None] | None = None) -> None:
        self.client = client
        self.hostfs = hostfs
        self.sysctl = sysctl
        self.domctl = domctl
        self._read_config = read_config or self._libxl_config
        self._vcpu_to_vnode = vcpu_to_vnode or self._xen_vcpu_to_vnode
        self._layouts: dict[int, tuple[str | None, GuestLayout]] = {}

    def _libxl_config(self, domid: int, uuid: str | None) -> Any:
        from guestagent.dom0.toolstack import read_domain_config

        return read_domain_config(self.hostfs, domid, uuid)

    def _xen_vcpu_to_vnode(self, domid: int) -> list[int] | None:
        """Xen's own vCPU -> vnode map of a guest (XENMEM_get_vnumainfo on its domid, over the
        Domctl's privcmd); None without vNUMA."""
        from guestagent.xen.errors import NoVnuma
        from guestagent.xen.vnuma import get_vnumainfo

        try:
            return get_vnumainfo(self.domctl.privcmd, domid=domid).vcpu_to_vnode
        except NoVnuma:
            return None

    def _read(self, path: str) -> bytes | None:
        from guestagent.xen.xenstore import XenstoreError

        try:
            raw: bytes = self.client.read(path)
            return raw
        except XenstoreError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    def cpu_nodes(self) -> tuple[dict[int, int], int]:
        """{pCPU: node} of the present CPUs Xen places, and the number of CPU slots."""
        topo = self.sysctl.cputopoinfo()
        nodes = {cpu: t.node for cpu, t in enumerate(topo) if t.present and t.node is not None}
        return nodes, len(topo)

    def host_nodes(self) -> list[HostNode]:
        info = self.sysctl.numainfo()
        return [HostNode(i, m.memsize, m.memfree) for i, m in enumerate(info.memory)]

    def domains(self, problems: list[str]) -> list[int]:
        from guestagent.dom0.backend import list_domids

        return list_domids(self.client, DOMAINS_ROOT, problems)

    def _uuid(self, domid: int) -> str | None:
        from guestagent.dom0.backend import parse_value
        from guestagent.dom0.toolstack import parse_uuid

        path = f"{DOMAINS_ROOT}/{domid}/vm"
        raw = self._read(path)
        match = None if raw is None else _VM_RE.fullmatch(parse_value(raw, path))
        return None if match is None else parse_uuid(match.group(1), path)

    def _xs_name(self, domid: int) -> str:
        raw = self._read(f"{DOMAINS_ROOT}/{domid}/name")
        text = "" if raw is None else raw.rstrip(b"\0").decode("ascii", "replace")
        return text if _NAME_RE.fullmatch(text) else f"dom{domid}"

    def layout(self, domid: int) -> GuestLayout:
        """The guest's layout, cached while its uuid stays; no config: no vnodes."""
        uuid = self._uuid(domid)
        cached = self._layouts.get(domid)
        if cached is not None and cached[0] == uuid:
            return cached[1]
        name = self._xs_name(domid)
        found = self._read_config(domid, uuid)
        layout = (GuestLayout(domid, name, None, ()) if found is None
                  else guest_layout(found[0], domid, found[1], name))
        if layout.vnodes and not any(v.vcpus for v in layout.vnodes):
            layout = self._vcpus_from_xen(layout)
        self._layouts[domid] = (uuid, layout)
        return layout

    def _vcpus_from_xen(self, layout: GuestLayout) -> GuestLayout:
        """libxl's configuration named no vCPU of any vnode: take Xen's vCPU -> vnode map (the
        vnode ids Xen reports must be the configured ones)."""
        mapping = self._vcpu_to_vnode(layout.domid) or []
        source = f"XENMEM_get_vnumainfo (domain {layout.domid})"
        if any(not 0 <= n < len(layout.vnodes) for n in mapping):
            raise InputError(source, f"vnode ids beyond the {len(layout.vnodes)} configured",
                             sorted(set(mapping)))
        vnodes = tuple(
            replace(v, vcpus=tuple(c for c, n in enumerate(mapping) if n == v.vnode))
            for v in layout.vnodes
        )
        return replace(layout, vnodes=vnodes)

    def forget_except(self, domids: Sequence[int]) -> None:
        for gone in set(self._layouts) - set(domids):
            del self._layouts[gone]

    def snapshot(self, domids: Sequence[int], max_cpus: int, at: float) -> Snapshot:
        vcpus: dict[int, tuple[VcpuSample, ...]] = {}
        for domid in domids:
            infos = self.domctl.vcpus(domid, max_cpus)
            if infos is None:
                continue  # gone since the listing
            vcpus[domid] = tuple(
                VcpuSample(i.vcpu, i.cpu, i.cpu_time_ns, i.online) for i in infos
            )
        return Snapshot(at, vcpus)

    def reported(self, layout: GuestLayout) -> GuestReported | None:
        """The guest's own figures, validated (InputError when malformed), None when absent."""
        base = f"{DOMAINS_ROOT}/{layout.domid}/{reported_mod.SECTION}"
        nr = reported_mod.parse_nr_vnodes(self._read(f"{base}/nr-vnodes"), base,
                                          len(layout.vnodes))
        if nr is None:
            return None
        values = {key: self._read(f"{base}/{key}")
                  for key in ["updated", *reported_mod.keys_for(nr)]}
        return reported_mod.parse_reported(values, nr, base)


class Window:
    """The intervals of the last ``seconds``, each as vCPU time by node.

    Bounded: intervals shorter than ``seconds / MAX_BUCKETS`` are added into the newest bucket
    until it is that long, so a 1 s sample over a day keeps 240 buckets, not 86,400 intervals
    (the window then ends up to one bucket longer than asked, which the reason says: it names
    the span the buckets cover).
    """

    MAX_BUCKETS = 240

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._prev: Snapshot | None = None
        self._parts: deque[tuple[float, float, NodeTime]] = deque()

    def add(self, snap: Snapshot, cpu_node: dict[int, int]) -> None:
        prev = self._prev
        if prev is not None and snap.at > prev.at:
            part = figures_mod.interval_node_time(prev, snap, cpu_node)
            last = self._parts[-1] if self._parts else None
            if last is not None and snap.at - last[0] <= self.seconds / self.MAX_BUCKETS:
                self._parts[-1] = (last[0], snap.at, figures_mod.sum_node_time([last[2], part]))
            else:
                self._parts.append((prev.at, snap.at, part))
        self._prev = snap
        # Drop the intervals that ended before the window: one that straddles its start stays
        # (a last sample a little late must not cost the first interval; incident: the e2e run
        # 20261204-223509-6792 reported "the last 9 s" for a 10 s command).
        while self._parts and self._parts[0][1] <= snap.at - self.seconds:
            self._parts.popleft()

    def restart(self) -> None:
        self._prev = None
        self._parts.clear()

    @property
    def covered(self) -> float:
        """Seconds the kept intervals span (less than ``seconds`` until the window is full)."""
        return self._parts[-1][1] - self._parts[0][0] if self._parts else 0.0

    def totals(self) -> NodeTime:
        return figures_mod.sum_node_time(part for _start, _end, part in self._parts)


class Monitor:
    """Sample (:meth:`tick`) into a :class:`Window`; :meth:`report` the figures. Input
    problems are logged once each time the set of them changes."""

    def __init__(self, collector: Collector, window_seconds: float) -> None:
        self.collector = collector
        self.window = Window(window_seconds)
        self.samples = 0
        self._domids: list[int] = []
        self._logged: dict[str, str] = {}
        self._log = get_logger("hostnuma")

    def tick(self, at: float) -> None:
        problems: list[str] = []
        domids = self.collector.domains(problems)
        cpu_node, max_cpus = self.collector.cpu_nodes()
        self.window.add(self.collector.snapshot(domids, max_cpus, at), cpu_node)
        self.collector.forget_except(domids)
        self._domids = domids
        self.samples += 1
        self._note_problems("listing", problems)

    def _note_problems(self, scope: str, problems: Sequence[str]) -> None:
        """One log line per problem the first time it is seen in this scope (a guest, the
        listing); a scope whose problems went away may log again later."""
        text = "; ".join(problems)
        if text and self._logged.get(scope) != text:
            for problem in problems:
                self._log.warning("hostnuma_input_ignored", scope=scope, problem=problem)
        self._logged[scope] = text

    def _guest(self, domid: int) -> tuple[GuestLayout | None, GuestReported | None]:
        """The guest's layout and its own figures; a malformed layout (Dom0's own libxl file)
        is raised, a malformed report (the guest's) is logged and left out."""
        layout = self.collector.layout(domid)
        try:
            reported = self.collector.reported(layout) if layout.vnodes else None
        except (InputError, OSError) as e:
            self._note_problems(f"{layout.name} (dom{domid}) published figures", [str(e)])
            return layout, None
        self._note_problems(f"{layout.name} (dom{domid}) published figures", [])
        return layout, reported

    def read(self) -> HostModel:
        """Every listed guest's layout and own figures, the window's vCPU time and the host's
        nodes (a guest that cannot be read is one line in ``problems``, not in the model)."""
        layouts: list[GuestLayout] = []
        reported: dict[int, GuestReported] = {}
        problems: list[str] = []
        for domid in self._domids:
            try:
                layout, figures = self._guest(domid)
            except (GuestAgentError, OSError) as e:
                problems.append(f"dom{domid}: {e}")
                continue
            if layout is not None:
                layouts.append(layout)
            if figures is not None:
                reported[domid] = figures
        self._note_problems("guests", problems)
        return HostModel(tuple(layouts), self.window.totals(), self.window.covered, reported,
                         tuple(self.collector.host_nodes()), tuple(problems))

    def report(self, threshold_pct: float) -> HostFigures:
        """Read, then decide (:func:`guestagent.hostnuma.figures.decide`)."""
        return figures_mod.decide(self.read(), threshold_pct)
