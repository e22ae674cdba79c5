"""Host topology from Xen's sysctl hypercalls (Dom0 only; reference section 7.3).

``XEN_SYSCTL_physinfo``, ``numainfo``, ``cputopoinfo`` and ``pcitopoinfo`` through privcmd, with
every answer validated before it becomes a plain dataclass.

The interface version
    Every sysctl carries ``interface_version``; Xen answers ``-EACCES`` unless it equals its own
    ``XEN_SYSCTL_INTERFACE_VERSION``, which changes between releases. The version is never assumed:
    :func:`candidate_versions` derives the expected one from ``xen_version`` through
    :data:`INTERFACE_VERSIONS` (reference 7.3), and on ``-EACCES`` the other known versions are
    tried, nearest release first, at most once each. The one that worked is remembered and logged.
    numainfo, cputopoinfo and pcitopoinfo have kept their layout since Xen 4.6, so every known
    version may carry them. physinfo grew ``arch_capabilities`` in 0x15 (Xen 4.17), which moved
    the page counts: only with 0x15 are ``total_pages``/``free_pages`` read; with any other version
    only the leading 32-bit fields, whose offsets never moved, are.

Xen's own behaviour that the wrappers rely on (xen/common/sysctl.c, 4.17):

* numainfo with both handles NULL answers ``num_nodes = last online node + 1``. With handles it
  fills ``min(caller's num_nodes, nodes)`` rows and writes the count back only if it differs;
  the distance rows are laid out with that (possibly smaller) count as the stride. Offline nodes
  have ``XEN_INVALID_MEM_SZ`` sizes, unknown distances ``XEN_INVALID_NODE_DIST``.
* cputopoinfo with a NULL handle answers ``num_cpus = last present CPU + 1``; non-present CPUs
  carry ``XEN_INVALID_*_ID`` in all three fields.
* pcitopoinfo stops after more than 64 entries when preemption is pending, returning 0 with
  ``num_devs`` = entries processed; the caller re-issues the rest with both handles advanced
  (as libxc's ``xc_pcitopoinfo`` does). Per device: a node id, ``XEN_INVALID_NODE_ID`` (known,
  no node) or ``XEN_INVALID_DEV`` (unknown to Xen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from guestagent.errors import InputError
from guestagent.log import get_logger
from guestagent.xen.errors import HypercallError, PrivcmdRestricted, XenUnavailable
from guestagent.xen.hostids import MAX_NODES as MAX_NODES  # re-exported (hostids: why)
from guestagent.xen.hostids import PciAddress as PciAddress
from guestagent.xen.versions import negotiate

if TYPE_CHECKING:
    from guestagent.xen.privcmd import HypercallBuffer, Privcmd

T = TypeVar("T")

#: ``XEN_SYSCTL_INTERFACE_VERSION`` of each release (reference 7.3, from each tag's sysctl.h).
INTERFACE_VERSIONS: dict[tuple[int, int], int] = {
    (4, 10): 0x10,
    (4, 11): 0x11,
    (4, 12): 0x12,
    (4, 13): 0x12,
    (4, 14): 0x13,
    (4, 15): 0x13,
    (4, 16): 0x14,
    (4, 17): 0x15,
    (4, 18): 0x15,
    (4, 19): 0x15,
    (4, 20): 0x15,
    (4, 21): 0x16,
}
#: The version whose physinfo layout csrc/guestagent_xen.h declares (Xen 4.17's).
PHYSINFO_FULL_LAYOUT_VERSION = 0x15

# Markers Xen writes for "no value" (public/sysctl.h). XEN_INVALID_MEM_SZ is ~0U stored in a
# uint64_t field, so it reads back as 0xFFFFFFFF; the 64-bit all-ones is accepted as well.
XEN_INVALID_MEM_SZ = 0xFFFFFFFF
XEN_INVALID_NODE_DIST = 0xFFFFFFFF
XEN_INVALID_CORE_ID = 0xFFFFFFFF
XEN_INVALID_SOCKET_ID = 0xFFFFFFFF
XEN_INVALID_NODE_ID = 0xFFFFFFFF
XEN_INVALID_DEV = 0xFFFFFFFE
_U64_ALL_ONES = 0xFFFFFFFFFFFFFFFF

#: Bounds on what a sane hypervisor reports; anything larger is treated as corrupt.
MAX_CPUS = 16384  # CONFIG_NR_CPUS tops out at 16383 + 1
MAX_CORE_OR_SOCKET = 1 << 20
MAX_PCI_DEVICES = 65536
MAX_DISTANCE = 255  # SLIT entries are one byte
MAX_NODE_BYTES = 1 << 52  # 4 PiB per node
#: Entries Xen processes before it may stop for preemption ("++i > 0x3f").
PCITOPO_BATCH = 64
#: numainfo/cputopoinfo restart when the count changed between the query and the fetch.
MAX_ATTEMPTS = 5

SYSCTL_BUFFER_OFFSET = 256  # arrays start here, after the 136-byte struct xen_sysctl


@dataclass(frozen=True)
class PhysInfo:
    """``XEN_SYSCTL_physinfo``; the page counts are None when the layout is not known."""

    threads_per_core: int
    cores_per_socket: int
    nr_cpus: int
    max_cpu_id: int
    nr_nodes: int
    max_node_id: int
    cpu_khz: int
    capabilities: int
    total_pages: int | None
    free_pages: int | None


@dataclass(frozen=True)
class NodeMemory:
    """One node's memory in bytes; both None for an offline node."""

    memsize: int | None
    memfree: int | None

    @property
    def online(self) -> bool:
        return self.memsize is not None


