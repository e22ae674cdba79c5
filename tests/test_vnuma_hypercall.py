"""XENMEM_get_vnumainfo through the real C doorway and buffers, against a simulated hypervisor.

``SimulatedXen`` replaces only the ioctl: it reads and writes the hypercall's memory exactly as
Xen 4.17's ``XENMEM_get_vnumainfo`` does (reference section 2.2), so the bytes the agent lays out
are the bytes under test. The protocol runs in C (``ga_vnuma_get``), which issues each hypercall
through ``Privcmd.hypercall_fn``: here a cffi callback to the same ``_invoke``.
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
    #: The info's address of every XENMEM_get_vnumainfo, in order.
    buffers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(-1, -1, "/dev/xen/privcmd", HostFS("/nonexistent"))
        # ga_vnuma_get issues its hypercalls from C: through this callback, to _invoke.
        self.hypercall_fn = ffi.callback("ga_hypercall_fn", self._from_c, error=-errno.EFAULT)

    def _from_c(self, fd: int, call: Any) -> int:
        if call.op == MEMORY_OP:
            self.buffers.append(int(call.arg[1]))
        return self._invoke(int(call.op), [int(a) for a in call.arg])

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


@dataclass
class Recording(SimulatedXen):
    """Keeps what each call's info held when it arrived: domid, capacities, the handles' offsets
    from the info (None for a null handle)."""

    seen: list[tuple[int | None, ...]] = field(default_factory=list)

    def _invoke(self, op: int, args: list[int]) -> int:
        if op == MEMORY_OP:
            info: Any = ffi.cast("struct ga_xen_vnuma_topology_info *", args[1])
            handles = [h - args[1] if h else None
                       for h in (info.vdistance, info.vcpu_to_vnode, info.vmemrange)]
            self.seen.append(
                (info.domid, info.nr_vnodes, info.nr_vcpus, info.nr_vmemranges, *handles))
        return super()._invoke(op, args)


def test_the_vnuma_buffer_layout() -> None:
    """The query: zero capacities, null handles. The call: the distances right after the info,
    the vCPU map after them, the ranges 8-aligned after it; each buffer page-aligned."""
    xen = Recording(domain=THREE_VNODES)
    get_vnumainfo(xen)
    size = ffi.sizeof("struct ga_xen_vnuma_topology_info")
    assert xen.seen == [
        (0x7FF0, 0, 0, 0, None, None, None),
        (0x7FF0, 3, 4, 3, size, size + 9 * 4, (size + 9 * 4 + 4 * 4 + 7) & ~7),
    ]
    assert all(address % 4096 == 0 for address in xen.buffers)
    with pytest.raises(HypercallError, match="ESRCH"):  # only DOMID_SELF is simulated
        get_vnumainfo(xen, domid=7)
    assert xen.seen[2][0] == 7


def test_ga_vnuma_get_refuses_what_does_not_fit_out() -> None:
    """Fewer than the header's values: -EINVAL before any call; counts that fit their maxima but
    not ``out``: GA_VNUMA_BAD_COUNTS after the query, the counts in out[0..2]."""
    from guestagent.xen.privcmd import lib

    xen = SimulatedXen(domain=THREE_VNODES)
    out = ffi.new("uint64_t[]", 6 + 9 + 4 + 12)
    args = (xen.hypercall_fn, -1, -1, 0x7FF0, 5, 64, 4096, 1024)
    assert lib.ga_vnuma_get(*args, out, 5) == -errno.EINVAL and xen.calls == []
    assert lib.ga_vnuma_get(*args, out, len(out) - 1) == lib.GA_VNUMA_BAD_COUNTS
    assert list(out)[:3] == [3, 4, 3] and xen.calls == ["ENOBUFS"]
    assert lib.ga_vnuma_get(*args, out, len(out)) == lib.GA_VNUMA_OK
    assert list(out) == [3, 4, 3, 3, 4, 3, *THREE_VNODES.distances, *THREE_VNODES.vcpu_to_vnode,
                         *(v for r in THREE_VNODES.ranges for v in r)]


@dataclass
class Growing(SimulatedXen):
    """The topology grows right after each of the first ``grow_times`` size queries."""

    grow_times: int = 0

    def _invoke(self, op: int, args: list[int]) -> int:
        rc = super()._invoke(op, args)
        if rc == -errno.ENOBUFS and self.calls.count("ENOBUFS") % 2 == 1 and self.grow_times:
            self.grow_times -= 1
            d = self.domain
            assert d is not None
            self.domain = Domain([*d.vcpu_to_vnode, 0], d.distances,
                                 [*d.ranges, (d.ranges[-1][1], d.ranges[-1][1] + MIB, 0, 0)])
        return rc


def test_counts_that_grow_between_the_calls_start_it_over() -> None:
    """Xen answers the full call -ENOBUFS with the new counts; ga_vnuma_get asks for the sizes
    again and gets the grown topology, within its attempts."""
    xen = Growing(domain=THREE_VNODES, grow_times=2)
    info = get_vnumainfo(xen)
    assert len(info.vcpu_to_vnode) == 6 and len(info.memory_ranges) == 5
    assert xen.calls == ["ENOBUFS", "ENOBUFS", "ENOBUFS", "ENOBUFS", "ENOBUFS", "OK"]

    always = Growing(domain=THREE_VNODES, grow_times=3)
    with pytest.raises(HypercallError, match="kept changing over 3 attempts"):
        get_vnumainfo(always, attempts=3)
    assert always.calls == ["ENOBUFS"] * 6


@dataclass
class Lying(SimulatedXen):
    """Answers the size query -ENOBUFS with ``counts``, whatever the domain."""

    counts: tuple[int, int, int] = (0, 0, 0)

    def _invoke(self, op: int, args: list[int]) -> int:
        info: Any = ffi.cast("struct ga_xen_vnuma_topology_info *", args[1])
        if op == MEMORY_OP and info.nr_vnodes == info.nr_vcpus == info.nr_vmemranges == 0:
            info.nr_vnodes, info.nr_vcpus, info.nr_vmemranges = self.counts
            self.calls.append("ENOBUFS")
            return -errno.ENOBUFS
        return super()._invoke(op, args)


@pytest.mark.parametrize(
    ("counts", "text"),
    [
        ((0xFFFFFFFF, 4, 3), "nr_vnodes out of range 1..64 (got '4294967295')"),
        ((3, 0xFFFFFFFF, 3), "nr_vcpus out of range 1..4096 (got '4294967295')"),
        ((3, 4, 1025), "nr_vmemranges out of range 1..1024 (got '1025')"),
        ((0, 4, 3), "nr_vnodes out of range 1..64 (got '0')"),
        ((3, 4, 0), "nr_vmemranges out of range 1..1024 (got '0')"),
    ],
)
def test_a_hostile_count_stops_at_the_query_with_one_line(
    counts: tuple[int, int, int], text: str
) -> None:
    """No buffer is sized from a count outside its bounds: no second call, one line naming the
    hypercall and the value."""
    xen = Lying(domain=THREE_VNODES, counts=counts)
    with pytest.raises(InputError) as caught:
        get_vnumainfo(xen)
    assert str(caught.value) == f"XENMEM_get_vnumainfo: {text}"
    assert xen.calls == ["ENOBUFS"]


def test_a_query_answered_with_success_is_refused() -> None:
    class Succeeding(SimulatedXen):
        def _invoke(self, op: int, args: list[int]) -> int:
            return 0 if op == MEMORY_OP else super()._invoke(op, args)

    with pytest.raises(InputError, match=r"zero-capacity query with success, not -ENOBUFS$"):
        get_vnumainfo(Succeeding(domain=THREE_VNODES))


def _locked_kib() -> int:
    """This process's locked memory (VmLck): where the buffers come from without
    /dev/xen/hypercall."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    pytest.skip("no VmLck in /proc/self/status")


