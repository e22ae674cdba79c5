"""Per-vCPU run state and affinity from Xen's domctls (Dom0 only), what ``xl vcpu-list`` shows:
for each vCPU of a domain, whether it is online, the pCPU it is on (or last ran on) and the
nanoseconds it has run since it was created (``XEN_DOMCTL_getvcpuinfo``, :meth:`Domctl.vcpus`),
and the pCPUs it may and prefers to run on (``XEN_DOMCTL_getvcpuaffinity``, 25: hard and soft
affinity, :meth:`Domctl.vcpu_affinity`).

The struct layouts (``struct ga_xen_domctl``, ``struct ga_xen_domctl_getvcpuinfo``,
``struct ga_xen_domctl_vcpuaffinity``, ``struct ga_xenctl_bitmap``) are declared in
``csrc/guestagent_xen.h`` and checked against Debian's ``/usr/include/xen/domctl.h`` and
``xen.h`` by ``tests/test_abi_layout.py``.

``getvcpuaffinity`` (``xen/common/sched/core.c`` ``vcpu_affinity_domctl``): a vCPU at or beyond
``max_vcpus`` is ``-EINVAL``, an unallocated one ``-ESRCH``; with both flags Xen copies the hard
and the soft mask as they were set (not intersected with the cpupool) into the two caller
bitmaps, at most ``nr_bits`` bits each, zero-filling the rest.

Xen's side (``xen/common/domctl.c``, ``case XEN_DOMCTL_getvcpuinfo``): an unknown domain is
``-ESRCH``; a vCPU number at or beyond the domain's ``max_vcpus`` is ``-EINVAL``; a vCPU slot
that was never allocated is ``-ESRCH``; otherwise ``online``, ``blocked``, ``running``,
``cpu_time`` (the vCPU's ``RUNSTATE_running`` time, ns) and ``cpu`` (``v->processor``) are copied
back. So :meth:`Domctl.vcpus` asks vCPU 0, 1, ... until ``-EINVAL`` ends the list.

The interface version
    Every domctl carries ``interface_version``; Xen answers ``-EACCES`` unless it equals its
    ``XEN_DOMCTL_INTERFACE_VERSION``. Known: 0x15 in 4.17 (Debian's libxen-dev header), 0x16
    from 4.18, 0x17 from 4.19, 0x18 from 4.22 (the bump commits in Xen's public patch mails).
    :func:`candidate_versions` tries the running release's first, then the neighbours, nearest
    first, each once (bounded); the one that worked is remembered and logged. The
    ``getvcpuinfo`` layout has not changed across these versions.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from guestagent.errors import InputError
from guestagent.log import get_logger
from guestagent.xen.errors import HypercallError, XenUnavailable
from guestagent.xen.versions import negotiate

if TYPE_CHECKING:
    from guestagent.xen.privcmd import Privcmd

#: ``XEN_DOMCTL_INTERFACE_VERSION`` of the releases where it is known (see the module docstring).
INTERFACE_VERSIONS: dict[tuple[int, int], int] = {
    (4, 17): 0x15,
    (4, 18): 0x16,
    (4, 19): 0x17,
    (4, 20): 0x17,
    (4, 21): 0x17,
    (4, 22): 0x18,
}
#: The versions tried at all (older and newer than the table, nearest first).
VERSION_RANGE = range(0x10, 0x1A)
MAX_VCPUS = 4096  # Xen's HVM_MAX_VCPUS is 128 on 4.17, PV's 8192 in theory; bounded here
MAX_CPU_TIME_NS = 1 << 62  # 146 years: anything beyond is a lie
DOMID_FIRST_RESERVED = 0x7FF0
MAX_PCPUS = 8192  # Xen's NR_CPUS is 4096 on x86 (Kconfig's maximum); bounded here
#: Where the two affinity bitmaps start in the hypercall buffer (after ``struct ga_xen_domctl``).
AFFINITY_MAPS_AT = 256


@dataclass(frozen=True)
class VcpuInfo:
    vcpu: int
    online: bool
    running: bool
    cpu: int  # the pCPU it runs on or last ran on
    cpu_time_ns: int


@dataclass(frozen=True)
class VcpuAffinity:
    """One vCPU's affinity as set in Xen (``xl vcpu-pin``, ``dom0_vcpus_pin``, ``cpus=``): the
    pCPUs it may run on (hard) and those it prefers (soft)."""

    vcpu: int
    hard: frozenset[int]
    soft: frozenset[int]


def bitmap_cpus(raw: bytes, max_cpus: int) -> frozenset[int]:
    """The pCPUs of a ``xenctl_bitmap`` (bit ``i % 8`` of byte ``i // 8`` is pCPU ``i``) below
    ``max_cpus``. Bits at or beyond it are dropped, not refused: Xen fills the map up to its
    ``nr_cpu_ids`` (possible CPUs), so the default affinity ``all`` sets bits of pCPUs that
    cputopoinfo does not count, and the rounding up to whole bytes adds a few more."""
    return frozenset(i * 8 + b for i, byte in enumerate(raw) for b in range(8)
                     if byte >> b & 1 and i * 8 + b < max_cpus)


def candidate_versions(xen: tuple[int, int] | None) -> list[int]:
    """The interface versions to try: the release's own first (4.17's when unknown), then every
    version of :data:`VERSION_RANGE` by distance from it (the newer first on a tie)."""
    first = INTERFACE_VERSIONS.get(xen, 0x15) if xen is not None else 0x15
    if xen is not None and xen not in INTERFACE_VERSIONS and xen > max(INTERFACE_VERSIONS):
        first = max(INTERFACE_VERSIONS.values())
    rest = sorted(VERSION_RANGE, key=lambda v: (abs(v - first), -v))
    return [first, *[v for v in rest if v != first]]


def validate_vcpu(raw: tuple[int, int, int, int, int], vcpu: int, max_cpus: int) -> VcpuInfo:
    """One answer of Xen's, checked: flags 0/1, a pCPU below ``max_cpus``, a bounded time."""
    online, _blocked, running, cpu, cpu_time = raw
    source = f"XEN_DOMCTL_getvcpuinfo vcpu {vcpu}"
    if online not in (0, 1) or running not in (0, 1):
        raise InputError(source, "online/running not 0 or 1", (online, running))
    if not 0 <= cpu < max_cpus:
        raise InputError(f"{source}: cpu", f"expected 0..{max_cpus - 1}", cpu)
    if not 0 <= cpu_time < MAX_CPU_TIME_NS:
        raise InputError(f"{source}: cpu_time", "out of range", cpu_time)
    return VcpuInfo(vcpu, bool(online), bool(running), cpu, cpu_time)


