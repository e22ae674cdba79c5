"""The kdamonds the DAMON backend added, in the undo journal (:mod:`guestagent.undo`), and their
undo after a crash.

The file is ``tiering.json`` in the state directory (``/run/guestagent/tiering.json``). Before the
backend writes ``nr_kdamonds`` (so before any kdamond of its is configured or turned on) it
records, in one atomic write:

* ``damon_nr_kdamonds``: path ``.../kdamonds/nr_kdamonds``; ``previous`` the count before (the
  kdamonds of others, all off and empty: the backend adds its own only then); ``applied`` the
  count it is about to write (recorded before the write: a crash between the two is told apart by
  reading the count back);
* ``damon_kdamond``, one per kdamond it adds: path ``.../kdamonds/<K>``; ``previous`` ``off`` (a
  kdamond is created off and empty).

A clean stop removes the entries. After ``kill -9``, an OOM kill or a watchdog kill they stay, the
kdamonds keep migrating, and :func:`undo_kdamonds` (run by ``guestagent tiering --reset`` and by
the tiering job at the daemon's next start) removes exactly those kdamonds:

* ``nr_kdamonds`` back at ``previous``: they are gone already (undone before, or the crash came
  before the write): nothing to do;
* ``nr_kdamonds`` neither ``previous`` nor ``applied``: another DAMON user rewrote it since, and
  the kernel recreated every kdamond directory on that write: nothing of the agent's is left and
  nothing is touched;
* else, newest first (the reverse of the order they were recorded in), each recorded kdamond
  that still holds the agent's setup (one ``paddr`` context with one ``migrate_cold`` scheme,
  or, off, the part of it written before a crash cut the configuration short:
  :data:`UNFINISHED`) is turned off and emptied; one that holds anything else is another
  user's (it rewrote ``nr_kdamonds`` to the same count) and is left alone; then ``nr_kdamonds``
  goes back to ``previous`` when every kdamond is off and empty (the write recreates them all),
  else the agent's stay off and empty.

Kdamonds not in the journal are never written. A malformed entry is skipped with one line
(``event=undo_entry_skipped``) and the others are undone; each step is one ``event=undone`` line,
each failure one ``event=undo_failed`` line at error level, and a failed step keeps the entries so
that the next reset tries again (every step is idempotent).
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import re
from typing import Any

from guestagent.errors import GuestAgentError, MissingInputError
from guestagent.hostfs import HostFS, parse_int
from guestagent.log import get_logger
from guestagent.tiering.sysfs import Reader, Writer, sysfs_reader
from guestagent.undo import Change, Journal, KindRule, UndoReport

ADMIN = "/sys/kernel/mm/damon/admin"
KDAMONDS = f"{ADMIN}/kdamonds"
NR_KDAMONDS = f"{KDAMONDS}/nr_kdamonds"
JOURNAL_FILE = "tiering.json"

KINDS = {
    "damon_nr_kdamonds": KindRule(
        re.compile(re.escape(NR_KDAMONDS)), re.compile(r"[0-9]{1,4}"), re.compile(r"[0-9]{1,4}")
    ),
    "damon_kdamond": KindRule(
        re.compile(rf"{re.escape(KDAMONDS)}/[0-9]{{1,4}}"), re.compile("off"), re.compile("")
    ),
}

#: What a kdamond the agent added holds, off, when a crash cut its configuration short
#: (DamonBackend._configure writes ``nr_contexts`` 1, ``operations`` paddr, the attributes, one
#: target and its regions, ``nr_schemes`` 1, then the scheme's ``action`` migrate_cold): the
#: kernel's defaults of a new context (``vaddr``, no target, no scheme), ``paddr`` with or
#: without its target and no scheme yet, or one scheme still at the default action ``stat``.
#: As (operations, has targets, nr_schemes, action).
UNFINISHED = frozenset({
    ("vaddr", False, 0, "-"),
    ("paddr", False, 0, "-"),
    ("paddr", True, 0, "-"),
    ("paddr", True, 1, "stat"),
})


def journal_path(state_dir: str) -> str:
    """The tiering journal's host path in ``state_dir`` (``[agent] state_dir``)."""
    return f"{state_dir.rstrip('/')}/{JOURNAL_FILE}"


class TieringJournal(Journal):
    """The DAMON backend's entries (module docstring)."""

    def __init__(self, hostfs: HostFS, path: str) -> None:
        super().__init__(hostfs, path, "tiering", KINDS)

    def load(self) -> TieringJournal:
        super().load()
        return self


def added_entries(before: int, indices: list[int]) -> list[Change]:
    """What the backend records before it writes ``nr_kdamonds`` = ``before + len(indices)``."""
    count = Change("damon_nr_kdamonds", NR_KDAMONDS, "", str(before), str(before + len(indices)))
    return [count] + [Change("damon_kdamond", f"{KDAMONDS}/{i}", "", "off") for i in indices]


