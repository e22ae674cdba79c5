"""Readers for the memory signals that drive self-ballooning, and the snapshot made from them.

Reading and the model are separate: :func:`read_raw` reads each source into plain figures
(:class:`RawSignals`); the pure :func:`build_signals` makes the :class:`MemorySignals` snapshot a
policy sees from them (and a trace records). Every reader goes through
:class:`~guestagent.hostfs.HostFS` and raises :class:`~guestagent.errors.InputError` (one line:
file, reason, value) on anything it cannot parse. Sources (reference ``xen-abi.md`` sections 4,
5.2 and 6.5):

* ``/proc/pressure/memory``: PSI ``some`` and ``full`` averages and stall totals (µs);
* a PSI trigger file descriptor (:class:`PsiTrigger`) polled for ``POLLPRI``;
* ``/proc/meminfo``: MemTotal, MemFree, MemAvailable, Cached, Committed_AS, SwapTotal, SwapFree;
* ``/proc/vmstat``: ``workingset_refault_anon``/``_file`` (``workingset_refault`` before 5.9),
  ``pswpin``, ``oom_kill``;
* ``/proc/zoneinfo``: the kernel's ``totalreserve_pages``, recomputed the way
  ``calculate_totalreserve_pages()`` does it (needed by the ``classic`` policy);
* the balloon driver, ``/sys/devices/system/xen_memory/xen_memory0/{target_kb,info/current_kb}``
  (absent directory = no balloon driver);
* xenstore ``memory/target`` and ``memory/static-max`` (KiB) through an injected
  :class:`XenstoreReader`, so this module never imports the xenstore client at import time.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS, parse_int
from guestagent.units import KIB, PAGE_SIZE

PSI_MEMORY = "/proc/pressure/memory"
MEMINFO = "/proc/meminfo"
VMSTAT = "/proc/vmstat"
ZONEINFO = "/proc/zoneinfo"
BALLOON_DIR = "/sys/devices/system/xen_memory/xen_memory0"
BALLOON_TARGET = BALLOON_DIR + "/target_kb"
BALLOON_CURRENT = BALLOON_DIR + "/info/current_kb"
HYPERVISOR_TYPE = "/sys/hypervisor/type"
XS_TARGET = "memory/target"
XS_STATIC_MAX = "memory/static-max"

#: x86_64 page size in KiB: zoneinfo counts pages, every other source counts KiB.
PAGE_KB = PAGE_SIZE // KIB

#: Upper bound for any memory size read (KiB): 64 TiB, far above any Xen guest.
MAX_KB = 1 << 36

_PSI_LINE = re.compile(
    r"^(some|full) avg10=(\d{1,3}\.\d\d) avg60=(\d{1,3}\.\d\d) avg300=(\d{1,3}\.\d\d)"
    r" total=(\d{1,20})$"
)
_PSI_MISSING = "does not exist: PSI unavailable (kernel < 4.20, CONFIG_PSI off or psi=0)"
#: The vmstat counters the policies read, which may never be negative.
_VMSTAT_COUNTERS = frozenset((
    "workingset_refault", "workingset_refault_anon", "workingset_refault_file", "pswpin",
    "oom_kill",
))
_ZONE_HEADER = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)")
_ZONE_HIGH = re.compile(r"^\s+high\s+(\d+)$")
_ZONE_MANAGED = re.compile(r"^\s+managed\s+(\d+)$")
_ZONE_PROTECTION = re.compile(r"^\s+protection:\s+\(([-\d,\s]*)\)$")


class XenstoreReader(Protocol):
    """What the balloon needs from a xenstore client: read one node (relative to the domain)."""

    def read(self, path: str) -> bytes: ...


# --------------------------------------------------------------------------------------------
# PSI


@dataclass(frozen=True)
class PsiLine:
    """One line of a PSI file: averages in percent, total stall time in microseconds."""

    avg10: float
    avg60: float
    avg300: float
    total_us: int


@dataclass(frozen=True)
class Psi:
    some: PsiLine
    full: PsiLine


def parse_psi(text: str, source: str) -> Psi:
    """A PSI file (``some`` and ``full`` lines, each exactly once); anything else raises."""
    found: dict[str, PsiLine] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _PSI_LINE.match(line)
        if m is None:
            raise InputError(
                f"{source} line {lineno}",
                "expected 'some|full avg10=N.NN avg60=N.NN avg300=N.NN total=N'",
                line,
            )
        kind = m.group(1)
        if kind in found:
            raise InputError(f"{source} line {lineno}", f"second '{kind}' line", line)
        avgs = [float(m.group(i)) for i in (2, 3, 4)]
        if any(a > 100.0 for a in avgs):
            raise InputError(f"{source} line {lineno}", "average above 100 %", line)
        found[kind] = PsiLine(avgs[0], avgs[1], avgs[2], int(m.group(5)))
    for kind in ("some", "full"):
        if kind not in found:
            raise InputError(source, f"no '{kind}' line", text)
    return Psi(some=found["some"], full=found["full"])


def read_psi(hostfs: HostFS, host_path: str = PSI_MEMORY) -> Psi:
    try:
        text = hostfs.read_text(host_path)
    except MissingInputError:
        raise MissingInputError(host_path, _PSI_MISSING) from None
    return parse_psi(text, host_path)


class PsiTrigger:
    """A PSI trigger: the fd gets ``POLLPRI`` when stall time within a window passes a bound.

    ``PsiTrigger(hostfs, "some", 150000, 1000000)`` fires when tasks were stalled on memory for
    150 ms within any 1 s window. Give :meth:`fileno` to the daemon's event loop for ``POLLPRI``
    (``EventLoop.add_reader(..., priority=True)``); ``POLLERR`` means the trigger is gone (the file
    went away). One trigger per fd; closing the fd removes it. Needs Linux >= 5.2. Without
    CAP_SYS_RESOURCE (root in a container, or a capability-bounded service) Linux >= 6.5 only
    accepts windows that are a multiple of 2 s: then the window is widened to the next multiple
    of 2 s with the same stall ratio (150 ms / 1 s -> 300 ms / 2 s), ``widened`` is set and
    ``spec`` says what was armed.
    """

    MIN_WINDOW_US = 500_000
    MAX_WINDOW_US = 10_000_000
    UNPRIVILEGED_WINDOW_US = 2_000_000

    def __init__(
        self,
        hostfs: HostFS,
        kind: str = "some",
        stall_us: int = 150_000,
        window_us: int = 1_000_000,
        host_path: str = PSI_MEMORY,
        allow_unprivileged: bool = True,
    ) -> None:
        source = f"PSI trigger {host_path}"
        if kind not in ("some", "full"):
            raise InputError(source, "kind must be 'some' or 'full'", kind)
        if not self.MIN_WINDOW_US <= window_us <= self.MAX_WINDOW_US:
            raise InputError(source, "window must be 500000..10000000 us", window_us)
        if not 0 < stall_us <= window_us:
            raise InputError(source, "stall must be > 0 and <= the window", stall_us)
        self.kind = kind
        self.spec = f"{kind} {stall_us} {window_us}"
        self.host_path = host_path
        #: True when the window had to be widened to 2 s (no CAP_SYS_RESOURCE).
        self.widened = False
        path = hostfs.path(host_path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        except FileNotFoundError:
            raise MissingInputError(host_path, _PSI_MISSING) from None
        except PermissionError:
            raise InputError(
                source, "cannot open read-write: PSI triggers need Linux >= 5.2 and root"
            ) from None
        except OSError as e:
            raise InputError(source, f"open failed: {e.strerror or e}") from None
        try:
            self._arm(fd, source, stall_us, window_us, allow_unprivileged)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def _arm(
        self, fd: int, source: str, stall_us: int, window_us: int, allow_unprivileged: bool
    ) -> None:
        try:
            os.write(fd, self.spec.encode("ascii") + b"\0")
            return
        except OSError as e:
            err = e.errno or 0
            strerror = e.strerror or str(e)
        unprivileged_window = window_us % self.UNPRIVILEGED_WINDOW_US != 0
        if err == errno.EINVAL and unprivileged_window and allow_unprivileged:
            # Without CAP_SYS_RESOURCE (Linux >= 6.5) the window must be a multiple of 2 s: keep
            # the same stall ratio over the smallest such window.
            step = self.UNPRIVILEGED_WINDOW_US
            wide = max(step, -(-window_us // step) * step)
            stall = max(1, stall_us * wide // window_us)
            self.spec = f"{self.kind} {stall} {wide}"
            try:
                os.write(fd, self.spec.encode("ascii") + b"\0")
                self.widened = True
                return
            except OSError as e2:
                err = e2.errno or 0
                strerror = e2.strerror or str(e2)
        reason = {
            errno.EBUSY: "a trigger is already set on this fd",
            errno.EINVAL: "the kernel rejected the trigger (bad parameters, or unprivileged "
            "without a window multiple of 2 s)",
            errno.EOPNOTSUPP: "triggers are not supported by this kernel (Linux < 5.2)",
            errno.EPERM: "not permitted (unprivileged triggers need a window multiple of 2 s)",
            errno.EACCES: "not permitted (unprivileged triggers need a window multiple of 2 s)",
        }.get(err, f"write failed: {strerror}")
        raise InputError(source, reason, self.spec)

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("PSI trigger is closed")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PsiTrigger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# meminfo, vmstat, zoneinfo


@dataclass(frozen=True)
class MemInfo:
    """The ``/proc/meminfo`` fields the balloon uses, in KiB."""

    mem_total_kb: int
    mem_free_kb: int
    mem_available_kb: int
    cached_kb: int
    committed_as_kb: int
    swap_total_kb: int
    swap_free_kb: int


_MEMINFO_KEYS = {
    "mem_total_kb": "MemTotal",
    "mem_free_kb": "MemFree",
    "mem_available_kb": "MemAvailable",
    "cached_kb": "Cached",
    "committed_as_kb": "Committed_AS",
    "swap_total_kb": "SwapTotal",
    "swap_free_kb": "SwapFree",
}


def read_meminfo(hostfs: HostFS, host_path: str = MEMINFO) -> MemInfo:
    raw = hostfs.read_meminfo(host_path)
    values: dict[str, int] = {}
    for attr, key in _MEMINFO_KEYS.items():
        if key not in raw:
            raise InputError(host_path, f"no {key} line (MemAvailable needs Linux >= 3.14)")
        kb = raw[key] // KIB
        if kb > MAX_KB:
            raise InputError(host_path, f"{key} implausibly large", raw[key])
        values[attr] = kb
    if values["mem_total_kb"] <= 0:
        raise InputError(host_path, "MemTotal is zero", values["mem_total_kb"])
    return MemInfo(**values)


@dataclass(frozen=True)
class VmStat:
    """Counters from ``/proc/vmstat`` (pages or events since boot).

    ``refaults`` is anon + file refaults (or the single pre-5.9 ``workingset_refault``); the split
    fields are None on kernels without it. ``oom_kill`` is None before Linux 4.13.
    """

    refaults: int
    refault_anon: int | None
    refault_file: int | None
    pswpin: int
    oom_kill: int | None


#: ``/proc/vmstat`` as the kernel prints it: ``name value`` lines, one space, a newline each.
_VMSTAT_PLAIN = re.compile(r"(?:[!-~]+ -?[0-9]{1,20}\n)+")


def _vmstat_plain(text: str) -> dict[str, int] | None:
    """The counters the balloon uses (:data:`_VMSTAT_COUNTERS`), from a file printed as the
    kernel prints it (every line checked by the pattern), none negative; None for anything else
    (:func:`_vmstat_lines` then finds what is wrong, with its line). One regular expression over
    the whole text and ``str.split``: the balloon job reads this file every second (about 190
    lines), and a Python loop over the lines was a third of a tick."""
    if _VMSTAT_PLAIN.fullmatch(text) is None:
        return None
    tokens = text.split()
    named = dict(zip(tokens[0::2], tokens[1::2]))  # the last of a repeated name, as line by line
    values = {name: int(named[name]) for name in _VMSTAT_COUNTERS if name in named}
    if any(value < 0 for value in values.values()):
        return None
    return values


def _vmstat_lines(text: str, source: str) -> dict[str, int]:
    """Line by line, every line checked: blank lines, other spacing; a bad line raises."""
    values: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        digits = parts[-1][1:] if parts[-1][:1] == "-" else parts[-1]
        if len(parts) != 2 or not (digits.isascii() and digits.isdigit()) or len(digits) > 20:
            raise InputError(f"{source} line {lineno}", "expected 'name number'", line)
        value = int(parts[1])
        if value < 0 and parts[0] in _VMSTAT_COUNTERS:
            raise InputError(f"{source} line {lineno}", "negative counter", line)
        values[parts[0]] = value
    if not values:
        raise InputError(source, "no vmstat lines", text)
    return values


def parse_vmstat(text: str, source: str) -> VmStat:
    values = _vmstat_plain(text)
    if values is None:
        values = _vmstat_lines(text, source)
    anon = values.get("workingset_refault_anon")
    file_ = values.get("workingset_refault_file")
    if anon is not None and file_ is not None:
        refaults = anon + file_
    elif "workingset_refault" in values:
        refaults = values["workingset_refault"]
        anon = file_ = None
    else:
        raise InputError(source, "no workingset_refault(_anon/_file) counters (Linux < 3.15?)")
    if "pswpin" not in values:
        raise InputError(source, "no pswpin counter")
    return VmStat(refaults, anon, file_, values["pswpin"], values.get("oom_kill"))


def read_vmstat(hostfs: HostFS, host_path: str = VMSTAT) -> VmStat:
    return parse_vmstat(hostfs.read_text(host_path), host_path)


def parse_zoneinfo_totalreserve(text: str, source: str) -> int:
    """The kernel's ``totalreserve_pages``, in pages, recomputed from ``/proc/zoneinfo``.

    Per zone, as in ``calculate_totalreserve_pages()``: the largest ``lowmem_reserve`` (the
    ``protection:`` tuple) over this zone and the ones above it, plus the high watermark, capped at
    the zone's managed pages; summed over all zones of all nodes. The zone's index is its position
    within its node (kernels >= 4.16 list empty zones too; older ones omit them, which only ever
    drops trailing empty zones, so positions stay right in practice).
    """
    zones: list[tuple[str, int, dict[str, Any]]] = []
    position: dict[str, int] = {}
    current: dict[str, Any] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        header = _ZONE_HEADER.match(line)
        if header is not None:
            node = header.group(1)
            index = position.get(node, 0)
            position[node] = index + 1
            current = {"where": f"{source} line {lineno}"}
            zones.append((f"node {node} zone {header.group(2)}", index, current))
            continue
        if current is None:
            continue
        for key, regex in (("high", _ZONE_HIGH), ("managed", _ZONE_MANAGED)):
            m = regex.match(line)
            if m is not None:
                current.setdefault(key, int(m.group(1)))
        m = _ZONE_PROTECTION.match(line)
        if m is not None:
            try:
                current["protection"] = [int(x) for x in m.group(1).split(",")]
            except ValueError:
                raise InputError(f"{source} line {lineno}", "bad protection tuple", line) from None
    if not zones:
        raise InputError(source, "no 'Node N, zone NAME' sections", text[:200])
    total = 0
    for name, index, zone in zones:
        for key in ("high", "managed", "protection"):
            if key not in zone:
                raise InputError(zone["where"], f"{name} has no '{key}' line")
        protection: list[int] = zone["protection"]
        higher = protection[index:] if index < len(protection) else []
        reserve = max([0, *higher]) + zone["high"]
        total += min(reserve, zone["managed"])
    return total


def read_totalreserve_kb(hostfs: HostFS, host_path: str = ZONEINFO) -> int:
    return parse_zoneinfo_totalreserve(hostfs.read_text(host_path), host_path) * PAGE_KB


# --------------------------------------------------------------------------------------------
# Balloon driver and xenstore


@dataclass(frozen=True)
class BalloonState:
    """The balloon driver's view, in KiB of its own accounting (not MemTotal)."""

    target_kb: int
    current_kb: int


