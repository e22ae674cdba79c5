"""XENMEM_get_vnumainfo: the virtual NUMA topology Xen gives this domain.

:func:`validate_vnuma` turns the raw arrays the hypercall returned into a checked
:class:`VnumaInfo`; :func:`get_vnumainfo` runs the size-discovery protocol of reference section 2.2
through privcmd in one call of the C doorway (``ga_vnuma_get`` in csrc/xenc.c: both hypercalls,
their buffers laid out, copied out and freed), and makes every check of what it got in Python.
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


@dataclass(frozen=True)
class _Abi:
    """The C extension's numbers and functions for this hypercall, looked up once (the extension
    is imported on the first call, so that this module loads without it)."""

    domid_self: int
    #: Where the arrays start in ``out``: after the counts and the capacities.
    header: int
    #: Values ``out`` holds: the header and the largest topology accepted.
    room: int
    get: Any
    #: ``ffi.new`` without zeroing: C writes what Python reads (about 96 KiB, per call).
    new: Any
    values: Any
    unpack: Any


@cache
def _abi() -> _Abi:
    from guestagent.xen.privcmd import ffi, lib

    header = int(lib.GA_VNUMA_HEADER)
    room = header + MAX_VNODES * MAX_VNODES + MAX_VCPUS + 4 * MAX_VMEMRANGES
    return _Abi(int(lib.GA_DOMID_SELF), header, room, lib.ga_vnuma_get,
                ffi.new_allocator(should_clear_after_alloc=False), ffi.typeof("uint64_t[]"),
                ffi.unpack)


def get_vnumainfo(
    privcmd: Privcmd, attempts: int = MAX_ATTEMPTS, domid: int | None = None
) -> VnumaInfo:
    """Run XENMEM_get_vnumainfo on DOMID_SELF, or on ``domid`` (Dom0 asking about a guest:
    ``xsm_get_vnumainfo`` is XSM_TARGET, which the control domain passes; reference 2.2).

    The C doorway's ``ga_vnuma_get`` runs the protocol in one call: first ask with zero
    capacities (Xen answers -ENOBUFS with the counts it needs), then again with room for them,
    starting over on -ENOBUFS or -EAGAIN (the topology changed meanwhile) at most ``attempts``
    times; each call's buffer is laid out, copied out and freed in C. Every check is made here.
    Raises NoVnuma (-EOPNOTSUPP), XenTooOld (-ENOSYS), PrivcmdRestricted, HypercallError, or
    InputError for counts or contents no sane hypervisor reports.
    """
    abi = _abi()
    out = abi.new(abi.values, abi.room)
    status = abi.get(privcmd.hypercall_fn, privcmd.fd, privcmd.buffer_fd,
                     abi.domid_self if domid is None else domid, attempts,
                     MAX_VNODES, MAX_VCPUS, MAX_VMEMRANGES, out, abi.room)
    if status != 0:
        raise _failure(privcmd, status, out, attempts)
    nodes, vcpus, nranges = out[0], out[1], out[2]
    cpus_at = abi.header + nodes * nodes
    ranges_at = cpus_at + vcpus
    values: list[int] = abi.unpack(out, ranges_at + 4 * nranges)
    flat = values[ranges_at:]
    return validate_vnuma(
        nodes,
        values[cpus_at:ranges_at],
        values[abi.header:cpus_at],
        list(zip(flat[0::4], flat[1::4], flat[2::4], flat[3::4])),
    )


def _failure(privcmd: Privcmd, status: int, out: Any, attempts: int) -> Exception:
    """What an answer of ``ga_vnuma_get`` other than GA_VNUMA_OK means; ``out[0..2]`` holds the
    counts Xen wrote back last, ``out[3..5]`` the capacities that call gave."""
    from guestagent.xen.privcmd import lib

    if status < 0:
        err = -status
        if err >= lib.GA_VNUMA_BUFFER_ERRNO:
            return HypercallError("hypercall buffer allocation", err - lib.GA_VNUMA_BUFFER_ERRNO)
        return _typed(privcmd.failure(SOURCE, err))
    if status == lib.GA_VNUMA_QUERY_SUCCEEDED:
        return InputError(SOURCE, "answered a zero-capacity query with success, not -ENOBUFS")
    if status == lib.GA_VNUMA_BAD_COUNTS:
        return _count_error(out[0], out[1], out[2])
    if status == lib.GA_VNUMA_OVERFLOW:
        return InputError(
            SOURCE,
            "returned more entries than the buffers hold",
            f"{out[0]}/{out[1]}/{out[2]} > {out[3]}/{out[4]}/{out[5]}",
        )
    return HypercallError(
        SOURCE, errno.EAGAIN, f": the topology kept changing over {attempts} attempts"
    )


def _typed(error: Exception) -> Exception:
    """What a failed call means here: -EOPNOTSUPP is no vNUMA, -ENOSYS a Xen before 4.5."""
    if not isinstance(error, HypercallError):
        return error
    if error.errno == errno.EOPNOTSUPP:
        return NoVnuma("no vNUMA: Xen has no virtual NUMA topology for this domain")
    if error.errno == errno.ENOSYS:
        return XenTooOld(f"{SOURCE} is not implemented by this Xen (before 4.5)")
    return error


def _count_error(nodes: int, vcpus: int, nranges: int) -> InputError:
    """The size query's first count outside its bounds, named."""
    for name, value, maximum in (("nr_vnodes", nodes, MAX_VNODES), ("nr_vcpus", vcpus, MAX_VCPUS),
                                 ("nr_vmemranges", nranges, MAX_VMEMRANGES)):
        if not 1 <= value <= maximum:
            return InputError(SOURCE, f"{name} out of range 1..{maximum}", value)
    return InputError(SOURCE, "counts that do not fit the room given",
                      f"{nodes}/{vcpus}/{nranges}")
