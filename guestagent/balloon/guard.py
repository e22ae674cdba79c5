"""The allocation guard: ballooning down must never make a valid program's allocation fail.

Why it exists (issue 12, seen on the testbed): a 1 GiB PV guest shrunk to about 300 MiB, then a
program's single 450 MiB ``mmap`` got ENOMEM. With ``vm.overcommit_memory=0`` Linux refuses one
allocation larger than the RAM and swap it has *now*, and the balloon lowered that RAM. Under
``vm.overcommit_memory=2`` CommitLimit shrinks with the RAM as well. docs/BALLOON.md weighs the
options; what the guard does, before the agent's first shrink below the ceiling:

* overcommit mode 0 (heuristic) -> 1 while ballooned: the heuristic's only check compares one
  request with the current RAM + swap, which the balloon falsifies. Mode 1 -> nothing.
  Mode 2 (the administrator asked for strict accounting) is never changed: instead the balloon
  target is floored so CommitLimit stays above Committed_AS plus a margin
  (:func:`strict_commit_floor_kb`).
* a zram swap device sized to what may be ballooned out (ceiling - floor), at a high priority,
  where the kernel has zram (loaded, built in or loadable) and no zram device is in use by
  someone else: a burst that outruns the balloon's grow is compressed instead of OOM-killed.

Every change is recorded in the balloon's undo journal (``/run/guestagent/balloon.json``,
:mod:`guestagent.balloon.journal`; seen here as the record's ``guard`` list) before it is
made, logged with what and the previous value, and undone by :func:`undo` (``guestagent
balloon --reset``, the daemon's stop, the unit's ``ExecStopPost``) newest first (issue 14):
swapoff, zram reset and removal, module unload (only if the guard loaded it) and the sysctl, in
the reverse of the order they were recorded. The caller puts the balloon target back to the
ceiling and waits for the memory first (a swapoff needs it). The guard never touches a
zram device or a swap it did not create.

Under the systemd unit the daemon's sandbox can load no module, open no block device and call
no swapon: the zram swap is made before the daemon starts by :func:`prepare`
(``guestagent balloon --prepare-guard``, the unit's privileged ``ExecStartPre``), which the
daemon's :meth:`Guard.arm` then adopts. A swapoff the sandbox refuses (EPERM) is left in the
record for the privileged ``ExecStopPost`` (``guestagent balloon --reset``).

The pure functions (:func:`strict_commit_floor_kb`, :func:`commit_floor_kb`,
:func:`overcommit_change`, :func:`zram_disksize_kb`, :func:`parse_swaps`) hold the decisions;
:func:`read_commit` reads the figures and :class:`Guard` makes the changes.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from guestagent.errors import GuestAgentError, InputError, MissingInputError
from guestagent.hostfs import HostFS, parse_int
from guestagent.log import get_logger
from guestagent.units import KIB, MIB_KB

if TYPE_CHECKING:
    from guestagent.balloon.signals import XenstoreReader

OVERCOMMIT_MEMORY = "/proc/sys/vm/overcommit_memory"
OVERCOMMIT_RATIO = "/proc/sys/vm/overcommit_ratio"
OVERCOMMIT_KBYTES = "/proc/sys/vm/overcommit_kbytes"
OSRELEASE = "/proc/sys/kernel/osrelease"
SWAPS = "/proc/swaps"
MEMINFO = "/proc/meminfo"
ZRAM_CONTROL = "/sys/class/zram-control"
ZRAM_MODULE = "/sys/module/zram"
SYS_BLOCK = "/sys/block"

#: CommitLimit kept above Committed_AS under overcommit mode 2 (strict): what a program may still
#: commit without a grow. 128 MiB, the pressure policy's headroom.
COMMIT_MARGIN_KB = 128 * MIB_KB

#: Priority of the guard's zram swap: above any disk swap (the kernel numbers those from -2 down)
#: and what systemd's zram-generator uses.
ZRAM_SWAP_PRIORITY = 100

#: Smallest zram device worth creating.
MIN_ZRAM_KB = 16 * MIB_KB

#: Highest zram device number accepted from a record.
MAX_ZRAM_ID = 1023

GUARD_KEY = "guard"
_ZRAM_NAME = re.compile(r"^zram(\d{1,4})$")
_ZRAM_DEV = re.compile(r"^/dev/zram(\d{1,4})$")


# --------------------------------------------------------------------------------------------
# Pure decisions


def overcommit_change(mode: int) -> int | None:
    """The overcommit mode to set while ballooned, or None to leave it.

    Mode 0's heuristic refuses one request larger than RAM + swap now; ballooning lowers RAM, so
    it refuses what would fit under the ceiling: mode 1 while ballooned. Mode 1 already admits
    everything. Mode 2 is an administrator's explicit choice of strict accounting: never
    changed (the target is floored instead, :func:`strict_commit_floor_kb`).
    """
    return 1 if mode == 0 else None


def strict_commit_floor_kb(
    current_kb: int,
    commit_limit_kb: int,
    committed_as_kb: int,
    overcommit_ratio: int,
    overcommit_kbytes: int,
    margin_kb: int = COMMIT_MARGIN_KB,
) -> int | None:
    """Under overcommit mode 2, the lowest balloon target (driver units) that keeps
    CommitLimit >= Committed_AS + margin; None when CommitLimit does not depend on RAM.

    CommitLimit = (MemTotal - hugetlb) * overcommit_ratio / 100 + SwapTotal, unless
    ``overcommit_kbytes`` is set (then it is that number plus swap, whatever the RAM). Each KiB
    the balloon takes out lowers MemTotal by a KiB, so CommitLimit by ratio/100 KiB. Rounded so
    the floor is never too low: when the spare commit is already under the margin the floor is
    above the current size (a grow).
    """
    if overcommit_kbytes > 0 or overcommit_ratio <= 0:
        return None
    spare_kb = commit_limit_kb - committed_as_kb - margin_kb
    # floor division rounds the allowed shrink down and a needed grow up
    return current_kb - (spare_kb * 100) // overcommit_ratio


@dataclass(frozen=True)
class CommitFigures:
    """What :func:`strict_commit_floor_kb` needs, read under overcommit mode 2 (KiB, percent)."""

    commit_limit_kb: int
    committed_as_kb: int
    overcommit_ratio: int
    overcommit_kbytes: int


def commit_floor_kb(figures: CommitFigures | None, current_kb: int) -> int | None:
    """The strict-commit floor for the driver holding ``current_kb``; None without figures
    (any mode but 2) or when CommitLimit does not depend on RAM."""
    if figures is None:
        return None
    return strict_commit_floor_kb(current_kb, figures.commit_limit_kb, figures.committed_as_kb,
                                  figures.overcommit_ratio, figures.overcommit_kbytes)


def read_commit(hostfs: HostFS) -> CommitFigures | None:
    """The commit figures under overcommit mode 2 (``vm.overcommit_memory``, read each time: the
    guard never changes mode 2); None in any other mode or when the mode cannot be read (the
    guard's arm logs that). Figures that cannot be read are one warning and None (no floor)."""
    try:
        mode = hostfs.read_int(OVERCOMMIT_MEMORY, 0, 2)
    except InputError:
        return None
    if mode != 2:
        return None
    try:
        meminfo = hostfs.read_meminfo(MEMINFO)
        ratio = hostfs.read_int(OVERCOMMIT_RATIO, 0, 1 << 20)
        kbytes = (hostfs.read_int(OVERCOMMIT_KBYTES, 0)
                  if hostfs.exists(OVERCOMMIT_KBYTES) else 0)
    except InputError as e:
        get_logger("balloon").warning("guard_floor_unreadable", error=str(e))
        return None
    if "CommitLimit" not in meminfo or "Committed_AS" not in meminfo:
        return None
    return CommitFigures(meminfo["CommitLimit"] // KIB, meminfo["Committed_AS"] // KIB,
                         ratio, kbytes)


def zram_disksize_kb(ceiling_kb: int, floor_kb: int) -> int:
    """The zram swap's size: what may be ballooned out (ceiling - floor), in whole MiB.

    zram's disksize is the uncompressed capacity; it costs memory only for what is stored.
    """
    return max(0, ceiling_kb - floor_kb) // MIB_KB * MIB_KB


@dataclass(frozen=True)
class SwapEntry:
    path: str
    kind: str
    size_kb: int
    used_kb: int
    priority: int


def parse_swaps(text: str, source: str = SWAPS) -> list[SwapEntry]:
    """``/proc/swaps``: a header line, then ``path type size used priority`` per swap."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Filename"):
        raise InputError(source, "expected the Filename header", text[:60])
    out = []
    for line in lines[1:]:
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise InputError(source, "expected 5 fields", line)
        size, used, prio = (parse_int(f, source) for f in fields[2:5])
        out.append(SwapEntry(fields[0], fields[1], size, used, prio))
    return out


def zram_swaps(swaps: list[SwapEntry]) -> dict[int, SwapEntry]:
    """The zram devices swapped on, by device number.

    Matched on the device's name, not its whole path: /proc/swaps prints the path as the process
    that ran swapon opened it, relative to the reader's root. The unit's privileged
    ``ExecStartPre`` runs in the unit's own mount namespace (``PrivateTmp=``), which ends with
    it, so its swap shows as ``/zram0``, not ``/dev/zram0`` (seen on the testbed). A swap file
    (type ``file``) is never taken for a device."""
    out = {}
    for swap in swaps:
        m = _ZRAM_NAME.match(swap.path.rsplit("/", 1)[-1])
        if m is not None and swap.kind == "partition":
            out[int(m.group(1))] = swap
    return out


def next_zram_device(present: set[int]) -> int:
    """The number the kernel gives the next ``hot_add``: the lowest free one (zram_add() takes
    ``idr_alloc(&zram_index_idr, zram, 0, 0, ...)``, the lowest unused id from 0)."""
    return next((n for n in range(MAX_ZRAM_ID + 1) if n not in present), MAX_ZRAM_ID)


def unrecorded_device(had: set[int], expected: int, present: set[int]) -> tuple[int | None, str]:
    """Which zram device is the guard's when a kill fell between its ``zram_device`` entry
    (written with the devices present before, ``had``, and the number the kernel would give,
    ``expected``) and the save of the number ``hot_add`` answered; None and why when none is.

    Only when exactly one device appeared since and it is the expected number: it is the one
    the guard's ``hot_add`` made (or, if the kill fell before the read, one another program
    added after it, at the same number: indistinguishable, and the caller removes it only while
    it is idle, disksize 0). Any other change (two new devices, a different number) may hold
    another program's device: none is taken."""
    new = present - had
    if not new:
        return None, "no zram device was added"
    if new == {expected}:
        return expected, ""
    return None, (f"devices added since: {', '.join(f'zram{n}' for n in sorted(new))}; "
                  f"only zram{expected} alone would be the guard's")