def balloon_unavailable_reason(hostfs: HostFS) -> str | None:
    """None if the balloon driver's sysfs directory exists, else why the feature must stay off."""
    if hostfs.exists(BALLOON_DIR):
        return None
    try:
        hv = hostfs.read_text(HYPERVISOR_TYPE).strip()
    except InputError:
        hv = ""
    if hv == "xen":
        return f"no balloon driver ({BALLOON_DIR} missing; is xen-balloon loaded?)"
    return f"not running on Xen ({BALLOON_DIR} and a 'xen' {HYPERVISOR_TYPE} are missing)"


def read_balloon(hostfs: HostFS) -> BalloonState | None:
    """The driver's target and current size; None without a balloon driver."""
    try:
        target = hostfs.read_int(BALLOON_TARGET, minimum=0, maximum=MAX_KB)
    except MissingInputError:
        if not hostfs.exists(BALLOON_DIR):  # looked at only then: this is read every second
            return None
        raise
    current = hostfs.read_int(BALLOON_CURRENT, minimum=0, maximum=MAX_KB)
    return BalloonState(target_kb=target, current_kb=current)


def parse_xenstore_kb(data: bytes, path: str) -> int:
    source = f"xenstore {path}"
    try:
        text = data.decode("ascii").rstrip("\0")
    except UnicodeDecodeError:
        raise InputError(source, "not ASCII", data[:40]) from None
    return parse_int(text, source, minimum=1, maximum=MAX_KB)


