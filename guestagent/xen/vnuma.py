"""XENMEM_get_vnumainfo: the virtual NUMA topology Xen gives this domain.

:func:`validate_vnuma` turns the raw arrays the hypercall returned into a checked
:class:`VnumaInfo`; :func:`get_vnumainfo` runs the size-discovery protocol of reference section 2.2
through privcmd: the C doorway lays each hypercall buffer out and copies its arrays back
(``ga_vnuma_alloc``, ``ga_vnuma_collect`` in csrc/xenc.c), Python makes the call and every check.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from guestagent.errors import InputError
from guestagent.xen.errors import HypercallError, NoVnuma, XenTooOld

if TYPE_CHECKING:
    from guestagent.xen.privcmd import Privcmd

SOURCE = "XENMEM_get_vnumainfo"

#: Upper bounds on what a sane hypervisor reports; anything larger is treated as corrupt.
MAX_VNODES = 64
MAX_VCPUS = 4096
MAX_VMEMRANGES = 1024
#: Xen's ACPI SLIT holds distances as uint8.
MAX_DISTANCE = 255


@dataclass(frozen=True)
class MemoryRange:
    """A guest-physical byte range ``[start, end)`` that belongs to vnode ``node``."""

    start: int
    end: int
    node: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class VnumaInfo:
    """The vNUMA topology as the hypervisor reports it (validated)."""

    nr_vnodes: int
    vcpu_to_vnode: list[int]
    distances: list[list[int]]
    memory_ranges: list[MemoryRange]

    def memory_bytes(self, node: int) -> int:
        return sum(r.size for r in self.memory_ranges if r.node == node)

    def vcpus_of(self, node: int) -> list[int]:
        return [cpu for cpu, n in enumerate(self.vcpu_to_vnode) if n == node]

    def vcpus_by_vnode(self) -> list[list[int]]:
        """``vcpus_of(v)`` for every vnode ``v``, in one pass over the vCPUs."""
        out: list[list[int]] = [[] for _ in range(self.nr_vnodes)]
        for cpu, n in enumerate(self.vcpu_to_vnode):
            out[n].append(cpu)
        return out

    def memory_by_vnode(self) -> list[int]:
        """``memory_bytes(v)`` for every vnode ``v``, in one pass over the ranges."""
        out = [0] * self.nr_vnodes
        for r in self.memory_ranges:
            out[r.node] += r.size
        return out

    def ranges_by_vnode(self) -> list[list[MemoryRange]]:
        """Each vnode's ranges in address order, from one sort."""
        out: list[list[MemoryRange]] = [[] for _ in range(self.nr_vnodes)]
        for r in sorted(self.memory_ranges, key=lambda r: r.start):
            out[r.node].append(r)
        return out