def selected_compressor(text: str) -> str | None:
    """The bracketed name in ``comp_algorithm`` (``lzo [lzo-rle] lz4``), None if none is."""
    m = re.search(r"\[([A-Za-z0-9_-]{1,32})\]", text)
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------
# The commands the guard runs (the only part a fixture tree cannot show)


class GuardCommands(Protocol):
    def modprobe(self, module: str, *params: str) -> None: ...
    def modprobe_remove(self, module: str) -> None: ...
    def mkswap(self, device: str) -> None: ...
    def swapon(self, device: str, priority: int) -> None: ...
    def swapoff(self, device: str) -> None: ...


class CommandDenied(GuestAgentError):
    """A command refused for lack of privilege (EPERM or EACCES): the daemon's sandbox."""


#: What util-linux and kmod print (in the C locale) when the kernel says EPERM or EACCES:
#: strerror's texts, and swapoff's own words for EPERM ("swapoff: Not superuser.", exit 1).
_DENIED_TEXT = ("Operation not permitted", "Permission denied", "Not superuser")


def denied_output(text: str) -> bool:
    """True when a failed command's output says the kernel refused it for lack of privilege."""
    return any(d in text for d in _DENIED_TEXT)


def denied(error: BaseException) -> bool:
    """True when ``error`` is a refusal for lack of privilege (a sandbox), not a failure:
    :class:`CommandDenied`, or an OSError with EPERM, EACCES or EROFS (a read-only /sys)."""
    if isinstance(error, CommandDenied):
        return True
    return isinstance(error, OSError) and error.errno in (errno.EPERM, errno.EACCES, errno.EROFS)


