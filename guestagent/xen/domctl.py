"""Per-vCPU run state from Xen's ``XEN_DOMCTL_getvcpuinfo`` (Dom0 only), what ``xl vcpu-list``
shows: for each vCPU of a domain, whether it is online, the pCPU it is on (or last ran on) and
the nanoseconds it has run since it was created.

The struct layouts (``struct ga_xen_domctl``, ``struct ga_xen_domctl_getvcpuinfo``) are declared
in ``csrc/guestagent_xen.h`` and checked against Debian's ``/usr/include/xen/domctl.h`` by
``tests/test_abi_layout.py``.

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
from typing import TYPE_CHECKING, Any

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


@dataclass(frozen=True)
class VcpuInfo:
    vcpu: int
    online: bool
    running: bool
    cpu: int  # the pCPU it runs on or last ran on
    cpu_time_ns: int


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
    """``XEN_DOMCTL_getvcpuinfo`` over one privcmd, the interface version found at run time."""

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

    def _call(self, op: Any, buf: Any, domid: int, vcpu: int) -> int:
        """0, or the positive errno of Xen's answer other than EACCES (version found first)."""
        from guestagent.xen.privcmd import lib

        name = "XEN_DOMCTL_getvcpuinfo"

        def attempt(version: int) -> None:
            buf.zero()
            op.cmd = int(lib.GA_XEN_DOMCTL_getvcpuinfo)
            op.interface_version = version
            op.domain = domid
            op.u.getvcpuinfo.vcpu = vcpu
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
        out: list[VcpuInfo] = []
        with self.privcmd.buffer(256) as buf:
            op = buf.struct("struct ga_xen_domctl")
            for vcpu in range(MAX_VCPUS):
                err = self._call(op, buf, domid, vcpu)
                if err == errno.ESRCH and vcpu == 0:
                    return None  # no such domain (or one without a vCPU 0: gone for us)
                if err in (errno.EINVAL, errno.ESRCH):
                    break  # beyond max_vcpus (or an unallocated slot: the end for xl too)
                if err:
                    raise HypercallError("XEN_DOMCTL_getvcpuinfo", err, f" (domain {domid})")
                g = op.u.getvcpuinfo
                raw = (int(g.online), int(g.blocked), int(g.running), int(g.cpu), int(g.cpu_time))
                out.append(validate_vcpu(raw, vcpu, max_cpus))
        return out
