"""A simulated Xen that also answers ``XEN_DOMCTL_getvcpuinfo`` the way Xen 4.17's
``xen/common/domctl.c`` does (interface version check, -ESRCH for an unknown domain, -EINVAL at
``max_vcpus``), on top of the sysctl simulation of tests/test_sysctl.py; and the fixture host the
hostnuma tests share."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from guestagent.xen.privcmd import ffi, lib
from tests.test_dom0_support import CPUS, DISTANCES, FIXTURE, GIB
from tests.test_sysctl import Host, SysctlXen

DOMCTL = int(lib.GA_HYPERVISOR_domctl)

#: Three nodes with two CPUs each: pCPUs 0-1 node 0, 2-3 node 1, 4-5 node 2.
HOST = Host(
    memory=[(16 * GIB, 12 * GIB), (16 * GIB, 15 * GIB), (16 * GIB, 3 * GIB)],
    distances=[list(row) for row in DISTANCES],
    cpus=list(CPUS),
)
#: Domain 5 (fixture libxl-json): vnode 0 on pnode 0 (vCPUs 0-1), vnode 1 on pnode 1 (2-3).
#: Domain 9: vnode 0 on pnode 0 (vCPUs 0-1), vnode 1 on pnode 2 (2-3).
UUID5 = "4d1f6a8e-2b7c-4c3e-9a51-0f6b2d8e7c15"
UUID9 = "b0c1d2e3-f405-4617-8829-3a4b5c6d7e8f"
__all__ = ["FIXTURE", "HOST", "UUID5", "UUID9", "NumaXen"]


@dataclass
class Vcpu:
    cpu: int
    time_ns: int = 0
    online: int = 1
    running: int = 1


@dataclass
class NumaXen(SysctlXen):
    host: Host = field(default_factory=lambda: HOST)
    domctl_accepts: int = 0x15
    domains: dict[int, list[Vcpu]] = field(default_factory=dict)
    domctl_versions_seen: list[int] = field(default_factory=list)
    #: {(domid, vcpu): (online, blocked, running, cpu, cpu_time)} written back instead (a lie).
    lie_vcpu: dict[tuple[int, int], tuple[int, int, int, int, int]] = field(default_factory=dict)

    def _invoke(self, op: int, args: list[int]) -> int:
        if op != DOMCTL:
            return super()._invoke(op, args)
        d: Any = ffi.cast("struct ga_xen_domctl *", args[0])
        self.domctl_versions_seen.append(int(d.interface_version))
        if d.interface_version != self.domctl_accepts:
            return -errno.EACCES
        assert int(d.cmd) == int(lib.GA_XEN_DOMCTL_getvcpuinfo)
        vcpus = self.domains.get(int(d.domain))
        if vcpus is None:
            return -errno.ESRCH
        n = int(d.u.getvcpuinfo.vcpu)
        if n >= len(vcpus):
            return -errno.EINVAL
        v = vcpus[n]
        g = d.u.getvcpuinfo
        raw = self.lie_vcpu.get((int(d.domain), n), (v.online, 0, v.running, v.cpu, v.time_ns))
        g.online, g.blocked, g.running, g.cpu, g.cpu_time = raw
        return 0

    def run(self, domid: int, vcpu: int, ns: int, cpu: int | None = None) -> None:
        """The vCPU runs ``ns`` more (on ``cpu`` from now on, when given)."""
        v = self.domains[domid][vcpu]
        if cpu is not None:
            v.cpu = cpu
        v.time_ns += ns
