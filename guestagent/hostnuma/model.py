"""Plain data of the host NUMA view: what the collector reads, what the figures are made of."""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None where evaluated (3.9).

from __future__ import annotations

from dataclasses import dataclass, field

#: The node a pCPU Xen does not place (``XEN_INVALID_NODE_ID``, or a CPU cputopoinfo did not list).
UNKNOWN_NODE = -1


@dataclass(frozen=True)
class VnodeLayout:
    vnode: int
    pnode: int  # where libxl put the vnode's memory
    vcpus: tuple[int, ...]
    memkb: int | None = None


@dataclass(frozen=True)
class GuestLayout:
    """One guest as the toolstack configured it; ``vnodes`` is empty without vNUMA."""

    domid: int
    name: str
    type: str | None
    vnodes: tuple[VnodeLayout, ...]


@dataclass(frozen=True)
class VcpuSample:
    vcpu: int
    cpu: int  # the pCPU it is on or last ran on
    cpu_time_ns: int
    online: bool = True


@dataclass(frozen=True)
class Snapshot:
    """Every guest's vCPUs at one moment of the monotonic clock."""

    at: float
    vcpus: dict[int, tuple[VcpuSample, ...]]


#: Nanoseconds each vCPU ran on each pnode over some interval: {(domid, vcpu): {pnode: ns}}.
NodeTime = dict[tuple[int, int], dict[int, int]]


@dataclass(frozen=True)
class HostNode:
    node: int
    size_bytes: int | None  # None: offline
    free_bytes: int | None


@dataclass(frozen=True)
class GuestReported:
    """What the guest's own numa job published (data/guestagent/numa), once validated:
    per vnode, its allocation locality and vCPU busy share (None: the guest did not know)."""

    local_pct: dict[int, float | None] = field(default_factory=dict)
    cpu_busy_pct: dict[int, float | None] = field(default_factory=dict)
    updated: int | None = None


@dataclass(frozen=True)
class HostModel:
    """What the hostnuma job read for one report: the guests' layouts (listed order), the vCPU
    time of the window by node, the seconds the window covers, each guest's own published
    figures (validated; absent when it published none or garbage), the host's nodes, and one
    line per guest or listing entry that could not be read."""

    layouts: tuple[GuestLayout, ...]
    totals: NodeTime
    window_seconds: float
    reported: dict[int, GuestReported] = field(default_factory=dict)
    nodes: tuple[HostNode, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class VnodeFigures:
    vnode: int
    pnode: int
    vcpus: tuple[int, ...]
    cpu_seconds: float  # its vCPUs' run time over the window
    seconds_by_pnode: dict[int, float]
    local_pct: float | None  # share of that time on pCPUs of ``pnode``; None: too little time
    guest_local_pct: float | None = None  # the guest's own allocation locality
    guest_cpu_busy_pct: float | None = None
    memkb: int | None = None


@dataclass(frozen=True)
class GuestFigures:
    domid: int
    name: str
    vnuma: bool
    locality_pct: float | None  # vCPU time on the memory's pnode, over all its vnodes
    bad: bool
    reason: str | None  # one line for a bad guest
    vnodes: tuple[VnodeFigures, ...]
    note: str | None = None  # why there is no figure (no vNUMA, idle, no config)
    #: All its vCPUs' run time over the window by the pnode of the pCPUs (with or without vNUMA).
    seconds_by_pnode: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class HostFigures:
    window_seconds: float
    threshold_pct: float
    guests: tuple[GuestFigures, ...]  # worst locality first
    nodes: tuple[HostNode, ...]
    problems: tuple[str, ...] = ()