def read_xenstore_kb(xs: XenstoreReader, path: str) -> int | None:
    """A KiB value from xenstore; None if the node does not exist."""
    try:
        data = xs.read(path)
    except MissingInputError:
        return None
    except (FileNotFoundError, KeyError):
        return None
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise InputError(f"xenstore {path}", f"read failed: {e.strerror or e}") from None
    return parse_xenstore_kb(data, path)


class DirectoryXenstore:
    """A stand-in xenstore for fixture trees: node ``memory/target`` is the file
    ``<directory>/memory/target`` below the HostFS root. A missing file is a missing node.
    """

    def __init__(self, hostfs: HostFS, directory: str) -> None:
        self.hostfs = hostfs
        self.directory = directory.rstrip("/")

    def read(self, path: str) -> bytes:
        if path.startswith("/") or ".." in path.split("/"):
            raise InputError("xenstore", "fixture xenstore takes relative paths only", path)
        return self.hostfs.read_text(f"{self.directory}/{path}").encode("ascii")


# --------------------------------------------------------------------------------------------
# The snapshot


@dataclass(frozen=True)
class MemorySignals:
    """Everything a policy may look at, at one instant. Sizes in KiB, PSI averages in percent.

    ``timestamp`` is seconds on a monotonic scale chosen by the caller (the controller's clock,
    or the offset into a trace); policies only ever subtract timestamps. ``balloon_*`` are None
    without a balloon driver, ``xs_*`` without xenstore, ``totalreserve_kb`` without zoneinfo.
    ``psi_trigger_fired`` is True when the PSI trigger fd signalled since the previous snapshot.
    ``psi_available`` is False on kernels without PSI (then every PSI field is 0).
    """

    timestamp: float
    mem_total_kb: int
    mem_free_kb: int
    mem_available_kb: int
    cached_kb: int
    committed_as_kb: int
    swap_total_kb: int
    swap_free_kb: int
    some_avg10: float
    some_avg60: float
    some_avg300: float
    some_total_us: int
    full_avg10: float
    full_avg60: float
    full_avg300: float
    full_total_us: int
    refaults: int
    refault_anon: int | None
    refault_file: int | None
    pswpin: int
    oom_kill: int | None
    balloon_target_kb: int | None
    balloon_current_kb: int | None
    totalreserve_kb: int | None
    xs_target_kb: int | None
    xs_static_max_kb: int | None
    psi_trigger_fired: bool = False
    psi_available: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> MemorySignals:
        """Validate a decoded JSON object (a trace line); every field is checked."""
        if not isinstance(data, Mapping):
            raise InputError(source, "expected a JSON object", data)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in _OPTIONAL_FIELDS:
                    values[f.name] = _OPTIONAL_FIELDS[f.name]
                    continue
                raise InputError(source, f"missing field '{f.name}'")
            values[f.name] = _check_field(f.name, str(f.type), data[f.name], source)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(source, f"unknown field '{unknown[0]}'")
        return cls(**values)