@dataclass(frozen=True)
class NumaInfo:
    """``XEN_SYSCTL_numainfo``: per node memory and the distance matrix (None = unknown)."""

    memory: list[NodeMemory]
    distances: list[list[int | None]]

    @property
    def num_nodes(self) -> int:
        return len(self.memory)


@dataclass(frozen=True)
class CpuTopo:
    """One CPU's place; all three None for a CPU that is not present, node None if unknown."""

    core: int | None
    socket: int | None
    node: int | None

    @property
    def present(self) -> bool:
        return self.core is not None


@dataclass(frozen=True)
class PciNode:
    """What pcitopoinfo says about one device."""

    address: PciAddress
    known: bool  # False: Xen does not know the device (XEN_INVALID_DEV)
    node: int | None  # None: unknown or no node


def candidate_versions(xen: tuple[int, int] | None) -> list[int]:
    """Interface versions to try, the one the running release should have first.

    Then the other known versions ordered by how far their release is from the running one (an
    unknown newer release starts from the newest known version). Each version appears once.
    """
    newest = max(map(_release_index, INTERFACE_VERSIONS))
    anchor = _release_index(xen) if xen is not None else newest
    by_distance = sorted(
        INTERFACE_VERSIONS,
        key=lambda r: (abs(_release_index(r) - anchor), -_release_index(r)),
    )
    versions: list[int] = []
    for release in by_distance:
        version = INTERFACE_VERSIONS[release]
        if version not in versions:
            versions.append(version)
    return versions


def _release_index(release: tuple[int, int]) -> int:
    return release[0] * 1000 + release[1]


