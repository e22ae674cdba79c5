"""XENMEM_get_vnumainfo: the virtual NUMA topology Xen gives this domain.

:func:`validate_vnuma` turns the raw arrays the hypercall returned into a checked
:class:`VnumaInfo`; :func:`get_vnumainfo` runs the size-discovery protocol of reference section 2.2
through privcmd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

from guestagent.errors import InputError

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
    vcpu_to_vnode: List[int]
    distances: List[List[int]]
    memory_ranges: List[MemoryRange]

    def memory_bytes(self, node: int) -> int:
        return sum(r.size for r in self.memory_ranges if r.node == node)

    def vcpus_of(self, node: int) -> List[int]:
        return [cpu for cpu, n in enumerate(self.vcpu_to_vnode) if n == node]


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
    for cpu, node in enumerate(vcpu_to_vnode):
        if not 0 <= node < nr_vnodes:
            raise InputError(SOURCE, f"vcpu {cpu} maps to vnode outside 0..{nr_vnodes - 1}", node)
    for i, d in enumerate(flat_distances):
        if not 1 <= d <= MAX_DISTANCE:
            raise InputError(
                SOURCE, f"distance({i // nr_vnodes},{i % nr_vnodes}) out of range 1..255", d
            )
    memory_ranges: List[MemoryRange] = []
    for start, end, _flags, nid in ranges:
        if not 0 <= nid < nr_vnodes:
            raise InputError(SOURCE, f"memory range {start:#x} names vnode outside 0..{nr_vnodes - 1}", nid)
        if end <= start:
            raise InputError(SOURCE, f"memory range {start:#x}-{end:#x} is empty or reversed")
        memory_ranges.append(MemoryRange(start, end, nid))
    ordered = sorted(memory_ranges, key=lambda r: r.start)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.end:
            raise InputError(SOURCE, f"memory ranges {a.start:#x}-{a.end:#x} and {b.start:#x}-{b.end:#x} overlap")
    distances = [list(flat_distances[i * nr_vnodes : (i + 1) * nr_vnodes]) for i in range(nr_vnodes)]
    return VnumaInfo(nr_vnodes, list(vcpu_to_vnode), distances, memory_ranges)