def validate_vnuma(
    nr_vnodes: int,
    vcpu_to_vnode: Sequence[int],
    flat_distances: Sequence[int],
    ranges: Sequence[tuple[int, int, int, int]],
) -> VnumaInfo:
    """Check the hypercall's output and build a :class:`VnumaInfo`.

    ``ranges`` holds ``(start, end, flags, nid)`` tuples as in ``struct xen_vmemrange``.
    """
    if not 1 <= nr_vnodes <= MAX_VNODES:
        raise InputError(SOURCE, f"nr_vnodes out of range 1..{MAX_VNODES}", nr_vnodes)
    if not 1 <= len(vcpu_to_vnode) <= MAX_VCPUS:
        raise InputError(SOURCE, f"nr_vcpus out of range 1..{MAX_VCPUS}", len(vcpu_to_vnode))
    if not 1 <= len(ranges) <= MAX_VMEMRANGES:
        raise InputError(SOURCE, f"nr_vmemranges out of range 1..{MAX_VMEMRANGES}", len(ranges))
    if len(flat_distances) != nr_vnodes * nr_vnodes:
        raise InputError(
            SOURCE, f"distance matrix has {len(flat_distances)} entries, expected {nr_vnodes}^2"
        )
    bad = _first_outside(vcpu_to_vnode, 0, nr_vnodes - 1)
    if bad is not None:
        raise InputError(
            SOURCE, f"vcpu {bad[0]} maps to vnode outside 0..{nr_vnodes - 1}", bad[1]
        )
    bad = _first_outside(flat_distances, 1, MAX_DISTANCE)
    if bad is not None:
        i = bad[0]
        raise InputError(
            SOURCE, f"distance({i // nr_vnodes},{i % nr_vnodes}) out of range 1..255", bad[1]
        )
    memory_ranges: list[MemoryRange] = []
    for start, end, _flags, nid in ranges:
        if not 0 <= nid < nr_vnodes:
            raise InputError(
                SOURCE, f"memory range {start:#x} names vnode outside 0..{nr_vnodes - 1}", nid
            )
        if end <= start:
            raise InputError(SOURCE, f"memory range {start:#x}-{end:#x} is empty or reversed")
        memory_ranges.append(MemoryRange(start, end, nid))
    ordered = sorted(ranges)  # by start: the tuples' first item
    for a, b in zip(ordered, ordered[1:]):
        if b[0] < a[1]:
            raise InputError(
                SOURCE, f"memory ranges {a[0]:#x}-{a[1]:#x} and {b[0]:#x}-{b[1]:#x} overlap"
            )
    distances = [
        list(flat_distances[i : i + nr_vnodes])
        for i in range(0, nr_vnodes * nr_vnodes, nr_vnodes)
    ]
    return VnumaInfo(nr_vnodes, list(vcpu_to_vnode), distances, memory_ranges)


def _first_outside(values: Sequence[int], low: int, high: int) -> tuple[int, int] | None:
    """The first ``(index, value)`` outside ``low..high``, or None. min() and max() first (one
    pass each, in C): the Python loop runs only to name the offender."""
    if min(values) >= low and max(values) <= high:
        return None
    return next((i, v) for i, v in enumerate(values) if not low <= v <= high)


#: How often the size-discovery protocol restarts when the topology changes under it.
MAX_ATTEMPTS = 5
#: What a call answers while the sizes are being found: returned by ``Privcmd.hypercall``, not
#: raised.
_RETRIED_ERRNOS = frozenset((errno.ENOBUFS, errno.EAGAIN))


@dataclass(frozen=True)
class _Abi:
    """The C extension's numbers and functions for this hypercall, looked up once (the extension
    is imported on the first call, so that this module loads without it)."""

    memory_op: int
    subop: int
    domid_self: int
    alloc: Any
    collect: Any
    new: Any
    values: Any
    unpack: Any


@cache
def _abi() -> _Abi:
    from guestagent.xen.privcmd import MEMORY_OP, ffi, lib

    return _Abi(MEMORY_OP, int(lib.GA_XENMEM_get_vnumainfo), int(lib.GA_DOMID_SELF),
                lib.ga_vnuma_alloc, lib.ga_vnuma_collect, ffi.new, ffi.typeof("uint64_t[]"),
                ffi.unpack)