class Sysctl:
    """The four topology sysctls over one privcmd, with the interface version found at run time.

    ``versions`` overrides the candidate list (tests, or an operator who knows better).
    """

    def __init__(self, privcmd: Privcmd, versions: Sequence[int] | None = None) -> None:
        self.privcmd = privcmd
        self._log = get_logger("sysctl")
        self.xen_release: tuple[int, int] | None = None
        self._versions: list[int] | None = list(versions) if versions is not None else None
        #: The interface version the running Xen accepted (None until a sysctl succeeded).
        self.interface_version: int | None = None

    # --- the version dance -------------------------------------------------------------------

    def _candidates(self) -> list[int]:
        if self.interface_version is not None:
            return [self.interface_version]
        if self._versions is None:
            try:
                self.xen_release = self.privcmd.xen_version()
            except (HypercallError, XenUnavailable) as e:
                if isinstance(e, PrivcmdRestricted):
                    raise
                self._log.warning("xen_version_unavailable", error=str(e))
            self._versions = candidate_versions(self.xen_release)
        return list(self._versions)

    def _call(self, name: str, cmd: int, buf: HypercallBuffer, fill: Callable[[Any], None]) -> Any:
        """Issue sysctl ``cmd`` from ``buf`` (struct at offset 0), trying interface versions.

        ``fill(sysctl_struct)`` sets the command's fields; it runs again for every attempt, since
        Xen may not have touched the struct but the caller must not rely on that.
        """
        from guestagent.xen.privcmd import SYSCTL

        op: Any = buf.struct("struct ga_xen_sysctl")

        def attempt(version: int) -> None:
            op.cmd = cmd
            op.interface_version = version
            fill(op)
            self.privcmd.hypercall(SYSCTL, buf.address, name=name)

        version, refused = negotiate(
            self._candidates(), attempt, name, "sysctl",
            "; this Xen is newer than guestagent knows, or an XSM policy denies sysctl")
        if self.interface_version is None:
            self.interface_version = version
            self._log.info(
                "sysctl_interface_version",
                version=f"{version:#x}",
                xen=None if self.xen_release is None else "{}.{}".format(*self.xen_release),
                refused=[f"{v:#x}" for v in refused],
            )
        return op

    # --- the sysctls -------------------------------------------------------------------------

    def physinfo(self) -> PhysInfo:
        from guestagent.xen.privcmd import lib

        name = "XEN_SYSCTL_physinfo"
        with self.privcmd.buffer(SYSCTL_BUFFER_OFFSET) as buf:
            op = self._call(name, int(lib.GA_XEN_SYSCTL_physinfo), buf, lambda _op: None)
            p = op.u.physinfo
            full = self.interface_version == PHYSINFO_FULL_LAYOUT_VERSION
            info = PhysInfo(
                threads_per_core=int(p.threads_per_core),
                cores_per_socket=int(p.cores_per_socket),
                nr_cpus=int(p.nr_cpus),
                max_cpu_id=int(p.max_cpu_id),
                nr_nodes=int(p.nr_nodes),
                max_node_id=int(p.max_node_id),
                cpu_khz=int(p.cpu_khz),
                capabilities=int(p.capabilities),
                total_pages=int(p.total_pages) if full else None,
                free_pages=int(p.free_pages) if full else None,
            )
        return validate_physinfo(info)

    def _fetch_until_count_holds(
        self,
        name: str,
        count: Callable[[], int],
        fetch: Callable[[int], tuple[int, T]],
        what: str,
        event: str,
        attempts: int,
    ) -> T:
        """Count, ``fetch(count)`` (-> the count Xen filled, the rows), count again; fetch again
        with the new count while it grew meanwhile, at most ``attempts`` times."""
        wanted = count()
        for _ in range(attempts):
            got, rows = fetch(wanted)
            # Xen fills silently fewer rows than it has when asked for fewer: count again.
            recount = count()
            if recount <= got:
                return rows
            self._log.info(event, asked=wanted, got=got, now=recount)
            wanted = recount
        raise InputError(name, f"{what} count kept changing over {attempts} attempts")

    def numainfo(self, attempts: int = MAX_ATTEMPTS) -> NumaInfo:
        """Query the node count, fetch, count again; fetch again if the count grew meanwhile.

        Asked for fewer nodes than it has, Xen fills that many rows and says nothing, so only the
        second count tells a complete answer from a truncated one.
        """
        from guestagent.xen.privcmd import ffi, lib

        name = "XEN_SYSCTL_numainfo"
        cmd = int(lib.GA_XEN_SYSCTL_numainfo)
        mem_size = ffi.sizeof("struct ga_xen_sysctl_meminfo")

        def fetch(wanted: int) -> tuple[int, tuple[list[tuple[int, int]], list[int]]]:
            dist_offset = SYSCTL_BUFFER_OFFSET + wanted * mem_size
            with self.privcmd.buffer(dist_offset + 4 * wanted * wanted) as buf:
                mem_addr = buf.address_of(SYSCTL_BUFFER_OFFSET)
                dist_addr = buf.address_of(dist_offset)

                def fill(op: Any) -> None:
                    op.u.numainfo.num_nodes = wanted
                    op.u.numainfo.meminfo = mem_addr
                    op.u.numainfo.distance = dist_addr

                op = self._call(name, cmd, buf, fill)
                got = int(op.u.numainfo.num_nodes)
                if not 1 <= got <= wanted:
                    raise InputError(
                        name, f"filled {got} nodes for a buffer of {wanted}", got
                    )
                meminfo = buf.array("struct ga_xen_sysctl_meminfo", got, SYSCTL_BUFFER_OFFSET)
                memory = [(int(meminfo[i].memsize), int(meminfo[i].memfree)) for i in range(got)]
                # The stride of the distance rows is the count Xen processed (pitfall, 7.3).
                raw = buf.array("uint32_t", got * got, dist_offset)
                flat = [int(raw[i]) for i in range(got * got)]
            return got, (memory, flat)

        memory, flat = self._fetch_until_count_holds(
            name,
            lambda: self._numainfo_count(name, cmd),
            fetch,
            what="node",
            event="numainfo_node_count_changed",
            attempts=attempts,
        )
        return validate_numainfo(memory, flat)

    def _numainfo_count(self, name: str, cmd: int) -> int:
        with self.privcmd.buffer(SYSCTL_BUFFER_OFFSET) as buf:

            def fill(op: Any) -> None:
                op.u.numainfo.num_nodes = 0
                op.u.numainfo.meminfo = 0
                op.u.numainfo.distance = 0

            op = self._call(name, cmd, buf, fill)
            count = int(op.u.numainfo.num_nodes)
        if not 1 <= count <= MAX_NODES:
            raise InputError(name, f"num_nodes out of range 1..{MAX_NODES}", count)
        return count

    def cputopoinfo(self, attempts: int = MAX_ATTEMPTS) -> list[CpuTopo]:
        """Per CPU id (index): core, socket, node."""
        from guestagent.xen.privcmd import ffi, lib

        name = "XEN_SYSCTL_cputopoinfo"
        cmd = int(lib.GA_XEN_SYSCTL_cputopoinfo)
        entry = ffi.sizeof("struct ga_xen_sysctl_cputopo")

        def fetch(wanted: int) -> tuple[int, list[tuple[int, int, int]]]:
            with self.privcmd.buffer(SYSCTL_BUFFER_OFFSET + wanted * entry) as buf:
                addr = buf.address_of(SYSCTL_BUFFER_OFFSET)

                def fill(op: Any) -> None:
                    op.u.cputopoinfo.num_cpus = wanted
                    op.u.cputopoinfo.cputopo = addr

                op = self._call(name, cmd, buf, fill)
                got = int(op.u.cputopoinfo.num_cpus)
                if not 1 <= got <= wanted:
                    raise InputError(name, f"filled {got} CPUs for a buffer of {wanted}", got)
                arr = buf.array("struct ga_xen_sysctl_cputopo", got, SYSCTL_BUFFER_OFFSET)
                raw = [(int(arr[i].core), int(arr[i].socket), int(arr[i].node)) for i in range(got)]
            return got, raw

        raw = self._fetch_until_count_holds(
            name,
            lambda: self._cputopo_count(name, cmd),
            fetch,
            what="CPU",
            event="cputopoinfo_cpu_count_changed",
            attempts=attempts,
        )
        return validate_cputopo(raw)

    def _cputopo_count(self, name: str, cmd: int) -> int:
        with self.privcmd.buffer(SYSCTL_BUFFER_OFFSET) as buf:

            def fill(op: Any) -> None:
                op.u.cputopoinfo.num_cpus = 0
                op.u.cputopoinfo.cputopo = 0

            op = self._call(name, cmd, buf, fill)
            count = int(op.u.cputopoinfo.num_cpus)
        if not 1 <= count <= MAX_CPUS:
            raise InputError(name, f"num_cpus out of range 1..{MAX_CPUS}", count)
        return count

    def pcitopoinfo(self, devices: Sequence[PciAddress]) -> list[PciNode]:
        """The node of every device, in the order given; re-issued where Xen stopped."""
        from guestagent.xen.privcmd import ffi, lib

        name = "XEN_SYSCTL_pcitopoinfo"
        total = len(devices)
        if total == 0:
            return []
        if total > MAX_PCI_DEVICES:
            raise InputError(name, f"more than {MAX_PCI_DEVICES} devices to look up", total)
        cmd = int(lib.GA_XEN_SYSCTL_pcitopoinfo)
        dev_size = ffi.sizeof("struct ga_physdev_pci_device")
        nodes_offset = SYSCTL_BUFFER_OFFSET + total * dev_size
        nodes_offset += -nodes_offset % 8
        with self.privcmd.buffer(nodes_offset + 4 * total) as buf:
            devs = buf.array("struct ga_physdev_pci_device", total, SYSCTL_BUFFER_OFFSET)
            for i, d in enumerate(devices):
                devs[i].seg, devs[i].bus, devs[i].devfn = d.seg, d.bus, d.devfn
            processed = 0
            calls = 0
            while processed < total:
                calls += 1
                if calls > total:  # every call must make progress; this cannot be reached
                    raise InputError(name, "no progress", processed)
                remaining = total - processed
                devs_addr = buf.address_of(SYSCTL_BUFFER_OFFSET + processed * dev_size)
                nodes_addr = buf.address_of(nodes_offset + processed * 4)

                def fill(
                    op: Any, n: int = remaining, d: int = devs_addr, o: int = nodes_addr
                ) -> None:
                    op.u.pcitopoinfo.num_devs = n
                    op.u.pcitopoinfo.devs = d
                    op.u.pcitopoinfo.nodes = o

                op = self._call(name, cmd, buf, fill)
                done = int(op.u.pcitopoinfo.num_devs)
                if not 1 <= done <= remaining:
                    raise InputError(
                        name,
                        f"processed {done} of {remaining} remaining devices "
                        f"(must be 1..{remaining})",
                        done,
                    )
                processed += done
            raw = buf.array("uint32_t", total, nodes_offset)
            values = [int(raw[i]) for i in range(total)]
        if calls > 1:
            self._log.debug("pcitopoinfo_reissued", devices=total, calls=calls)
        return validate_pcitopo(devices, values)