#: Fields a trace line may omit (older traces), with their value then.
_OPTIONAL_FIELDS = {"psi_trigger_fired": False, "psi_available": True}


def _check_field(name: str, type_name: str, value: Any, source: str) -> Any:
    where = f"{source} field '{name}'"
    optional = type_name.endswith("| None")
    if value is None:
        if optional:
            return None
        raise InputError(where, "must not be null")
    if "bool" in type_name:
        if not isinstance(value, bool):
            raise InputError(where, "expected true or false", value)
        return value
    if "float" in type_name:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(where, "expected a number", value)
        if name == "timestamp":
            if value != value or value in (float("inf"), float("-inf")):
                raise InputError(where, "expected a finite number", value)
        elif not 0.0 <= float(value) <= 100.0:
            raise InputError(where, "expected a percentage 0..100", value)
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(where, "expected an integer", value)
    if value < 0:
        raise InputError(where, "must not be negative", value)
    if name.endswith("_kb") and value > MAX_KB:
        raise InputError(where, "implausibly large", value)
    return value


@dataclass(frozen=True)
class RawSignals:
    """What :func:`read_raw` read, source by source, before anything is combined: plain figures.

    ``psi`` is None on a kernel without PSI, ``balloon`` without a balloon driver,
    ``totalreserve_kb`` when zoneinfo was not read, ``xs_*`` without xenstore (or the node)."""

    psi: Psi | None
    meminfo: MemInfo
    vmstat: VmStat
    balloon: BalloonState | None
    totalreserve_kb: int | None
    xs_target_kb: int | None
    xs_static_max_kb: int | None


