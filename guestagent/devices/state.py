"""What the appliers changed, recorded before each change, in memory and in a small JSON file.

The file (``/run/guestagent/devices.json`` below the HostFS root) lets ``guestagent devices
--reset`` undo everything after a crash. One record per changed host file, keyed by its path: the
first ``previous`` value is kept across re-applications, so undo always restores the state from
before guestagent touched it. The journal itself (format, per-entry checks, atomic writes) is the
shared one of :mod:`guestagent.undo`; this module declares the devices job's kinds of change.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import re
from typing import Literal

from guestagent.hostfs import HostFS
from guestagent.undo import BDF, JOURNAL_VERSION, Change, Journal, KindRule

__all__ = ["KINDS", "STATE_FILE", "STATE_VERSION", "Change", "ChangeKind", "StateStore"]

STATE_FILE = "/run/guestagent/devices.json"
STATE_VERSION = JOURNAL_VERSION

ChangeKind = Literal["irq_affinity", "numa_node", "hugepages", "driver_rebind"]

#: The only files each kind of change writes (a state file naming anything else, ``..`` or another
#: file, is refused entry by entry, so an undo never writes outside them) and what each kind's
#: ``previous`` value can be (what the undo writes back).
KINDS = {
    "irq_affinity": KindRule(
        re.compile(r"/proc/irq/[0-9]{1,6}/smp_affinity_list"),
        re.compile(r"[0-9][0-9,\-]{0,4095}"),
    ),
    "numa_node": KindRule(
        re.compile(rf"/sys/bus/pci/devices/{BDF.pattern}/numa_node"),
        re.compile(r"-?[0-9]{1,5}"),
    ),
    "hugepages": KindRule(
        re.compile(
            r"/sys/devices/system/node/node[0-9]{1,4}/hugepages/hugepages-2048kB/nr_hugepages"),
        re.compile(r"[0-9]{1,12}"),
    ),
    "driver_rebind": KindRule(
        re.compile(rf"/sys/bus/pci/devices/{BDF.pattern}"),
        re.compile(r"[A-Za-z0-9_.\-]{1,64}"),
    ),
}


class StateStore(Journal):
    """The devices job's changes in force, mirrored to ``devices.json`` on every update."""

    def __init__(self, hostfs: HostFS, path: str = STATE_FILE) -> None:
        super().__init__(hostfs, path, "devices", KINDS)

    def load(self) -> StateStore:
        super().load()
        return self