# --- validation (pure) -------------------------------------------------------------------------


def validate_physinfo(info: PhysInfo) -> PhysInfo:
    source = "XEN_SYSCTL_physinfo"
    if not 1 <= info.nr_cpus <= MAX_CPUS:
        raise InputError(source, f"nr_cpus out of range 1..{MAX_CPUS}", info.nr_cpus)
    if not info.nr_cpus - 1 <= info.max_cpu_id < MAX_CPUS:
        raise InputError(source, "max_cpu_id below nr_cpus - 1 or too large", info.max_cpu_id)
    if not 1 <= info.nr_nodes <= MAX_NODES:
        raise InputError(source, f"nr_nodes out of range 1..{MAX_NODES}", info.nr_nodes)
    if not info.nr_nodes - 1 <= info.max_node_id < MAX_NODES:
        raise InputError(source, "max_node_id below nr_nodes - 1 or too large", info.max_node_id)
    for field_name in ("threads_per_core", "cores_per_socket"):
        value = getattr(info, field_name)
        if not 1 <= value <= MAX_CPUS:
            raise InputError(source, f"{field_name} out of range 1..{MAX_CPUS}", value)
    total, free = info.total_pages, info.free_pages
    if total is not None and free is not None and (free > total or total > MAX_NODE_BYTES):
        raise InputError(source, "free_pages above total_pages, or absurd", (free, total))
    return info


