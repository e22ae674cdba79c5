"""What the appliers changed, recorded before each change, in memory and in a small JSON file.

The file (``/run/guestagent/devices.json`` below the HostFS root) lets ``guestagent devices
--reset`` undo everything after a crash. One record per changed host file, keyed by its path: the
first ``previous`` value is kept across re-applications, so undo always restores the state from
before guestagent touched it.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Literal

from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS

STATE_FILE = "/run/guestagent/devices.json"
STATE_VERSION = 1

ChangeKind = Literal["irq_affinity", "numa_node", "hugepages", "driver_rebind"]
_KINDS = ("irq_affinity", "numa_node", "hugepages", "driver_rebind")


_BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]")
#: The only files each kind of change writes: a state file naming anything else (``..``, another
#: file) is refused entry by entry, so an undo never writes outside them.
_PATHS = {
    "irq_affinity": re.compile(r"/proc/irq/[0-9]{1,6}/smp_affinity_list"),
    "numa_node": re.compile(rf"/sys/bus/pci/devices/{_BDF.pattern}/numa_node"),
    "hugepages": re.compile(
        r"/sys/devices/system/node/node[0-9]{1,4}/hugepages/hugepages-2048kB/nr_hugepages"),
    "driver_rebind": re.compile(rf"/sys/bus/pci/devices/{_BDF.pattern}"),
}
#: What each kind's ``previous`` value can be (what the undo writes back).
_PREVIOUS = {
    "irq_affinity": re.compile(r"[0-9][0-9,\-]{0,4095}"),
    "numa_node": re.compile(r"-?[0-9]{1,5}"),
    "hugepages": re.compile(r"[0-9]{1,12}"),
    "driver_rebind": re.compile(r"[A-Za-z0-9_.\-]{1,64}"),
}


@dataclass
class Change:
    """One host file guestagent wrote: what it held before and what guestagent left in it."""

    kind: ChangeKind
    #: The host path written (for a rebind: the device's sysfs directory).
    path: str
    #: The device this change was for ("" for a per-node change such as hugepages).
    bdf: str
    previous: str
    #: What reading the file back gave after the write ("" until the write succeeded).
    applied: str = ""

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Change:
        if not isinstance(data, dict):
            raise InputError(source, "a change must be an object", data)
        kind = data.get("kind")
        if kind not in _KINDS:
            raise InputError(source, "unknown change kind", kind)
        values: dict[str, str] = {}
        for key in ("path", "bdf", "previous", "applied"):
            value = data.get(key, "")
            if not isinstance(value, str):
                raise InputError(f"{source}.{key}", "expected a string", value)
            values[key] = value
        pattern = _PATHS[kind]
        if pattern.fullmatch(values["path"]) is None:
            raise InputError(f"{source}.path", f"not a file the devices job writes for {kind} "
                             f"(expected {pattern.pattern})", values["path"])
        if _PREVIOUS[kind].fullmatch(values["previous"]) is None:
            raise InputError(f"{source}.previous", f"not a {kind} value", values["previous"])
        if values["bdf"] and _BDF.fullmatch(values["bdf"]) is None:
            raise InputError(f"{source}.bdf", "not a PCI address", values["bdf"])
        return cls(
            kind=kind,
            path=values["path"],
            bdf=values["bdf"],
            previous=values["previous"],
            applied=values["applied"],
        )


class StateStore:
    """The changes in force, mirrored to the state file on every update."""

    def __init__(self, hostfs: HostFS, path: str = STATE_FILE) -> None:
        self.hostfs = hostfs
        self.path = path
        self.changes: dict[str, Change] = {}
        #: One line per entry of the file that was refused (and skipped) by :meth:`load`.
        self.problems: list[str] = []

    def load(self) -> StateStore:
        """Read the file; an absent file is an empty state, a garbage one raises InputError.

        Each entry is checked on its own: a malformed one is skipped (one line in
        ``problems``) and the others are kept, so one bad entry never blocks the undo of the
        rest."""
        try:
            text = self.hostfs.read_text(self.path)
        except MissingInputError:
            self.changes = {}
            return self
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(self.path, f"not JSON: {e}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise InputError(
                self.path, f"expected a version {STATE_VERSION} state object", text[:60]
            )
        raw = data.get("changes", [])
        if not isinstance(raw, list):
            raise InputError(f"{self.path} changes", "expected a list", raw)
        changes: dict[str, Change] = {}
        problems: list[str] = []
        for i, item in enumerate(raw):
            try:
                change = Change.from_dict(item, f"{self.path} changes[{i}]")
            except InputError as e:
                problems.append(str(e))
                continue
            changes[change.path] = change
        self.changes = changes
        self.problems = problems
        return self

    def get(self, path: str) -> Change | None:
        return self.changes.get(path)

    def record(self, change: Change) -> Change:
        """Remember a change before it is made; an existing record keeps its first ``previous``."""
        existing = self.changes.get(change.path)
        if existing is not None:
            return existing
        self.changes[change.path] = change
        self.save()
        return change

    def set_applied(self, path: str, applied: str) -> None:
        change = self.changes.get(path)
        if change is not None:
            change.applied = applied
            self.save()

    def forget(self, path: str) -> None:
        if self.changes.pop(path, None) is not None:
            self.save()

    def for_device(self, bdf: str) -> list[Change]:
        return [c for c in self.changes.values() if c.bdf == bdf]

    def save(self) -> None:
        """Write atomically (temporary file + rename); an empty state removes the file."""
        target = self.hostfs.path(self.path)
        if not self.changes:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        payload = {"version": STATE_VERSION, "changes": [asdict(c) for c in self.changes.values()]}
        fd, tmp = tempfile.mkstemp(prefix=".devices.", dir=str(target.parent))
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