class _Undo:
    """One run of :func:`undo_kdamonds`."""

    def __init__(self, read: Reader, write: Writer, journal: Journal) -> None:
        self.read = read
        self.write = write
        self.journal = journal
        self.report = UndoReport()
        self.log: Any = get_logger("journal").bind(owner="tiering", journal=journal.path)

    def done(self, what: str, result: str) -> None:
        self.report.lines.append(f"{what}: {result}")
        self.log.info("undone", what=what, result=result)

    def failed(self, what: str, result: str) -> None:
        self.report.lines.append(f"{what}: {result}")
        self.report.failures += 1
        # The text as ``error``: the repeat filter tells errors apart by it (one line each).
        self.log.error("undo_failed", what=what, error=f"{what}: {result}")

    def word(self, path: str) -> str:
        return self.read(path).strip()

    def number(self, path: str) -> int:
        return parse_int(self.read(path), path, 0, 4096)

    def run(self) -> UndoReport:
        for problem in self.journal.problems:
            self.report.lines.append(f"journal entry malformed, skipped: {problem}")
            self.log.warning("undo_entry_skipped", error=problem)
        self.journal.problems = []
        if not self.journal.changes:
            return self.report
        count = self.journal.get(NR_KDAMONDS)
        # Newest first: the kdamonds in the reverse of their recording order, the count (recorded
        # before them) after them.
        ours = [int(c.path.rsplit("/", 1)[1]) for c in self.journal.newest_first("damon_kdamond")]
        try:
            nr = self.number(NR_KDAMONDS)
        except GuestAgentError as e:
            what = "kdamonds " + ",".join(map(str, sorted(ours)))
            self.failed(what, f"{NR_KDAMONDS} unreadable ({e}); left as they are")
            return self.report
        if count is not None and nr == int(count.previous):
            self.done("nr_kdamonds", f"already {nr} as before the agent: its kdamonds are gone")
        elif count is not None and nr != int(count.applied):
            self.done("nr_kdamonds", f"{nr}, not the {count.applied} the agent set: every "
                      "kdamond was recreated by another DAMON user since; none of the agent's "
                      "is left, nothing touched")
        else:
            for index in ours:
                self.kdamond(index, nr)
            if count is not None and not self.report.failures:
                self.shrink(nr, int(count.previous))
        if not self.report.failures:
            try:
                self.journal.forget_all(list(self.journal.changes))
            except OSError as e:
                self.failed("journal", f"{self.journal.path}: removing the entries failed: {e}")
        return self.report

    def kdamond(self, index: int, nr: int) -> None:
        what = f"kdamond {index}"
        kd = f"{KDAMONDS}/{index}"
        if index >= nr:
            self.done(what, "gone (nr_kdamonds is lower), nothing to undo")
            return
        try:
            state = self.word(f"{kd}/state")
            contexts = self.number(f"{kd}/contexts/nr_contexts")
            foreign = self.foreign_setup(kd, state) if contexts else None
        except GuestAgentError as e:
            self.failed(what, f"unreadable ({e}); left as it is")
            return
        if foreign is not None:
            self.done(what, f"holds another DAMON user's setup ({foreign}): left alone")
            return
        if state == "off" and not contexts:
            self.done(what, "already off and empty")
            return
        steps = []
        try:
            if state != "off":
                self.write(f"{kd}/state", "off")
                steps.append(f"turned off (was {state})")
            if contexts:
                self.write(f"{kd}/contexts/nr_contexts", "0")
                steps.append("emptied")
        except (GuestAgentError, OSError) as e:
            self.failed(what, f"{'; '.join([*steps, 'failed'])}: {e}")
            return
        self.done(what, " and ".join(steps) + " (the agent's migrate_cold kdamond)")

    def foreign_setup(self, kd: str, state: str) -> str | None:
        """None when the kdamond's context is the agent's: one ``paddr`` context with one
        ``migrate_cold`` scheme, or, while the kdamond is off, what the backend's configuration
        leaves when a crash cuts it short (:data:`UNFINISHED`); else what it holds instead."""
        ctx = f"{kd}/contexts/0"
        try:
            ops = self.word(f"{ctx}/operations")
            targets = self.number(f"{ctx}/targets/nr_targets")
            schemes = self.number(f"{ctx}/schemes/nr_schemes")
            action = self.word(f"{ctx}/schemes/0/action") if schemes == 1 else "-"
        except MissingInputError as e:
            return f"no {e.source.rsplit('/', 1)[-1]}"
        if (ops, schemes, action) == ("paddr", 1, "migrate_cold"):
            return None
        if state == "off" and (ops, targets > 0, schemes, action) in UNFINISHED:
            return None
        return f"operations {ops}, {schemes} schemes, action {action}"

    def shrink(self, nr: int, before: int) -> None:
        """``nr_kdamonds`` back to ``before`` when every kdamond is off and empty (the write
        recreates them all, so nothing of anybody's may be in any of them)."""
        try:
            busy = [i for i in range(nr)
                    if self.word(f"{KDAMONDS}/{i}/state") != "off"
                    or self.number(f"{KDAMONDS}/{i}/contexts/nr_contexts")]
        except GuestAgentError as e:
            self.failed("nr_kdamonds", f"kdamonds unreadable ({e}); left at {nr}")
            return
        if busy:
            self.done("nr_kdamonds", f"left at {nr}: kdamonds {busy} are in use; the agent's "
                      "stay off and empty")
            return
        try:
            self.write(NR_KDAMONDS, str(before))
        except (GuestAgentError, OSError) as e:
            self.failed("nr_kdamonds", f"writing {before} failed: {e}")
            return
        self.done("nr_kdamonds", f"{nr} -> {before} (the agent's kdamonds removed)")


def undo_kdamonds(
    hostfs: HostFS, write: Writer, journal: Journal, read: Reader | None = None
) -> UndoReport:
    """Remove the kdamonds the journal says the agent added (module docstring); the entries are
    removed when every step succeeded. Reads go through ``read`` (default: ``hostfs``, a passing
    EBUSY tried again)."""
    return _Undo(read or sysfs_reader(hostfs), write, journal).run()