def _invalid_size(value: int) -> bool:
    return value in (XEN_INVALID_MEM_SZ, _U64_ALL_ONES)


def validate_numainfo(memory: Sequence[tuple[int, int]], flat_distances: Sequence[int]) -> NumaInfo:
    """``memory``: (memsize, memfree) per node in bytes; ``flat_distances``: N*N row-major."""
    source = "XEN_SYSCTL_numainfo"
    n = len(memory)
    if not 1 <= n <= MAX_NODES:
        raise InputError(source, f"num_nodes out of range 1..{MAX_NODES}", n)
    if len(flat_distances) != n * n:
        raise InputError(
            source, f"distance matrix has {len(flat_distances)} entries, expected {n}^2"
        )
    nodes: list[NodeMemory] = []
    for i, (size, free) in enumerate(memory):
        if _invalid_size(size) or _invalid_size(free):
            if not (_invalid_size(size) and _invalid_size(free)):
                raise InputError(source, f"node {i} is half offline", (size, free))
            nodes.append(NodeMemory(None, None))
            continue
        if size > MAX_NODE_BYTES or free > size:
            raise InputError(
                source, f"node {i} memfree above memsize, or memsize absurd", (size, free)
            )
        nodes.append(NodeMemory(size, free))
    distances: list[list[int | None]] = []
    for i in range(n):
        row: list[int | None] = []
        for j in range(n):
            d = flat_distances[i * n + j]
            if d == XEN_INVALID_NODE_DIST:
                row.append(None)
            elif 1 <= d <= MAX_DISTANCE:
                row.append(d)
            else:
                raise InputError(source, f"distance({i},{j}) out of range 1..{MAX_DISTANCE}", d)
        distances.append(row)
    if not any(node.online for node in nodes):
        raise InputError(source, "no node is online")
    return NumaInfo(nodes, distances)