class SystemCommands:
    """modprobe, mkswap, swapon and swapoff from the system (kmod, util-linux)."""

    def _run(self, argv: list[str]) -> None:
        import shutil
        import subprocess

        exe = shutil.which(argv[0], path="/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin")
        if exe is None:
            raise GuestAgentError(f"{argv[0]}: not installed")
        env = {**os.environ, "LC_ALL": "C"}  # strerror's texts in English (denied_output)
        try:
            proc = subprocess.run(
                [exe, *argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, timeout=120, check=False, env=env,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise GuestAgentError(f"{' '.join(argv)}: {e}") from None
        if proc.returncode != 0:
            text = proc.stdout.decode("utf-8", "replace").strip()
            out = text.splitlines()
            message = f"{' '.join(argv)}: exit {proc.returncode}: {out[-1] if out else ''}"
            if denied_output(text):
                raise CommandDenied(message)
            raise GuestAgentError(message)

    def modprobe(self, module: str, *params: str) -> None:
        self._run(["modprobe", "-q", module, *params])

    def modprobe_remove(self, module: str) -> None:
        self._run(["modprobe", "-r", "-q", module])

    def mkswap(self, device: str) -> None:
        self._run(["mkswap", "-L", "guestagent-guard", device])

    def swapon(self, device: str, priority: int) -> None:
        self._run(["swapon", "-p", str(priority), device])

    def swapoff(self, device: str) -> None:
        self._run(["swapoff", device])


# --------------------------------------------------------------------------------------------
# The record


class RecordStore(Protocol):
    """What the guard needs of the balloon actuator's record file."""

    def load_record(self) -> dict[str, Any]: ...
    def save_record(self, record: dict[str, Any]) -> None: ...


def valid_change(entry: Any) -> dict[str, Any]:
    """One recorded change, checked on its own: a bad one raises InputError (and is skipped)."""
    if not isinstance(entry, dict):
        raise InputError("guard change", "expected an object", entry)
    kind = entry.get("kind")
    if kind == "sysctl":
        if entry.get("path") != OVERCOMMIT_MEMORY:
            raise InputError("guard change path", "not a sysctl the guard writes",
                             entry.get("path"))
        prev = entry.get("previous")
        if not (isinstance(prev, str) and re.fullmatch(r"[0-2]", prev)):
            raise InputError("guard change previous", "expected 0, 1 or 2", prev)
    elif kind in ("zram_device", "swap"):
        dev = entry.get("device")
        if dev is not None and not _zram_number(dev):
            raise InputError("guard change device", f"expected 0..{MAX_ZRAM_ID}", dev)
        if kind == "swap" and dev is None:
            raise InputError("guard change device", "a swap needs its zram device", dev)
        if dev is None and "next" in entry:
            _valid_pending(entry)
    elif kind != "zram_module":
        raise InputError("guard change kind", "unknown", kind)
    return entry


def _zram_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ZRAM_ID


def _valid_pending(entry: dict[str, Any]) -> None:
    """A ``zram_device`` entry written before ``hot_add`` answered: ``next`` (the number the
    kernel would give) and ``had`` (the devices present before)."""
    if not _zram_number(entry["next"]):
        raise InputError("guard change next", f"expected 0..{MAX_ZRAM_ID}", entry["next"])
    had = entry.get("had")
    if not (isinstance(had, list) and len(had) <= MAX_ZRAM_ID + 1
            and all(_zram_number(n) for n in had)):
        raise InputError("guard change had", f"expected a list of 0..{MAX_ZRAM_ID}",
                         str(had)[:40])


def recorded_changes(record: dict[str, Any], log: Any) -> list[dict[str, Any]]:
    """The guard's changes in the record; each bad entry is logged and skipped."""
    raw = record.get(GUARD_KEY) or []
    if not isinstance(raw, list):
        log.warning("guard_record_bad", field=GUARD_KEY, value=str(raw)[:40], used="none")
        return []
    out = []
    for i, entry in enumerate(raw):
        try:
            out.append(valid_change(entry))
        except InputError as e:
            log.warning("guard_record_bad", index=i, error=str(e), action="skipped")
    return out


# --------------------------------------------------------------------------------------------
# The guard


class Guard:
    """Applies (``arm``) and undoes (:func:`undo`) the guard's changes. The floor under mode 2 is
    the balloon step's (:func:`commit_floor_kb` over :func:`read_commit`'s figures)."""

    def __init__(
        self, hostfs: HostFS, store: RecordStore, commands: GuardCommands | None = None
    ) -> None:
        self.hostfs = hostfs
        self.store = store
        #: None on a fixture tree without injected commands: zram is skipped (logged).
        self.commands = commands if commands is not None else (
            SystemCommands() if hostfs.is_real_host else None
        )
        self.log = get_logger("balloon")
        self.armed = False
        self.mode: int | None = None

    # -- the record ---------------------------------------------------------------------------

    def _changes(self) -> list[dict[str, Any]]:
        return recorded_changes(self.store.load_record(), self.log)

    def _save(self, changes: list[dict[str, Any]]) -> None:
        record = self.store.load_record()
        record[GUARD_KEY] = changes
        self.store.save_record(record)

    def _record(self, change: dict[str, Any]) -> list[dict[str, Any]]:
        changes = self._changes()
        changes.append(change)
        self._save(changes)
        return changes

    # -- arming -------------------------------------------------------------------------------

    def arm(self, ceiling_kb: int, floor_kb: int) -> None:
        """Make large allocations safe before the first shrink below the ceiling (idempotent;
        after a restart the recorded changes are adopted, never recorded twice)."""
        if self.armed:
            return
        try:
            self.mode = self.hostfs.read_int(OVERCOMMIT_MEMORY, 0, 2)
        except InputError as e:
            self.log.warning("guard_overcommit_unreadable", error=str(e))
            self.mode = None
        if self.mode is not None:
            self._arm_overcommit(self.mode)
        self._arm_zram(zram_disksize_kb(ceiling_kb, floor_kb))
        # Only now: a record that could not be read (InputError) leaves the guard unarmed, the
        # tick fails and no shrink happens without it.
        self.armed = True

    def _arm_overcommit(self, mode: int) -> None:
        recorded = [c for c in self._changes() if c["kind"] == "sysctl"]
        if recorded and mode != 0:
            # a previous run's change, still in force: its first ``previous`` is what undo
            # restores
            self.log.info("guard_adopted", what=OVERCOMMIT_MEMORY, value=mode,
                          previous=recorded[0]["previous"])
            return
        new = overcommit_change(mode)
        if new is None:
            why = "strict accounting kept; the target is floored" if mode == 2 else "already 1"
            self.log.info("guard_overcommit_kept", what=OVERCOMMIT_MEMORY, value=mode, note=why)
            return
        if not recorded:
            self._record({"kind": "sysctl", "path": OVERCOMMIT_MEMORY, "previous": str(mode)})
        self.log.info("guard_set", what=OVERCOMMIT_MEMORY, previous=mode, value=new,
                      reason="heuristic overcommit checks RAM+swap now, which ballooning lowers")
        try:
            self.hostfs.write_text(OVERCOMMIT_MEMORY, f"{new}\n")
        except OSError as e:
            self.log.warning("guard_set_failed", what=OVERCOMMIT_MEMORY, error=str(e))
            self._forget(lambda c: c["kind"] == "sysctl")

    def _forget(self, match: Any) -> None:
        self._save([c for c in self._changes() if not match(c)])

    # -- zram ---------------------------------------------------------------------------------

    def zram_unavailable(self) -> str | None:
        """Why the guard cannot have a zram swap here (None: it can, maybe after a modprobe)."""
        if self.commands is None:
            return "not the real host root (no commands on a fixture tree)"
        if self.hostfs.exists(ZRAM_CONTROL):
            if not os.access(self.hostfs.path(f"{ZRAM_CONTROL}/hot_remove"), os.W_OK):
                return f"{ZRAM_CONTROL} is read-only here (a sandbox?)"
            return None
        return self._zram_not_loadable()

    def _zram_not_loadable(self) -> str | None:
        """None when ``modprobe zram`` can work: the module is in this kernel's modules.dep."""
        try:
            release = self.hostfs.read_text(OSRELEASE).strip()
        except InputError as e:
            return f"kernel release unknown: {e}"
        if not re.fullmatch(r"[A-Za-z0-9._+~-]{1,64}", release):
            return f"kernel release unusable: {release[:40]!r}"
        try:
            text = self.hostfs.read_text(f"/lib/modules/{release}/modules.dep")
        except MissingInputError:
            return f"the kernel has no zram (not loaded, no /lib/modules/{release}/modules.dep)"
        except InputError as e:
            return f"modules cannot be loaded here ({e}; a sandbox's ProtectKernelModules?)"
        if re.search(r"(^|/)zram\.ko(\.[a-z]+)?:", text, re.M):
            return None
        return "the kernel has no zram (not loaded, not built in, no zram module)"

    def foreign_zram(self, own: set[int]) -> str | None:
        """A zram device in use that the guard did not create (then it adds none), or None."""
        try:
            names = self.hostfs.listdir(SYS_BLOCK)
        except InputError:
            names = []
        for name in names:
            m = _ZRAM_NAME.match(name)
            if m is None or int(m.group(1)) in own:
                continue
            try:
                size = self.hostfs.read_int(f"{SYS_BLOCK}/{name}/disksize", 0)
            except InputError:
                continue
            if size > 0:
                return f"/dev/{name} (disksize {size})"
        return None

    def _active_swaps(self) -> list[SwapEntry]:
        try:
            return parse_swaps(self.hostfs.read_text(SWAPS))
        except InputError as e:
            self.log.warning("guard_swaps_unreadable", error=str(e))
            return []

    def prepare_zram(self, ceiling_kb: int, floor_kb: int) -> bool:
        """The zram half of :meth:`arm` alone, never the overcommit sysctl (that stays the
        daemon's, set before its first shrink): ``guestagent balloon --prepare-guard``, run by
        the unit outside the daemon's sandbox. True when the guard's zram swap is on after it
        (made now or adopted); otherwise one line said why."""
        return self._arm_zram(zram_disksize_kb(ceiling_kb, floor_kb))

    def _arm_zram(self, size_kb: int) -> bool:
        changes = self._changes()
        active = zram_swaps(self._active_swaps())
        swaps = [c for c in changes if c["kind"] == "swap"]
        if swaps and all(c["device"] in active for c in swaps):
            # made by a previous run, or by the unit's ExecStartPre (balloon --prepare-guard)
            device = swaps[0]["device"]
            swap = active[device]
            self.log.info("guard_adopted", what=f"/dev/zram{device}", size_kb=swap.size_kb,
                          priority=swap.priority, previous="no swap")
            return True
        if any(c["kind"] in ("swap", "zram_device") for c in changes):
            # A previous run's device that is no longer swapped on: remove it, then start again.
            undo_zram(self.hostfs, self.store, self.commands, self.log)
        why = self._zram_skip_reason(size_kb)
        if why is not None:
            self.log.warning("guard_zram_unavailable", reason=why, fallback="overcommit only")
            return False
        try:
            self._make_zram(size_kb)
        except (GuestAgentError, OSError) as e:
            self.log.warning("guard_zram_failed", error=str(e), fallback="overcommit only")
            undo_zram(self.hostfs, self.store, self.commands, self.log)
            return False
        return True

    def _zram_skip_reason(self, size_kb: int) -> str | None:
        why = self.zram_unavailable()
        if why is not None:
            return why
        foreign = self.foreign_zram(set())
        if foreign is not None:
            return f"a zram device is in use by someone else: {foreign}"
        if size_kb < MIN_ZRAM_KB:
            return f"nothing to balloon out ({size_kb} KiB)"
        return None

    def _make_zram(self, size_kb: int) -> None:
        assert self.commands is not None
        if not self.hostfs.exists(ZRAM_CONTROL):
            self._record({"kind": "zram_module", "previous": "not loaded"})
            self.log.info("guard_set", what="module zram", previous="not loaded",
                          value="loaded (num_devices=0)")
            self.commands.modprobe("zram", "num_devices=0")
            if not self.hostfs.exists(ZRAM_CONTROL):
                raise GuestAgentError(f"modprobe zram: {ZRAM_CONTROL} did not appear")
        # Recorded before the read: what was there and the number the kernel will give, so a
        # kill before the number is saved still lets the undo find the guard's device, and only
        # it (:func:`unrecorded_device`).
        had = _zram_devices(self.hostfs)
        changes = self._record({"kind": "zram_device", "device": None,
                                "next": next_zram_device(had), "had": sorted(had)})
        device = self.hostfs.read_int(f"{ZRAM_CONTROL}/hot_add", 0, MAX_ZRAM_ID)
        changes[-1]["device"] = device
        self._save(changes)
        block = f"{SYS_BLOCK}/zram{device}"
        try:
            comp = selected_compressor(self.hostfs.read_text(f"{block}/comp_algorithm"))
        except InputError:
            comp = None
        self.log.info("guard_set", what=f"/dev/zram{device}", previous="absent",
                      value=f"disksize {size_kb} KiB", compressor=comp)
        self.hostfs.write_text(f"{block}/disksize", f"{size_kb * KIB}\n")
        dev = f"/dev/zram{device}"
        self.commands.mkswap(dev)
        self._record({"kind": "swap", "device": device})
        self.log.info("guard_set", what=f"swap {dev}", previous="off",
                      value=f"on, priority {ZRAM_SWAP_PRIORITY}")
        self.commands.swapon(dev, ZRAM_SWAP_PRIORITY)


# --------------------------------------------------------------------------------------------
# Undo (no configuration needed: only the record)


def _undo_step(log: Any, what: str, action: Any) -> bool:
    """Run one undo action; False (logged, the change stays in the record) when it failed.

    A refusal for lack of privilege (:func:`denied`: the daemon's sandbox forbids swapoff,
    writes to /sys and module unloading) is no failure: one info line, and the unit's
    privileged ``ExecStopPost`` (``guestagent balloon --reset``) undoes it from the record."""
    try:
        action()
    except (GuestAgentError, OSError) as e:
        if denied(e):
            log.info("guard_undo_left", what=what, error=str(e),
                     note="left for ExecStopPost (guestagent balloon --reset, privileged)")
        else:
            log.error("guard_undo_failed", what=what, error=str(e), kept="in the record, for "
                      "the next guestagent balloon --reset")
        return False
    return True


def _zram_device_exists(hostfs: HostFS, device: int) -> bool:
    return hostfs.exists(f"{SYS_BLOCK}/zram{device}")


def _zram_devices(hostfs: HostFS) -> set[int]:
    """The zram devices present (``/sys/block/zram<N>``)."""
    try:
        names = hostfs.listdir(SYS_BLOCK)
    except InputError:
        return set()
    return {int(m.group(1)) for m in map(_ZRAM_NAME.match, names)
            if m is not None and int(m.group(1)) <= MAX_ZRAM_ID}


def _idle(hostfs: HostFS, device: int, active: set[int]) -> bool:
    """Never set up: disksize 0 and not swapped on (a device with a disksize 0 holds nothing)."""
    try:
        size = hostfs.read_int(f"{SYS_BLOCK}/zram{device}/disksize", 0)
    except InputError:
        return False
    return size == 0 and device not in active


def _undo_unrecorded(
    hostfs: HostFS, change: dict[str, Any], active: set[int], log: Any
) -> bool:
    """The ``zram_device`` entry whose number ``hot_add`` never saved (a kill between the two):
    the device :func:`unrecorded_device` names is removed while idle; False when its removal
    failed (the entry is kept). Anything else is left as it is, with one line."""
    if "next" not in change:  # an earlier version's entry: nothing to tell the device by
        log.warning("guard_undo_unsure", what="zram device (hot_add's number never saved)",
                    action="none", reason="the entry has no devices-before list")
        return True
    device, why = unrecorded_device(set(change["had"]), change["next"], _zram_devices(hostfs))
    if device is None:
        if why != "no zram device was added":
            log.warning("guard_undo_unsure", what="zram device (hot_add's number never saved)",
                        action="none: every zram device left as it is", reason=why)
        return True
    what = f"/dev/zram{device}"
    if not _idle(hostfs, device, active):
        log.warning("guard_undo_unsure", what=what, action="left as it is",
                    reason="set up (disksize or swap): not the guard's empty device")
        return True
    if not _undo_step(log, what, lambda: _remove_device(hostfs, device)):
        return False
    log.info("guard_undone", what=what, restored="absent",
             note="hot_add's number was never saved (a kill): the one device added since, idle")
    return True


def _remove_device(hostfs: HostFS, device: int) -> None:
    hostfs.write_text(f"{SYS_BLOCK}/zram{device}/reset", "1\n")
    hostfs.write_text(f"{ZRAM_CONTROL}/hot_remove", f"{device}\n")


ZRAM_KINDS = ("swap", "zram_device", "zram_module")


@dataclass
class _UndoRun:
    """What one undo pass works with: the host, the commands, the zram swaps active when it
    began, and the changes kept so far (their undo failed, or waits on one that failed)."""

    hostfs: HostFS
    commands: GuardCommands | None
    active: set[int]
    log: Any
    kept: list[dict[str, Any]]


def _undo_swap(run: _UndoRun, change: dict[str, Any]) -> bool:
    """swapoff the guard's swap if it is still active; False when that failed."""
    commands = run.commands
    dev = f"/dev/zram{change['device']}"
    if change["device"] not in run.active:
        return True
    if commands is None or not _undo_step(run.log, f"swap {dev}",
                                          lambda: commands.swapoff(dev)):
        return False
    run.log.info("guard_undone", what=f"swap {dev}", restored="off")
    return True


def _undo_device(run: _UndoRun, change: dict[str, Any]) -> bool:
    """Reset and hot-remove the guard's zram device; False when it stays (its swap is still
    on, or the removal failed)."""
    device = change.get("device")
    if device is None:
        return _undo_unrecorded(run.hostfs, change, run.active, run.log)
    if not _zram_device_exists(run.hostfs, device):
        return True  # already gone: nothing of ours to remove
    busy = {c["device"] for c in run.kept if c["kind"] == "swap"}
    if device in busy or not _undo_step(
        run.log, f"/dev/zram{device}", lambda: _remove_device(run.hostfs, device)
    ):
        return False
    run.log.info("guard_undone", what=f"/dev/zram{device}", restored="absent")
    return True


def _undo_module(run: _UndoRun) -> bool:
    """Unload zram (the guard loaded it); False while any of the guard's zram stays."""
    commands = run.commands
    zram_kept = any(c["kind"] in ZRAM_KINDS for c in run.kept)
    if not zram_kept and not run.hostfs.exists(ZRAM_MODULE):
        # never loaded (a crash before the modprobe) or unloaded already (a crash before
        # the record was saved): ``modprobe -r`` would fail on it (kmod exits 1)
        run.log.info("guard_undone", what="module zram", restored="not loaded", note="already")
        return True
    if zram_kept or commands is None or not _undo_step(
        run.log, "module zram", lambda: commands.modprobe_remove("zram")
    ):
        return False
    run.log.info("guard_undone", what="module zram", restored="not loaded")
    return True


def _undo_sysctl(run: _UndoRun, change: dict[str, Any]) -> bool:
    previous = change["previous"]
    if not _undo_step(run.log, OVERCOMMIT_MEMORY,
                      lambda: run.hostfs.write_text(OVERCOMMIT_MEMORY, f"{previous}\n")):
        return False
    run.log.info("guard_undone", what=OVERCOMMIT_MEMORY, restored=previous)
    return True


def _undo_change(run: _UndoRun, change: dict[str, Any]) -> bool:
    kind = change["kind"]
    if kind == "swap":
        return _undo_swap(run, change)
    if kind == "zram_device":
        return _undo_device(run, change)
    if kind == "zram_module":
        return _undo_module(run)
    return _undo_sysctl(run, change)


def undo_newest_first(
    hostfs: HostFS, changes: list[dict[str, Any]], commands: GuardCommands | None, log: Any
) -> list[dict[str, Any]]:
    """Undo ``changes`` (in the order they were recorded) newest first; returns the ones kept,
    in their recorded order, so the next undo takes them newest first again.

    The record's ``guard`` list is the journal's entries in the order they were first recorded
    (:func:`guestagent.balloon.journal.view`), so its reverse is
    :meth:`guestagent.undo.Journal.newest_first`. The guard records a zram swap after its
    device and the device after the module, so newest first is also the order each needs: a
    device is not removed while its swap stays on, the module not unloaded while any of the
    guard's zram stays."""
    run = _UndoRun(hostfs, commands, set(), log, [])
    if any(c["kind"] in ZRAM_KINDS for c in changes):
        run.active = set(zram_swaps(_swaps_or_empty(hostfs, log)))
    for change in reversed(changes):
        if not _undo_change(run, change):
            run.kept.append(change)
    return run.kept[::-1]


def undo_zram(
    hostfs: HostFS, store: RecordStore, commands: GuardCommands | None, log: Any
) -> None:
    """swapoff the guard's zram swap, reset and remove its device, unload the module if the
    guard loaded it, newest first; the sysctl is left. Entries whose undo failed stay in the
    record."""
    changes = recorded_changes(store.load_record(), log)
    zram = [c for c in changes if c["kind"] in ZRAM_KINDS]
    kept = {id(c) for c in undo_newest_first(hostfs, zram, commands, log)}
    record = store.load_record()
    record[GUARD_KEY] = [c for c in changes if c["kind"] not in ZRAM_KINDS or id(c) in kept]
    store.save_record(record)


def _swaps_or_empty(hostfs: HostFS, log: Any) -> list[SwapEntry]:
    try:
        return parse_swaps(hostfs.read_text(SWAPS))
    except MissingInputError:
        return []
    except InputError as e:
        log.warning("guard_swaps_unreadable", error=str(e))
        return []


def has_changes(store: RecordStore) -> bool:
    """True when the record holds guard changes (a damaged record counts as none)."""
    try:
        return bool(store.load_record().get(GUARD_KEY))
    except InputError:
        return False


def undo(hostfs: HostFS, store: RecordStore, commands: GuardCommands | None = None) -> int:
    """Undo every recorded guard change, newest first (issue 14): the reverse of the order the
    journal recorded them in (:func:`undo_newest_first`). When the daemon made everything, that
    is the zram swap, device and module, then the sysctl; when the unit's ``balloon
    --prepare-guard`` made the zram swap before the daemon set the sysctl, the sysctl goes back
    first. Returns how many changes are still in the record (0 when everything was undone).

    The balloon target must already be back at the ceiling, with the memory populated, before
    this runs (:func:`reset_all` does that first, whatever the order here): a swapoff pages
    what the zram swap holds back into RAM, and the ballooned-out memory is where it goes."""
    if not has_changes(store):
        return 0
    log = get_logger("balloon")
    if commands is None and hostfs.is_real_host:
        commands = SystemCommands()
    left = undo_newest_first(hostfs, recorded_changes(store.load_record(), log), commands, log)
    record = store.load_record()
    if left:
        record[GUARD_KEY] = left
    else:
        record.pop(GUARD_KEY, None)
    store.save_record(record)
    return len(left)


#: How long a reset waits for the driver to hold the ceiling again before the swapoff (the
#: unit's TimeoutStopSec=30s bounds the whole ExecStopPost).
RESET_WAIT_S = 20.0


def reset_all(
    actuator: Any, commands: GuardCommands | None = None, wait_s: float = RESET_WAIT_S
) -> int | None:
    """The whole undo, in order: the balloon target back to the ceiling, wait (bounded) until
    the driver holds the memory, then the guard's changes newest first (:func:`undo`). The
    target goes back before the guard whatever the guard's order: the swapoff needs the memory
    back.

    Returns the target written (None if the target could not be reset; the guard's changes are
    undone all the same and the error is raised after)."""
    target: int | None = None
    error: InputError | None = None
    try:
        target = actuator.reset()
    except InputError as e:
        error = e
    if has_changes(actuator):
        if target is not None:
            current = actuator.wait_populated(target, wait_s)
            actuator.log.info("guard_undo_start", target_kb=target, current_kb=current,
                              waited_max_s=wait_s)
        undo(actuator.hostfs, actuator, commands)
    if error is not None:
        raise error
    return target


# --------------------------------------------------------------------------------------------
# Before the daemon: the unit's privileged ExecStartPre (guestagent balloon --prepare-guard)


def prepare(
    hostfs: HostFS,
    xenstore: XenstoreReader | None,
    section: dict[str, Any],
    commands: GuardCommands | None = None,
) -> bool:
    """Make the guard's zram swap for a validated ``[balloon]`` section, sized as the daemon
    will size it: ceiling - floor from :func:`guestagent.balloon.policy.limits` (the toolstack's
    memory/target and static-max, floor = max(floor_mb, max(256 MiB, static-max / 16))). The
    toolstack offset is the record's (0 before the daemon's first start: the device is then at
    most that offset, a few MiB, larger than the daemon's own would be; unused zram costs
    nothing). Never touches the overcommit sysctl. True when the guard's swap is on after it.

    Raises BalloonUnavailable without a balloon driver, InputError on bad input.
    """
    import time
    from dataclasses import replace

    from guestagent.balloon.actuator import BalloonActuator
    from guestagent.balloon.config import policy_config
    from guestagent.balloon.policy import PolicyState, limits
    from guestagent.balloon.signals import read_signals

    actuator = BalloonActuator(hostfs, xenstore)
    actuator.check()
    offset = actuator.checked_offset_kb(actuator.load_record())
    config = replace(policy_config(section), toolstack_offset_kb=offset)
    lim = limits(read_signals(hostfs, xenstore, time.monotonic()), PolicyState(), config)
    return Guard(hostfs, actuator, commands).prepare_zram(lim.ceiling_kb, lim.floor_kb)
