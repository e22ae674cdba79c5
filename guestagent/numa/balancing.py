"""``[numa] balancing = "auto"``: automatic NUMA balancing turned on, journalled, and put back.

The only host change the numa job makes. Before it writes ``/proc/sys/kernel/numa_balancing`` it
records, in the undo journal (:mod:`guestagent.undo`; ``numa.json`` in the state directory), one
``numa_balancing`` entry: ``previous`` the value it found (0), ``applied`` the value it writes (1).

:func:`undo_balancing` (the job's stop, its next start after a crash, and :func:`reset_numa` for
``guestagent reset``) puts ``previous`` back only while the sysctl still holds ``applied``: a
value someone else wrote since is theirs and is left alone. Each step is one ``event=undone``
line (``component=journal owner=numa``), a failure one ``event=undo_failed`` line at error level,
and a failed step keeps the entry so that the next reset tries again.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import re
from typing import Any

from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger
from guestagent.numa.figures import BALANCING_SYSCTL
from guestagent.undo import Change, Journal, KindRule, UndoReport

JOURNAL_FILE = "numa.json"
KIND = "numa_balancing"

KINDS = {
    KIND: KindRule(re.compile(re.escape(BALANCING_SYSCTL)), re.compile("[0-3]"),
                   re.compile("[0-3]")),
}


def journal_path(state_dir: str) -> str:
    """The numa journal's host path in ``state_dir`` (``[agent] state_dir``)."""
    return f"{state_dir.rstrip('/')}/{JOURNAL_FILE}"


class NumaJournal(Journal):
    """The numa job's entries (module docstring)."""

    def __init__(self, hostfs: HostFS, path: str) -> None:
        super().__init__(hostfs, path, "numa", KINDS)

    def load(self) -> NumaJournal:
        super().load()
        return self


def turn_on(hostfs: HostFS, journal: Journal, previous: int, value: int) -> None:
    """Journal, then write ``value``. Raises GuestAgentError (or OSError) when the write fails;
    the entry then stays and the undo finds the sysctl at ``previous``, which is a no-op."""
    journal.record(Change(KIND, BALANCING_SYSCTL, "", str(previous), str(value)))
    hostfs.write_text(BALANCING_SYSCTL, f"{value}\n")


def _report() -> UndoReport:
    return UndoReport()


def undo_balancing(hostfs: HostFS, journal: Journal) -> UndoReport:
    """Put ``numa_balancing`` back from the journal (module docstring), its entries newest
    first (one today: the sysctl is one object and its entry keeps the first ``previous``); an
    entry goes when its step succeeded."""
    report = _report()
    log: Any = get_logger("journal").bind(owner="numa", journal=journal.path)
    for problem in journal.problems:
        report.lines.append(f"journal entry malformed, skipped: {problem}")
        log.warning("undo_entry_skipped", error=problem)
    journal.problems = []
    for change in journal.newest_first():
        _undo_one(hostfs, journal, change, report, log)
    return report


def _undo_one(hostfs: HostFS, journal: Journal, change: Change, report: UndoReport,
              log: Any) -> None:
    """One entry: ``previous`` back while the sysctl still holds ``applied``."""
    what = "numa_balancing"
    try:
        now = str(hostfs.read_int(change.path, minimum=0, maximum=3))
        if now == change.previous:
            result = f"already {now} as before the agent"
        elif now != change.applied:
            result = (f"{now}, not the {change.applied} the agent set: changed by someone else "
                      "since, left alone")
        else:
            hostfs.write_text(change.path, f"{change.previous}\n")
            result = f"{now} -> {change.previous}"
        journal.forget(change.path)
    except (GuestAgentError, OSError) as e:
        report.lines.append(f"{what}: {e}")
        report.failures += 1
        log.error("undo_failed", what=what, error=f"{what}: {e}")
        return
    report.lines.append(f"{what}: {result}")
    log.info("undone", what=what, result=result)


def reset_numa(hostfs: HostFS, state_dir: str) -> UndoReport:
    """What ``guestagent reset`` runs for the numa job: undo from ``numa.json`` in ``state_dir``
    alone (no configuration), under the caller's state lock. A journal that cannot be read at
    all raises InputError."""
    return undo_balancing(hostfs, NumaJournal(hostfs, journal_path(state_dir)).load())
