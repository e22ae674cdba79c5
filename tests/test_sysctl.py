"""The topology sysctls through the real C doorway and buffers, against a simulated hypervisor.

``SysctlXen`` replaces only the ioctl: it reads and writes the hypercall's memory the way Xen
4.17's ``xen/common/sysctl.c`` does (reference section 7.3) - the interface-version check, the
NULL-handle count queries, the smaller-N stride of numainfo, non-present CPUs, and pcitopoinfo
stopping after 64 entries - so the bytes the agent lays out are the bytes under test.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.xen.errors import HypercallError, XenUnavailable
from guestagent.xen.privcmd import SYSCTL, XEN_VERSION, Privcmd, ffi
from guestagent.xen.sysctl import (
    XEN_INVALID_DEV,
    XEN_INVALID_MEM_SZ,
    XEN_INVALID_NODE_DIST,
    XEN_INVALID_NODE_ID,
    PciAddress,
    Sysctl,
    candidate_versions,
)

GIB = 1 << 30
INVALID = 0xFFFFFFFF


@dataclass
class Host:
    """What the simulated Xen knows: per node (memsize, memfree) or None (offline), distances
    (``None`` = NUMA_NO_DISTANCE), per CPU (core, socket, node) or None (not present), and the
    node of each PCI device Xen knows (None = no node)."""

    memory: list[tuple[int, int] | None]
    distances: list[list[int | None]]
    cpus: list[tuple[int, int, int | None] | None]
    pci: dict[tuple[int, int, int], int | None] = field(default_factory=dict)


TWO_NODES = Host(
    memory=[(8 * GIB, 6 * GIB), (8 * GIB, 7 * GIB)],
    distances=[[10, 21], [21, 10]],
    cpus=[(0, 0, 0), (1, 0, 0), (0, 1, 1), (1, 1, 1)],
    pci={(0, 0x00, 0x00): None, (0, 0x3B, 0x00): 1, (0, 0x00, 0x10): 0},
)


@dataclass
class SysctlXen(Privcmd):
    host: Host = field(default_factory=lambda: TWO_NODES)
    release: tuple[int, int] = (4, 17)
    accepts: int = 0x15  # the interface version this "Xen" was built with
    preempt: bool = True  # stop pcitopoinfo after 64 entries, as a busy Xen does
    errno_for_sysctl: int = 0
    calls: list[str] = field(default_factory=list)
    versions_seen: list[int] = field(default_factory=list)
    #: Called before each numainfo/cputopoinfo fetch (not the count query): may change the host.
    on_fetch: Any = None
    #: Overrides of what Xen writes back (hostile hypervisor); keyed by command name.
    lie: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(-1, -1, "/dev/xen/privcmd", HostFS("/nonexistent"))

    def _invoke(self, op: int, args: list[int]) -> int:
        if op == XEN_VERSION:
            return (self.release[0] << 16) | self.release[1]
        assert op == SYSCTL, op
        if self.errno_for_sysctl:
            return -self.errno_for_sysctl
        sysctl: Any = ffi.cast("struct ga_xen_sysctl *", args[0])
        self.versions_seen.append(int(sysctl.interface_version))
        if sysctl.interface_version != self.accepts:
            self.calls.append("EACCES")
            return -errno.EACCES
        cmd = int(sysctl.cmd)
        if cmd == 3:
            return self._physinfo(sysctl.u.physinfo)
        if cmd == 17:
            return self._numainfo(sysctl.u.numainfo)
        if cmd == 16:
            return self._cputopoinfo(sysctl.u.cputopoinfo)
        if cmd == 22:
            return self._pcitopoinfo(sysctl.u.pcitopoinfo)
        return -errno.EOPNOTSUPP

    def _physinfo(self, p: Any) -> int:
        h = self.host
        p.threads_per_core, p.cores_per_socket = 1, 2
        p.nr_cpus = sum(c is not None for c in h.cpus)
        p.max_cpu_id = len(h.cpus) - 1
        p.nr_nodes = sum(m is not None for m in h.memory)
        p.max_node_id = len(h.memory) - 1
        p.cpu_khz = 2_000_000
        p.total_pages, p.free_pages = 4_000_000, 3_000_000
        self.calls.append("physinfo")
        return 0

    def _numainfo(self, ni: Any) -> int:
        if ni.meminfo == 0 and ni.distance == 0:
            ni.num_nodes = self.lie.get("numainfo_count", len(self.host.memory))
            self.calls.append("numainfo?")
            return 0
        if self.on_fetch is not None:
            self.on_fetch(self)
        h = self.host
        n = min(len(h.memory), int(ni.num_nodes))
        mem = ffi.cast("struct ga_xen_sysctl_meminfo *", ni.meminfo)
        dist = ffi.cast("uint32_t *", ni.distance)
        for i in range(n):
            m = h.memory[i]
            mem[i].memsize, mem[i].memfree = m if m is not None else (XEN_INVALID_MEM_SZ,) * 2
            for j in range(n):
                d = h.distances[i][j]
                dist[i * n + j] = XEN_INVALID_NODE_DIST if d is None else d
        if ni.num_nodes != n:
            ni.num_nodes = n
        self.calls.append(f"numainfo({n})")
        return 0

    def _cputopoinfo(self, ti: Any) -> int:
        h = self.host
        if ti.cputopo == 0:
            ti.num_cpus = self.lie.get("cputopo_count", len(h.cpus))
            self.calls.append("cputopoinfo?")
            return 0
        if self.on_fetch is not None:
            self.on_fetch(self)
        n = min(len(h.cpus), int(ti.num_cpus))
        out = ffi.cast("struct ga_xen_sysctl_cputopo *", ti.cputopo)
        for i in range(n):
            c = h.cpus[i]
            if c is None:
                out[i].core = out[i].socket = out[i].node = INVALID
            else:
                out[i].core, out[i].socket = c[0], c[1]
                out[i].node = XEN_INVALID_NODE_ID if c[2] is None else c[2]
        ti.num_cpus = n
        self.calls.append(f"cputopoinfo({n})")
        return 0

    def _pcitopoinfo(self, ti: Any) -> int:
        if ti.devs == 0 or ti.nodes == 0:
            return -errno.EINVAL
        devs = ffi.cast("struct ga_physdev_pci_device *", ti.devs)
        nodes = ffi.cast("uint32_t *", ti.nodes)
        i = 0
        while i < ti.num_devs:
            key = (int(devs[i].seg), int(devs[i].bus), int(devs[i].devfn))
            if key not in self.host.pci:
                nodes[i] = XEN_INVALID_DEV
            else:
                node = self.host.pci[key]
                nodes[i] = XEN_INVALID_NODE_ID if node is None else node
            i += 1
            if i > 0x3F and self.preempt:
                break
        if "pcitopo_done" in self.lie:
            i = self.lie["pcitopo_done"]
        if ti.num_devs != i:
            ti.num_devs = i
        self.calls.append(f"pcitopoinfo({i})")
        return 0


def addr(text: str) -> PciAddress:
    return PciAddress.parse(text)


# --- interface version -------------------------------------------------------------------------


def test_version_derived_from_xen_version_first_try() -> None:
    xen = SysctlXen()
    sysctl = Sysctl(xen)
    assert sysctl.physinfo().nr_nodes == 2
    assert xen.versions_seen == [0x15]
    assert sysctl.interface_version == 0x15
    assert sysctl.xen_release == (4, 17)


def test_wrong_version_eacces_then_retry_and_remember() -> None:
    # A 4.17-numbered build that still speaks 0x14 (a distro backport, say).
    xen = SysctlXen(accepts=0x14)
    sysctl = Sysctl(xen)
    info = sysctl.numainfo()
    assert info.num_nodes == 2
    assert xen.versions_seen[:2] == [0x15, 0x14]
    assert sysctl.interface_version == 0x14
    xen.versions_seen.clear()
    sysctl.cputopoinfo()
    assert set(xen.versions_seen) == {0x14}


def test_physinfo_page_counts_only_with_the_declared_layout() -> None:
    old = Sysctl(SysctlXen(release=(4, 16), accepts=0x14)).physinfo()
    assert old.total_pages is None and old.nr_cpus == 4
    new = Sysctl(SysctlXen()).physinfo()
    assert new.total_pages == 4_000_000 and new.free_pages == 3_000_000


def test_every_version_refused_is_bounded_and_says_so() -> None:
    xen = SysctlXen(accepts=0x99)
    with pytest.raises(XenUnavailable, match="refused every known sysctl interface version"):
        Sysctl(xen).physinfo()
    assert len(xen.versions_seen) == len(set(xen.versions_seen)) == 7


def test_unknown_newer_release_starts_from_the_newest_known() -> None:
    assert candidate_versions((4, 30))[0] == 0x16
    assert candidate_versions((4, 17))[:2] == [0x15, 0x14]
    assert candidate_versions(None)[0] == 0x16
    xen = SysctlXen(release=(4, 30), accepts=0x16)
    Sysctl(xen).physinfo()
    assert xen.versions_seen == [0x16]


def test_eperm_means_not_dom0() -> None:
    with pytest.raises(XenUnavailable, match="only the control domain"):
        Sysctl(SysctlXen(errno_for_sysctl=errno.EPERM)).numainfo()
    with pytest.raises(HypercallError, match="EFAULT"):
        Sysctl(SysctlXen(errno_for_sysctl=errno.EFAULT)).numainfo()


# --- numainfo ----------------------------------------------------------------------------------


def test_numainfo_two_nodes() -> None:
    xen = SysctlXen()
    info = Sysctl(xen).numainfo()
    assert [m.memsize for m in info.memory] == [8 * GIB, 8 * GIB]
    assert info.memory[1].memfree == 7 * GIB
    assert info.distances == [[10, 21], [21, 10]]
    assert xen.calls == ["numainfo?", "numainfo(2)", "numainfo?"]


def test_numainfo_offline_node_and_unknown_distances() -> None:
    host = Host(
        memory=[(8 * GIB, 1 * GIB), None, (4 * GIB, 4 * GIB)],
        distances=[[10, None, 20], [None, None, None], [20, None, 10]],
        cpus=[(0, 0, 0), (0, 1, 2)],
    )
    info = Sysctl(SysctlXen(host=host)).numainfo()
    assert not info.memory[1].online and info.memory[1].memsize is None
    assert info.memory[2].online
    assert info.distances[0] == [10, None, 20]


def test_numainfo_node_count_shrinks_uses_the_smaller_stride() -> None:
    # Between the count query (3) and the fetch a node goes away: Xen fills 2 rows with stride 2.
    host = Host(
        memory=[(GIB, GIB), (GIB, GIB), (GIB, GIB)],
        distances=[[10, 20, 30], [20, 10, 40], [30, 40, 10]],
        cpus=[(0, 0, 0)],
    )

    def shrink(xen: SysctlXen) -> None:
        xen.host = Host(xen.host.memory[:2], [[10, 20], [20, 10]], xen.host.cpus)

    xen = SysctlXen(host=host, on_fetch=shrink)
    info = Sysctl(xen).numainfo()
    assert info.distances == [[10, 20], [20, 10]]


def test_numainfo_node_count_grows_restarts_bounded() -> None:
    # The count grows after the query: Xen silently fills only the rows asked for, so a
    # re-query notices and starts over.
    grown = Host([(GIB, GIB)] * 3, [[10, 20, 20], [20, 10, 20], [20, 20, 10]], [(0, 0, 0)])

    def grow(xen: SysctlXen) -> None:
        if xen.lie.get("numainfo_count") == 2:
            xen.lie.pop("numainfo_count")
            xen.host = grown

    xen = SysctlXen(host=grown, on_fetch=grow, lie={"numainfo_count": 2})
    info = Sysctl(xen).numainfo()
    assert info.num_nodes == 3
    assert xen.calls == ["numainfo?", "numainfo(2)", "numainfo?", "numainfo(3)", "numainfo?"]

    def add_a_node(xen: SysctlXen) -> None:  # a node appears before every fetch
        n = len(xen.host.memory) + 1
        xen.host = Host([(GIB, GIB)] * n, [[10 if i == j else 20 for j in range(n)]
                                           for i in range(n)], xen.host.cpus)

    with pytest.raises(InputError, match="kept changing over 5 attempts"):
        Sysctl(SysctlXen(on_fetch=add_a_node)).numainfo()


@pytest.mark.parametrize(
    ("host", "lie", "text"),
    [
        (TWO_NODES, {"numainfo_count": 100000}, "num_nodes out of range"),
        (TWO_NODES, {"numainfo_count": 0}, "num_nodes out of range"),
        (Host([(GIB, GIB)], [[0]], [(0, 0, 0)]), {}, r"distance\(0,0\) out of range"),
        (Host([(GIB, 2 * GIB)], [[10]], [(0, 0, 0)]), {}, "memfree above memsize"),
        (Host([None], [[None]], [(0, 0, 0)]), {}, "no node is online"),
    ],
)
def test_numainfo_hostile_answers(host: Host, lie: dict[str, int], text: str) -> None:
    with pytest.raises(InputError, match=text) as caught:
        Sysctl(SysctlXen(host=host, lie=lie)).numainfo()
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("XEN_SYSCTL_numainfo: ")


# --- cputopoinfo -------------------------------------------------------------------------------


def test_cputopoinfo_with_absent_cpus_and_unknown_node() -> None:
    host = Host([(GIB, GIB)], [[10]], [(0, 0, 0), None, (2, 0, None)])
    cpus = Sysctl(SysctlXen(host=host)).cputopoinfo()
    assert [c.present for c in cpus] == [True, False, True]
    assert cpus[2].node is None and cpus[2].core == 2


def test_cputopoinfo_hostile() -> None:
    with pytest.raises(InputError, match="num_cpus out of range"):
        Sysctl(SysctlXen(lie={"cputopo_count": 1 << 30})).cputopoinfo()
    bad = Host([(GIB, GIB)], [[10]], [(0, 0, 4096)])
    with pytest.raises(InputError, match="node id out of range"):
        Sysctl(SysctlXen(host=bad)).cputopoinfo()


# --- pcitopoinfo -------------------------------------------------------------------------------


def test_pcitopoinfo_known_unknown_and_no_node() -> None:
    result = Sysctl(SysctlXen()).pcitopoinfo(
        [addr("0000:3b:00.0"), addr("0000:00:00.0"), addr("0000:00:02.0"), addr("0000:99:00.1")]
    )
    assert [(r.known, r.node) for r in result] == [
        (True, 1), (True, None), (True, 0), (False, None)
    ]
    assert str(result[0].address) == "0000:3b:00.0"


def test_pcitopoinfo_reissues_after_64_entries_with_advanced_handles() -> None:
    devices = [PciAddress(0, bus, 0, 0) for bus in range(200)]
    host = Host([(GIB, GIB)] * 2, [[10, 20], [20, 10]], [(0, 0, 0)],
                pci={(0, bus, 0): bus % 2 for bus in range(200) if bus != 7})
    xen = SysctlXen(host=host)
    result = Sysctl(xen).pcitopoinfo(devices)
    assert xen.calls == ["pcitopoinfo(64)", "pcitopoinfo(64)", "pcitopoinfo(64)", "pcitopoinfo(8)"]
    assert [r.node for r in result] == [None if b == 7 else b % 2 for b in range(200)]
    assert not result[7].known
    assert [r.address for r in result] == devices


def test_pcitopoinfo_without_preemption_is_one_call() -> None:
    xen = SysctlXen(preempt=False)
    Sysctl(xen).pcitopoinfo([PciAddress(0, b, 0, 0) for b in range(100)])
    assert xen.calls == ["pcitopoinfo(100)"]


@pytest.mark.parametrize(("done", "text"), [(0, "processed 0 of 3"), (9, "processed 9 of 3")])
def test_pcitopoinfo_without_progress_or_overrun_is_refused(done: int, text: str) -> None:
    xen = SysctlXen(lie={"pcitopo_done": done})
    with pytest.raises(InputError, match=text):
        Sysctl(xen).pcitopoinfo([addr("0000:00:00.0")] * 3)
    assert len(xen.calls) == 1


def test_pcitopoinfo_hostile_node() -> None:
    host = Host([(GIB, GIB)], [[10]], [(0, 0, 0)], pci={(0, 1, 0): 0x1000})
    with pytest.raises(InputError, match="node id out of range"):
        Sysctl(SysctlXen(host=host)).pcitopoinfo([addr("0000:01:00.0")])


@pytest.mark.parametrize(
    "text", ["0000:3b:00.8", "0000:3B:00.0", "000:3b:00.0", "0000:3b:20.0", "0000:3b:00.0\n",
             "../../0000", "", "0000:3b:00.0 ", "0000\uff1a3b:00.0"]
)
def test_pci_address_parse_is_strict(text: str) -> None:
    with pytest.raises(InputError):
        PciAddress.parse(text)


def test_empty_device_list_issues_nothing() -> None:
    xen = SysctlXen()
    assert Sysctl(xen).pcitopoinfo([]) == []
    assert xen.calls == []


def test_cputopoinfo_cpu_count_grows_restarts_bounded() -> None:
    # As for numainfo: a CPU count that grew after the query is noticed by the re-query.
    grown = Host([(GIB, GIB)], [[10]], [(0, 0, 0), (1, 0, 0), (2, 0, 0)])

    def grow(xen: SysctlXen) -> None:
        if xen.lie.get("cputopo_count") == 2:
            xen.lie.pop("cputopo_count")

    xen = SysctlXen(host=grown, on_fetch=grow, lie={"cputopo_count": 2})
    cpus = Sysctl(xen).cputopoinfo()
    assert [c.core for c in cpus] == [0, 1, 2]
    assert xen.calls == [
        "cputopoinfo?", "cputopoinfo(2)", "cputopoinfo?", "cputopoinfo(3)", "cputopoinfo?"
    ]

    def add_a_cpu(xen: SysctlXen) -> None:  # a CPU appears before every fetch
        xen.host = Host(xen.host.memory, xen.host.distances, [*xen.host.cpus, (0, 0, 0)])

    with pytest.raises(InputError, match="CPU count kept changing over 5 attempts"):
        Sysctl(SysctlXen(on_fetch=add_a_cpu)).cputopoinfo()