def get_vnumainfo(
    privcmd: Privcmd, attempts: int = MAX_ATTEMPTS, domid: int | None = None
) -> VnumaInfo:
    """Run XENMEM_get_vnumainfo on DOMID_SELF, or on ``domid`` (Dom0 asking about a guest:
    ``xsm_get_vnumainfo`` is XSM_TARGET, which the control domain passes; reference 2.2).

    First ask with zero capacities: Xen answers -ENOBUFS with the counts it needs. Then ask
    again with room for them, starting over on -ENOBUFS or -EAGAIN (the topology changed
    meanwhile) at most ``attempts`` times.
    Raises NoVnuma (-EOPNOTSUPP), XenTooOld (-ENOSYS), PrivcmdRestricted, HypercallError, or
    InputError for counts or contents no sane hypervisor reports.
    """
    abi = _abi()
    target = abi.domid_self if domid is None else domid
    for _ in range(attempts):
        rc, counts = _exchange(privcmd, abi, target, 0, 0, 0)
        if rc == 0:
            raise InputError(SOURCE, "answered a zero-capacity query with success, not -ENOBUFS")
        nodes, vcpus, nranges = counts
        _check_counts(nodes, vcpus, nranges)
        rc, values = _exchange(privcmd, abi, target, nodes, vcpus, nranges)
        if rc < 0:
            continue
        got_nodes, got_vcpus, got_ranges = values[0], values[1], values[2]
        if got_nodes > nodes or got_vcpus > vcpus or got_ranges > nranges:
            raise InputError(
                SOURCE,
                "returned more entries than the buffers hold",
                f"{got_nodes}/{got_vcpus}/{got_ranges} > {nodes}/{vcpus}/{nranges}",
            )
        cpus_at = 3 + got_nodes * got_nodes
        ranges_at = cpus_at + got_vcpus
        flat = values[ranges_at:]
        return validate_vnuma(
            got_nodes,
            values[cpus_at:ranges_at],
            values[3:cpus_at],
            list(zip(flat[0::4], flat[1::4], flat[2::4], flat[3::4])),
        )
    raise HypercallError(
        SOURCE, errno.EAGAIN, f": the topology kept changing over {attempts} attempts"
    )


def _exchange(
    privcmd: Privcmd, abi: _Abi, domid: int, nodes: int, vcpus: int, nranges: int
) -> tuple[int, list[int]]:
    """One call with room for ``nodes``, ``vcpus`` and ``nranges`` entries (all 0: the size
    query), through the doorway: ``ga_vnuma_alloc`` lays the hypercall buffer out,
    ``ga_vnuma_collect`` copies out what Xen wrote and frees it. Returns the call's result (0,
    or -ENOBUFS / -EAGAIN) and the values: the three counts Xen wrote back, then (when they fit)
    the distances, the vCPU map and each range's start, end, flags and nid."""
    address = abi.alloc(privcmd.buffer_fd, domid, nodes, vcpus, nranges)
    if address < 0:
        raise HypercallError("hypercall buffer allocation", -address)
    room = 3 + nodes * nodes + vcpus + 4 * nranges
    out = abi.new(abi.values, room)
    try:
        rc = privcmd.hypercall(abi.memory_op, abi.subop, address, name=SOURCE,
                               returned_errnos=_RETRIED_ERRNOS)
    except HypercallError as e:
        raise _typed(e) from None
    finally:
        written = abi.collect(address, privcmd.buffer_fd >= 0, nodes, vcpus, nranges, out, room)
    values: list[int] = abi.unpack(out, written)
    return rc, values


def _typed(error: HypercallError) -> Exception:
    """What a failed call means here: -EOPNOTSUPP is no vNUMA, -ENOSYS a Xen before 4.5."""
    if error.errno == errno.EOPNOTSUPP:
        return NoVnuma("no vNUMA: Xen has no virtual NUMA topology for this domain")
    if error.errno == errno.ENOSYS:
        return XenTooOld(f"{SOURCE} is not implemented by this Xen (before 4.5)")
    return error


def _check_counts(nodes: int, vcpus: int, nranges: int) -> None:
    """The size query's counts within the bounds, else the first one outside them named."""
    if 1 <= nodes <= MAX_VNODES and 1 <= vcpus <= MAX_VCPUS and 1 <= nranges <= MAX_VMEMRANGES:
        return
    for name, value, maximum in (("nr_vnodes", nodes, MAX_VNODES), ("nr_vcpus", vcpus, MAX_VCPUS),
                                 ("nr_vmemranges", nranges, MAX_VMEMRANGES)):
        if not 1 <= value <= maximum:
            raise InputError(SOURCE, f"{name} out of range 1..{maximum}", value)