class FailingSecond(SimulatedXen):
    """The full call fails with EFAULT."""

    def _invoke(self, op: int, args: list[int]) -> int:
        rc = super()._invoke(op, args)
        return -errno.EFAULT if rc == 0 else rc


def _overflowing() -> SimulatedXen:
    class Overflowing(SimulatedXen):
        def _invoke(self, op: int, args: list[int]) -> int:
            rc = super()._invoke(op, args)
            if rc == 0:
                ffi.cast("struct ga_xen_vnuma_topology_info *", args[1]).nr_vnodes = 60
            return rc

    return Overflowing(domain=THREE_VNODES)


@pytest.mark.parametrize(
    ("make", "exc"),
    [
        (lambda: SimulatedXen(domain=THREE_VNODES), None),
        (lambda: SimulatedXen(errno_for_all=errno.EFAULT), HypercallError),
        (lambda: FailingSecond(domain=THREE_VNODES), HypercallError),
        (lambda: SimulatedXen(domain=THREE_VNODES, eagain_times=1000), HypercallError),
        (lambda: SimulatedXen(domain=None), NoVnuma),
        (_overflowing, InputError),
        (lambda: Lying(domain=THREE_VNODES, counts=(65, 4, 3)), InputError),
        (lambda: SimulatedXen(domain=Domain([0, 7], [10, 20, 20, 10], [(0, MIB, 0, 0)])),
         InputError),
    ],
    ids=["ok", "query-fails", "call-fails", "kept-changing", "no-vnuma", "overflow",
         "hostile-count", "hostile-value"],
)
def test_every_buffer_is_freed_on_every_path(make: Any, exc: type[Exception] | None) -> None:
    """Locked anonymous pages (no /dev/xen/hypercall): the process holds as many locked KiB
    after 40 calls down each path as before them, though each call took 1 to 10 buffers."""
    before = _locked_kib()
    for _ in range(40):
        xen = make()
        if exc is None:
            get_vnumainfo(xen)
        else:
            with pytest.raises(exc):
                get_vnumainfo(xen)
        assert xen.buffers
    assert _locked_kib() == before


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