class Domctl:
    """``XEN_DOMCTL_getvcpuinfo`` and ``getvcpuaffinity`` over one privcmd, the interface
    version found at run time."""

    def __init__(self, privcmd: Privcmd, versions: list[int] | None = None) -> None:
        self.privcmd = privcmd
        self._versions = versions
        self.interface_version: int | None = None
        self._log = get_logger("domctl")

    def _candidates(self) -> list[int]:
        if self.interface_version is not None:
            return [self.interface_version]
        if self._versions is None:
            release: tuple[int, int] | None = None
            try:
                release = self.privcmd.xen_version()
            except (HypercallError, XenUnavailable) as e:
                self._log.warning("xen_version_unavailable", error=str(e))
            self._versions = candidate_versions(release)
        return list(self._versions)

    def _call(self, name: str, cmd: int, buf: Any, domid: int,
              fill: Callable[[Any], None]) -> int:
        """0, or the positive errno of Xen's answer other than EACCES (version found first).
        ``fill`` sets the command's own fields after each attempt's zeroing of the buffer."""
        from guestagent.xen.privcmd import lib

        op = buf.struct("struct ga_xen_domctl")

        def attempt(version: int) -> None:
            buf.zero()
            op.cmd = cmd
            op.interface_version = version
            op.domain = domid
            fill(op)
            self.privcmd.hypercall(int(lib.GA_HYPERVISOR_domctl), buf.address, name=name)

        try:
            version, refused = negotiate(self._candidates(), attempt, name, "domctl")
        except HypercallError as e:
            return e.errno or errno.EIO
        if self.interface_version is None:
            self.interface_version = version
            self._log.info("domctl_interface_version", version=f"{version:#x}",
                           refused=[f"{v:#x}" for v in refused])
        return 0

    def vcpus(self, domid: int, max_cpus: int) -> list[VcpuInfo] | None:
        """Every vCPU of ``domid`` (None: the domain does not exist). ``max_cpus`` bounds the
        pCPU numbers Xen may answer (cputopoinfo's count)."""
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            raise InputError("domid", f"expected 0..{DOMID_FIRST_RESERVED - 1}", domid)
        from guestagent.xen.privcmd import lib

        out: list[VcpuInfo] = []
        name, cmd = "XEN_DOMCTL_getvcpuinfo", int(lib.GA_XEN_DOMCTL_getvcpuinfo)
        with self.privcmd.buffer(256) as buf:
            op = buf.struct("struct ga_xen_domctl")
            for vcpu in range(MAX_VCPUS):

                def fill(o: Any, vcpu: int = vcpu) -> None:
                    o.u.getvcpuinfo.vcpu = vcpu

                err = self._call(name, cmd, buf, domid, fill)
                if err == errno.ESRCH and vcpu == 0:
                    return None  # no such domain (or one without a vCPU 0: gone for us)
                if err in (errno.EINVAL, errno.ESRCH):
                    break  # beyond max_vcpus (or an unallocated slot: the end for xl too)
                if err:
                    raise HypercallError(name, err, f" (domain {domid})")
                g = op.u.getvcpuinfo
                raw = (int(g.online), int(g.blocked), int(g.running), int(g.cpu), int(g.cpu_time))
                out.append(validate_vcpu(raw, vcpu, max_cpus))
        return out

    def vcpu_affinity(self, domid: int, vcpu: int, max_cpus: int) -> VcpuAffinity | None:
        """The hard and soft affinity of one vCPU as set (``XEN_DOMCTL_getvcpuaffinity``, both
        flags; None: no such domain or vCPU). ``max_cpus`` is cputopoinfo's count: the bitmaps
        asked for are that many bits, rounded up to whole bytes (:func:`bitmap_cpus`)."""
        from guestagent.xen.privcmd import lib

        if not 0 <= domid < DOMID_FIRST_RESERVED:
            raise InputError("domid", f"expected 0..{DOMID_FIRST_RESERVED - 1}", domid)
        if not 0 < max_cpus <= MAX_PCPUS:
            raise InputError("XEN_SYSCTL_cputopoinfo: num_cpus", f"expected 1..{MAX_PCPUS}",
                             max_cpus)
        name = "XEN_DOMCTL_getvcpuaffinity"
        nbytes = (max_cpus + 7) // 8
        hard_at, soft_at = AFFINITY_MAPS_AT, AFFINITY_MAPS_AT + nbytes
        with self.privcmd.buffer(soft_at + nbytes) as buf:

            def fill(o: Any) -> None:
                a = o.u.vcpuaffinity
                a.vcpu = vcpu
                a.flags = int(lib.GA_XEN_VCPUAFFINITY_HARD) | int(lib.GA_XEN_VCPUAFFINITY_SOFT)
                a.cpumap_hard.bitmap, a.cpumap_hard.nr_bits = buf.address_of(hard_at), nbytes * 8
                a.cpumap_soft.bitmap, a.cpumap_soft.nr_bits = buf.address_of(soft_at), nbytes * 8

            err = self._call(name, int(lib.GA_XEN_DOMCTL_getvcpuaffinity), buf, domid, fill)
            if err in (errno.ESRCH, errno.EINVAL):
                return None  # no such domain, or no such vCPU (beyond max_vcpus, unallocated)
            if err:
                raise HypercallError(name, err, f" (domain {domid} vcpu {vcpu})")
            hard, soft = buf.read(hard_at, nbytes), buf.read(soft_at, nbytes)
        return VcpuAffinity(vcpu, bitmap_cpus(hard, max_cpus), bitmap_cpus(soft, max_cpus))
