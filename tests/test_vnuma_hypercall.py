"""XENMEM_get_vnumainfo through the real C doorway and buffers, against a simulated hypervisor.

``SimulatedXen`` replaces only the ioctl: it reads and writes the hypercall's memory exactly as
Xen 4.17's ``XENMEM_get_vnumainfo`` does (reference section 2.2), so the bytes the agent lays out
are the bytes under test.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.xen.errors import (
    HypercallError,
    NotOnXen,
    NoVnuma,
    PrivcmdRestricted,
    XenTooOld,
    XenUnavailable,
)
from guestagent.xen.privcmd import MEMORY_OP, XEN_VERSION, Privcmd, ffi, open_privcmd
from guestagent.xen.vnuma import MemoryRange, get_vnumainfo, validate_vnuma

MIB = 1 << 20


@dataclass
class Domain:
    vcpu_to_vnode: list[int]
    distances: list[int]
    ranges: list[tuple[int, int, int, int]]  # start, end, flags, nid

    @property
    def nr_vnodes(self) -> int:
        return int(len(self.distances) ** 0.5)


@dataclass
class SimulatedXen(Privcmd):
    domain: Domain | None = None
    errno_for_all: int = 0  # e.g. EPERM for a restricted privcmd, ENOSYS for old Xen
    eagain_times: int = 0  # answer -EAGAIN on this many full calls first
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(-1, -1, "/dev/xen/privcmd", HostFS("/nonexistent"))

    def _invoke(self, op: int, args: list[int]) -> int:
        if self.errno_for_all:
            return -self.errno_for_all
        if op == XEN_VERSION:
            return (4 << 16) | 17
        assert op == MEMORY_OP and args[0] == 26, (op, args)
        info: Any = ffi.cast("struct ga_xen_vnuma_topology_info *", args[1])
        if info.pad != 0:
            return -errno.EINVAL
        if info.domid != 0x7FF0:
            return -errno.ESRCH
        if self.domain is None:
            return -errno.EOPNOTSUPP
        d = self.domain
        n, v, r = d.nr_vnodes, len(d.vcpu_to_vnode), len(d.ranges)
        if info.nr_vnodes < n or info.nr_vcpus < v or info.nr_vmemranges < r:
            info.nr_vnodes, info.nr_vcpus, info.nr_vmemranges = n, v, r
            self.calls.append("ENOBUFS")
            return -errno.ENOBUFS
        if self.eagain_times:
            self.eagain_times -= 1
            self.calls.append("EAGAIN")
            return -errno.EAGAIN
        dist = ffi.cast("uint32_t *", info.vdistance)
        for i, value in enumerate(d.distances):
            dist[i] = value
        cpus = ffi.cast("uint32_t *", info.vcpu_to_vnode)
        for i, node in enumerate(d.vcpu_to_vnode):
            cpus[i] = node
        out = ffi.cast("struct ga_xen_vmemrange *", info.vmemrange)
        for i, (start, end, flags, nid) in enumerate(d.ranges):
            out[i].start, out[i].end, out[i].flags, out[i].nid = start, end, flags, nid
        info.nr_vnodes, info.nr_vcpus, info.nr_vmemranges = n, v, r
        self.calls.append("OK")
        return 0


THREE_VNODES = Domain(
    vcpu_to_vnode=[0, 0, 1, 2],
    distances=[10, 21, 31, 21, 10, 17, 31, 17, 10],
    ranges=[(0, 512 * MIB, 0, 0), (512 * MIB, 768 * MIB, 0, 1), (768 * MIB, 1024 * MIB, 0, 2)],
)


def test_three_vnodes_as_configured() -> None:
    xen = SimulatedXen(domain=THREE_VNODES)
    info = get_vnumainfo(xen)
    assert info.nr_vnodes == 3
    assert info.vcpu_to_vnode == [0, 0, 1, 2]
    assert info.distances == [[10, 21, 31], [21, 10, 17], [31, 17, 10]]
    assert info.memory_ranges[1] == MemoryRange(512 * MIB, 768 * MIB, 1)
    assert [info.memory_bytes(n) for n in range(3)] == [512 * MIB, 256 * MIB, 256 * MIB]
    assert info.vcpus_of(0) == [0, 1]
    assert xen.calls == ["ENOBUFS", "OK"]


def test_vnode_split_by_mmio_hole_has_more_ranges_than_nodes() -> None:
    xen = SimulatedXen(
        domain=Domain(
            [0, 1],
            [10, 20, 20, 10],
            [(0, 3 << 30, 0, 0), (4 << 30, 5 << 30, 0, 0), (5 << 30, 6 << 30, 0, 1)],
        )
    )
    info = get_vnumainfo(xen)
    assert info.memory_bytes(0) == 4 << 30
    assert len(info.memory_ranges) == 3


def test_topology_change_is_retried_a_bounded_number_of_times() -> None:
    xen = SimulatedXen(domain=THREE_VNODES, eagain_times=2)
    assert get_vnumainfo(xen).nr_vnodes == 3
    assert xen.calls == ["ENOBUFS", "EAGAIN", "ENOBUFS", "EAGAIN", "ENOBUFS", "OK"]

    stuck = SimulatedXen(domain=THREE_VNODES, eagain_times=1000)
    with pytest.raises(HypercallError, match="kept changing over 5 attempts"):
        get_vnumainfo(stuck)
    assert len(stuck.calls) == 10


@pytest.mark.parametrize(
    ("err", "exc", "text"),
    [
        (errno.ENOSYS, XenTooOld, "not implemented"),
        (errno.EPERM, PrivcmdRestricted, "unrestricted=1"),
        (errno.EFAULT, HypercallError, "XENMEM_get_vnumainfo failed: EFAULT"),
    ],
)
def test_hypervisor_refusals_are_typed(err: int, exc: type, text: str) -> None:
    with pytest.raises(exc, match=text):
        get_vnumainfo(SimulatedXen(errno_for_all=err))


def test_no_vnuma() -> None:
    with pytest.raises(NoVnuma, match="no vNUMA"):
        get_vnumainfo(SimulatedXen(domain=None))


@pytest.mark.parametrize(
    ("domain", "text"),
    [
        (Domain([0] * 5000, [10], [(0, MIB, 0, 0)]), "nr_vcpus out of range"),
        (Domain([0] * 5000, [10] * 65 * 65, [(0, MIB, 0, 0)]), "nr_vnodes out of range.*'65'"),
        (Domain([0], [10], [(i, i + 1, 0, 0) for i in range(1025)]),
         "nr_vmemranges out of range 1..1024.*'1025'"),
        (Domain([0, 7], [10, 20, 20, 10], [(0, MIB, 0, 0)]), "vcpu 1 maps to vnode outside"),
        (Domain([0, 1], [10, 0, 20, 10], [(0, MIB, 0, 0)]), r"distance\(0,1\) out of range"),
        (Domain([0, 1], [10, 20, 20, 10], [(0, MIB, 0, 5)]), "names vnode outside"),
        (Domain([0, 1], [10, 20, 20, 10], [(MIB, MIB, 0, 0)]), "empty or reversed"),
        (
            Domain([0, 1], [10, 20, 20, 10], [(0, 2 * MIB, 0, 0), (MIB, 3 * MIB, 0, 1)]),
            "overlap",
        ),
    ],
)
def test_hostile_answers_are_rejected_with_one_line(domain: Domain, text: str) -> None:
    with pytest.raises(InputError, match=text) as caught:
        get_vnumainfo(SimulatedXen(domain=domain))
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("XENMEM_get_vnumainfo: ")


def test_open_privcmd_without_xen(tmp_path: Path) -> None:
    with pytest.raises(NotOnXen, match="not running on Xen"):
        open_privcmd(HostFS(str(tmp_path)))


def test_open_privcmd_refuses_a_plain_file(tmp_path: Path) -> None:
    (tmp_path / "dev/xen").mkdir(parents=True)
    (tmp_path / "dev/xen/privcmd").write_text("")
    with pytest.raises(XenUnavailable, match="is not a character device"):
        open_privcmd(HostFS(str(tmp_path)))


def test_buffer_bounds_are_checked() -> None:
    xen = SimulatedXen()
    with xen.buffer(100) as buf:
        assert buf.size == 4096
        assert buf.address % 4096 == 0
        with pytest.raises(ValueError, match="does not fit"):
            buf.struct("struct ga_tmem_op", offset=4090)
    with pytest.raises(ValueError, match="after free"):
        _ = buf.address


def test_zero_clears_every_page_and_use_after_free_is_refused() -> None:
    xen = SimulatedXen()
    buf = xen.buffer(3 * 4096)
    assert buf.npages == 3
    assert buf.read(0, buf.size) == bytes(buf.size)  # new pages come zero-filled
    ffi.memmove(buf.array("uint8_t", buf.size), b"\xab" * buf.size, buf.size)
    buf.zero()
    assert buf.read(0, buf.size) == bytes(buf.size)
    buf.free()
    buf.free()  # a second free is a no-op
    for use in (lambda: buf.struct("uint32_t"), lambda: buf.array("uint32_t", 1), buf.zero):
        with pytest.raises(ValueError, match="after free"):
            use()


def test_returned_errnos_come_back_negated_and_others_still_raise() -> None:
    xen = SimulatedXen(errno_for_all=errno.ENOBUFS)
    wanted = frozenset((errno.ENOBUFS, errno.EAGAIN))
    assert xen.hypercall(MEMORY_OP, 26, 0, name="q", returned_errnos=wanted) == -errno.ENOBUFS
    with pytest.raises(HypercallError, match="q failed: ENOBUFS"):
        xen.hypercall(MEMORY_OP, 26, 0, name="q")
    xen.errno_for_all = errno.EPERM
    with pytest.raises(PrivcmdRestricted):
        xen.hypercall(MEMORY_OP, 26, 0, name="q", returned_errnos=wanted)


@pytest.mark.parametrize(
    ("domain", "text"),
    [
        (Domain([0, 1, 9, 7], [10, 20, 20, 10], [(0, MIB, 0, 0)]), "vcpu 2 maps .*got '9'"),
        (Domain([0, 1], [10, 300, 0, 10], [(0, MIB, 0, 0)]), r"distance\(0,1\) .*got '300'"),
    ],
)
def test_the_first_offender_is_named(domain: Domain, text: str) -> None:
    with pytest.raises(InputError, match=text):
        get_vnumainfo(SimulatedXen(domain=domain))


def test_open_privcmd_on_a_character_device_and_a_tree_that_changes(tmp_path: Path) -> None:
    """The device paths are worked out once per HostFS; what is there is looked at every open."""
    hostfs = HostFS(str(tmp_path))
    with pytest.raises(NotOnXen):
        open_privcmd(hostfs)
    (tmp_path / "dev/xen").mkdir(parents=True)
    (tmp_path / "dev/xen/privcmd").symlink_to("/dev/null")
    with open_privcmd(hostfs) as privcmd:
        assert privcmd.fd >= 0 and privcmd.buffer_fd == -1
    assert privcmd.fd == privcmd.buffer_fd == -1
    (tmp_path / "dev/xen/privcmd").unlink()
    (tmp_path / "dev/xen/privcmd").write_text("")
    with pytest.raises(XenUnavailable, match="is not a character device"):
        open_privcmd(hostfs)


def test_a_topology_that_shrinks_after_the_query_comes_back_packed() -> None:
    """Xen writes fewer entries than there is room for when the topology shrank between the two
    calls; the doorway copies out as many as the counts it wrote back say."""

    class Shrinking(SimulatedXen):
        def _invoke(self, op: int, args: list[int]) -> int:
            rc = super()._invoke(op, args)
            if rc == -errno.ENOBUFS:
                self.domain = Domain(
                    [0, 1], [10, 20, 20, 10], [(0, MIB, 0, 0), (MIB, 2 * MIB, 0, 1)]
                )
            return rc

    info = get_vnumainfo(Shrinking(domain=THREE_VNODES))
    assert info.nr_vnodes == 2 and info.vcpu_to_vnode == [0, 1]
    assert info.distances == [[10, 20], [20, 10]]
    assert info.memory_ranges == [MemoryRange(0, MIB, 0), MemoryRange(MIB, 2 * MIB, 1)]


def test_more_entries_than_the_room_given_is_refused() -> None:
    class Overflowing(SimulatedXen):
        def _invoke(self, op: int, args: list[int]) -> int:
            rc = super()._invoke(op, args)
            if rc == 0:
                info: Any = ffi.cast("struct ga_xen_vnuma_topology_info *", args[1])
                info.nr_vcpus = 9
            return rc

    with pytest.raises(InputError, match=r"more entries than the buffers hold.*3/9/3 > 3/4/3"):
        get_vnumainfo(Overflowing(domain=THREE_VNODES))


def test_a_buffer_that_cannot_be_had_is_named() -> None:
    xen = SimulatedXen(domain=THREE_VNODES)
    xen.buffer_fd = os.open("/dev/null", os.O_RDWR)  # mmap on /dev/null: ENODEV
    try:
        with pytest.raises(HypercallError, match="hypercall buffer allocation failed: ENODEV"):
            get_vnumainfo(xen)
    finally:
        os.close(xen.buffer_fd)
    assert xen.calls == []


def test_the_vnuma_buffer_layout_and_what_collect_copies() -> None:
    """ga_vnuma_alloc lays the arrays out after the info (distances, vCPU map, 8-aligned ranges);
    ga_vnuma_collect copies only what fits both the capacities and ``out``."""
    from guestagent.xen.privcmd import lib

    def filled(nodes: int, vcpus: int, nranges: int) -> tuple[int, Any]:
        address = lib.ga_vnuma_alloc(-1, 0x7FF0, nodes, vcpus, nranges)
        assert address > 0 and address % 4096 == 0
        info: Any = ffi.cast("struct ga_xen_vnuma_topology_info *", address)
        return address, info

    address, info = filled(0, 0, 0)
    assert (info.domid, info.nr_vnodes, info.vdistance, info.vmemrange) == (0x7FF0, 0, 0, 0)
    info.nr_vnodes, info.nr_vcpus, info.nr_vmemranges = 2, 3, 1
    out = ffi.new("uint64_t[]", 3)
    assert lib.ga_vnuma_collect(address, 0, 0, 0, 0, out, 3) == 3
    assert list(out) == [2, 3, 1]

    address, info = filled(2, 3, 1)
    size = ffi.sizeof("struct ga_xen_vnuma_topology_info")
    assert (info.nr_vnodes, info.nr_vcpus, info.nr_vmemranges) == (2, 3, 1)
    assert info.vdistance == address + size
    assert info.vcpu_to_vnode == address + size + 4 * 4
    assert info.vmemrange == (address + size + 4 * 4 + 3 * 4 + 7) & ~7
    for i, d in enumerate((10, 20, 20, 10)):
        ffi.cast("uint32_t *", info.vdistance)[i] = d
    for i, node in enumerate((0, 1, 1)):
        ffi.cast("uint32_t *", info.vcpu_to_vnode)[i] = node
    rng: Any = ffi.cast("struct ga_xen_vmemrange *", info.vmemrange)
    rng.start, rng.end, rng.flags, rng.nid = 4096, 8192, 0, 1
    out = ffi.new("uint64_t[]", 3 + 4 + 3 + 4)
    assert lib.ga_vnuma_collect(address, 0, 2, 3, 1, out, 3 + 4 + 3 + 3) == 3  # no room: counts
    assert list(out)[:3] == [2, 3, 1] and not any(list(out)[3:])

    address, info = filled(2, 3, 1)
    info.nr_vnodes, info.nr_vcpus, info.nr_vmemranges = 1, 2, 1
    ffi.cast("uint32_t *", info.vdistance)[0] = 10
    rng = ffi.cast("struct ga_xen_vmemrange *", info.vmemrange)
    rng.start, rng.end, rng.flags, rng.nid = 4096, 8192, 0, 0
    assert lib.ga_vnuma_collect(address, 0, 2, 3, 1, out, len(out)) == 3 + 1 + 2 + 4
    assert list(out)[:10] == [1, 2, 1, 10, 0, 0, 4096, 8192, 0, 0]

    address, info = filled(1, 1, 1)
    info.nr_vcpus = 2  # beyond the capacity: nothing but the counts
    assert lib.ga_vnuma_collect(address, 0, 1, 1, 1, out, len(out)) == 3
    assert lib.ga_vnuma_collect(lib.ga_vnuma_alloc(-1, 0, 0, 0, 0), 0, 0, 0, 0, out, 2) == (
        -errno.EINVAL)


@pytest.mark.parametrize(
    ("ranges", "text"),
    [
        ([(2 * MIB, 3 * MIB, 0, 1), (0, 5 * MIB // 2, 0, 0)],
         "memory ranges 0x0-0x280000 and 0x200000-0x300000 overlap"),
        ([(MIB, 3 * MIB, 0, 1), (MIB, 2 * MIB, 0, 0)],
         "memory ranges 0x100000-0x200000 and 0x100000-0x300000 overlap"),
    ],
)
def test_overlaps_are_found_in_address_order(
    ranges: list[tuple[int, int, int, int]], text: str
) -> None:
    with pytest.raises(InputError, match=text):
        validate_vnuma(2, [0, 1], [10, 20, 20, 10], ranges)
    apart = validate_vnuma(2, [0, 1], [10, 20, 20, 10], [(MIB, 2 * MIB, 0, 1), (0, MIB, 0, 0)])
    assert apart.memory_ranges == [MemoryRange(MIB, 2 * MIB, 1), MemoryRange(0, MIB, 0)]


def test_the_largest_topology_accepted_round_trips_through_a_many_page_buffer() -> None:
    """64 vnodes, 4096 vCPUs, 1024 ranges: a 15-page buffer, every value back in place."""
    nodes = 64
    distances = [10 if i == j else 11 + (i + j) % 200 for i in range(nodes) for j in range(nodes)]
    vcpus = [cpu % nodes for cpu in range(4096)]
    ranges = [(i * MIB, (i + 1) * MIB, 0, i % nodes) for i in range(1024)]
    xen = SimulatedXen(domain=Domain(vcpus, distances, ranges))
    info = get_vnumainfo(xen)
    assert info.nr_vnodes == nodes and info.vcpu_to_vnode == vcpus
    assert [d for row in info.distances for d in row] == distances
    assert [(r.start, r.end, 0, r.node) for r in info.memory_ranges] == ranges
    assert xen.calls == ["ENOBUFS", "OK"]