def validate_cputopo(raw: Sequence[tuple[int, int, int]]) -> list[CpuTopo]:
    """(core, socket, node) per CPU; node ids are checked against num_nodes by the caller."""
    source = "XEN_SYSCTL_cputopoinfo"
    if not 1 <= len(raw) <= MAX_CPUS:
        raise InputError(source, f"num_cpus out of range 1..{MAX_CPUS}", len(raw))
    cpus: list[CpuTopo] = []
    for cpu, (core, socket, node) in enumerate(raw):
        if core == XEN_INVALID_CORE_ID and socket == XEN_INVALID_SOCKET_ID:
            if node != XEN_INVALID_NODE_ID:
                raise InputError(source, f"cpu {cpu} is not present but has node", node)
            cpus.append(CpuTopo(None, None, None))
            continue
        if core >= MAX_CORE_OR_SOCKET or socket >= MAX_CORE_OR_SOCKET:
            raise InputError(source, f"cpu {cpu} core or socket id absurd", (core, socket))
        if node == XEN_INVALID_NODE_ID:
            cpus.append(CpuTopo(core, socket, None))
        elif node < MAX_NODES:
            cpus.append(CpuTopo(core, socket, node))
        else:
            raise InputError(source, f"cpu {cpu} node id out of range 0..{MAX_NODES - 1}", node)
    if not any(c.present for c in cpus):
        raise InputError(source, "no CPU is present")
    return cpus


def validate_pcitopo(devices: Sequence[PciAddress], values: Sequence[int]) -> list[PciNode]:
    source = "XEN_SYSCTL_pcitopoinfo"
    if len(values) != len(devices):
        raise InputError(source, f"{len(values)} answers for {len(devices)} devices")
    result: list[PciNode] = []
    for device, value in zip(devices, values):
        if value == XEN_INVALID_DEV:
            result.append(PciNode(device, False, None))
        elif value == XEN_INVALID_NODE_ID:
            result.append(PciNode(device, True, None))
        elif value < MAX_NODES:
            result.append(PciNode(device, True, value))
        else:
            raise InputError(source, f"device {device} node id out of range 0..{MAX_NODES - 1}",
                             value)
    return result