def read_raw(
    hostfs: HostFS, xenstore: XenstoreReader | None, with_zoneinfo: bool = True
) -> RawSignals:
    """Read every source once (the I/O half of :func:`read_signals`); a broken source raises
    InputError. A kernel without PSI is not an error here (``psi`` None)."""
    try:
        psi: Psi | None = read_psi(hostfs)
    except MissingInputError:
        psi = None
    mem = read_meminfo(hostfs)
    vm = read_vmstat(hostfs)
    balloon = read_balloon(hostfs)
    totalreserve = read_totalreserve_kb(hostfs) if with_zoneinfo else None
    xs_target = xs_static_max = None
    if xenstore is not None:
        xs_target = read_xenstore_kb(xenstore, XS_TARGET)
        xs_static_max = read_xenstore_kb(xenstore, XS_STATIC_MAX)
    return RawSignals(psi, mem, vm, balloon, totalreserve, xs_target, xs_static_max)


def build_signals(
    raw: RawSignals, timestamp: float, psi_trigger_fired: bool = False
) -> MemorySignals:
    """The snapshot a policy sees, made from what was read (pure: no I/O, no clock).

    Without PSI (``raw.psi`` None) ``psi_available`` is False and the PSI fields are 0: the
    classic policy does not need it, and the pressure policy refuses to shrink without it.
    """
    zero = PsiLine(0.0, 0.0, 0.0, 0)
    psi = raw.psi if raw.psi is not None else Psi(some=zero, full=zero)
    mem, vm, balloon = raw.meminfo, raw.vmstat, raw.balloon
    return MemorySignals(
        timestamp=timestamp,
        mem_total_kb=mem.mem_total_kb,
        mem_free_kb=mem.mem_free_kb,
        mem_available_kb=mem.mem_available_kb,
        cached_kb=mem.cached_kb,
        committed_as_kb=mem.committed_as_kb,
        swap_total_kb=mem.swap_total_kb,
        swap_free_kb=mem.swap_free_kb,
        some_avg10=psi.some.avg10,
        some_avg60=psi.some.avg60,
        some_avg300=psi.some.avg300,
        some_total_us=psi.some.total_us,
        full_avg10=psi.full.avg10,
        full_avg60=psi.full.avg60,
        full_avg300=psi.full.avg300,
        full_total_us=psi.full.total_us,
        refaults=vm.refaults,
        refault_anon=vm.refault_anon,
        refault_file=vm.refault_file,
        pswpin=vm.pswpin,
        oom_kill=vm.oom_kill,
        balloon_target_kb=None if balloon is None else balloon.target_kb,
        balloon_current_kb=None if balloon is None else balloon.current_kb,
        totalreserve_kb=raw.totalreserve_kb,
        xs_target_kb=raw.xs_target_kb,
        xs_static_max_kb=raw.xs_static_max_kb,
        psi_trigger_fired=psi_trigger_fired,
        psi_available=raw.psi is not None,
    )


def read_signals(
    hostfs: HostFS,
    xenstore: XenstoreReader | None,
    timestamp: float,
    psi_trigger_fired: bool = False,
    with_zoneinfo: bool = True,
) -> MemorySignals:
    """Read every source once into a snapshot: :func:`read_raw`, then :func:`build_signals`."""
    return build_signals(read_raw(hostfs, xenstore, with_zoneinfo), timestamp, psi_trigger_fired)
