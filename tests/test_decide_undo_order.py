"""Every owner undoes its journal newest first: the reverse of the order its changes were
recorded in (issue 14: one undo journal, undone newest first). The devices job's own order is
tested in tests/test_devices_execute.py; here the journal itself, tiering's kdamonds, the numa
job's sysctl and the balloon's reset."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from guestagent import log
from guestagent.balloon.actuator import BalloonActuator
from guestagent.balloon.commands import reset_balloon
from guestagent.balloon.controller import BalloonController
from guestagent.balloon.guard import OVERCOMMIT_MEMORY
from guestagent.balloon.journal import BalloonJournal
from guestagent.balloon.policy import ClassicConfig
from guestagent.balloon.signals import DirectoryXenstore
from guestagent.hostfs import HostFS
from guestagent.numa.balancing import NumaJournal, journal_path, turn_on, undo_balancing
from guestagent.numa.figures import BALANCING_SYSCTL
from guestagent.tiering.journal import (
    KDAMONDS,
    NR_KDAMONDS,
    TieringJournal,
    added_entries,
    undo_kdamonds,
)
from guestagent.tiering.journal import journal_path as tiering_journal_path
from guestagent.undo import Change, Journal, KindRule
from tests.test_balloon_guard import FakeCommands, make_root, quiet

STATE = "/run/guestagent"


def test_the_journal_gives_its_changes_newest_first_a_rerecorded_path_keeps_its_place(
    tmp_path: Path,
) -> None:
    import re

    kinds = {"k": KindRule(re.compile("/x/[a-z]"), re.compile("[0-9]"))}
    journal = Journal(HostFS(str(tmp_path)), f"{STATE}/t.json", "t", kinds)
    for path in ("/x/b", "/x/a", "/x/c"):
        journal.record(Change("k", path, "", "0"))
    journal.record(Change("k", "/x/b", "", "5"))  # again: first place and first previous kept
    assert [c.path for c in journal.newest_first()] == ["/x/c", "/x/a", "/x/b"]
    reread = Journal(HostFS(str(tmp_path)), f"{STATE}/t.json", "t", kinds).load()
    assert [c.path for c in reread.newest_first()] == ["/x/c", "/x/a", "/x/b"]
    first = reread.get("/x/b")
    assert first is not None and first.previous == "0"


# -- tiering: the kdamonds newest first, then nr_kdamonds (recorded before them) ------------------


def _agent_kdamond(root: Path, index: int) -> None:
    """A kdamond holding the agent's setup, on: one paddr context, one migrate_cold scheme."""
    kd = root / KDAMONDS.lstrip("/") / str(index)
    files = {"state": "on", "contexts/nr_contexts": "1", "contexts/0/operations": "paddr",
             "contexts/0/targets/nr_targets": "1", "contexts/0/schemes/nr_schemes": "1",
             "contexts/0/schemes/0/action": "migrate_cold"}
    for rel, text in files.items():
        (kd / rel).parent.mkdir(parents=True, exist_ok=True)
        (kd / rel).write_text(text + "\n")


def _tiering_world(tmp_path: Path, recorded: list[int]) -> tuple[HostFS, TieringJournal]:
    root = tmp_path / "root"
    (root / KDAMONDS.lstrip("/")).mkdir(parents=True)
    (root / NR_KDAMONDS.lstrip("/")).write_text(f"{len(recorded)}\n")
    for index in recorded:
        _agent_kdamond(root, index)
    fs = HostFS(str(root))
    journal = TieringJournal(fs, tiering_journal_path(STATE))
    count, *kdamonds = added_entries(0, sorted(recorded))
    journal.record(count)
    for index in recorded:  # one record each, in this order
        journal.record(next(c for c in kdamonds if c.path.endswith(f"/{index}")))
    return fs, TieringJournal(fs, tiering_journal_path(STATE)).load()


def _undo_writes(fs: HostFS, journal: TieringJournal) -> list[str]:
    writes: list[str] = []

    def write(path: str, value: str) -> None:
        writes.append(path[len(KDAMONDS) + 1:] if path.startswith(KDAMONDS + "/") else path)
        fs.write_text(path, value + "\n")

    report = undo_kdamonds(fs, write, journal)
    assert report.failures == 0, report.lines
    return writes


def test_tiering_undoes_its_kdamonds_newest_first_then_the_count(tmp_path: Path) -> None:
    fs, journal = _tiering_world(tmp_path, [0, 1])
    assert _undo_writes(fs, journal) == [
        "1/state", "1/contexts/nr_contexts", "0/state", "0/contexts/nr_contexts", "nr_kdamonds"]
    assert fs.read_text(NR_KDAMONDS).strip() == "0"


def test_tiering_follows_the_recording_order_not_the_index(tmp_path: Path) -> None:
    fs, journal = _tiering_world(tmp_path, [1, 0])  # kdamond 1 recorded first
    assert _undo_writes(fs, journal) == [
        "0/state", "0/contexts/nr_contexts", "1/state", "1/contexts/nr_contexts", "nr_kdamonds"]


# -- numa: one object; two changes to it undo to the value before the first ----------------------


def test_numa_two_switches_undo_to_the_value_before_the_first(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / BALANCING_SYSCTL.lstrip("/")).write_text("0\n")
    fs = HostFS(str(root))
    journal = NumaJournal(fs, journal_path(STATE))
    turn_on(fs, journal, 0, 1)
    turn_on(fs, journal, 1, 1)  # a reload that asked for auto again: the first previous stays
    assert [(c.previous, c.applied) for c in journal.newest_first()] == [("0", "1")]
    report = undo_balancing(fs, NumaJournal(fs, journal_path(STATE)).load())
    assert report.lines == ["numa_balancing: 1 -> 0"]
    assert fs.read_text(BALANCING_SYSCTL).strip() == "0"
    assert not NumaJournal(fs, journal_path(STATE)).load().changes


# -- balloon: the target (lowered last) first, then the guard's changes newest first -------------

#: What the guard's undo names each of its kinds (event=guard_undone what=...).
GUARD_WHAT = {"swap": "swap /dev/zram0", "zram_device": "/dev/zram0",
              "zram_module": "module zram", "sysctl": OVERCOMMIT_MEMORY}


def test_balloon_reset_undoes_the_target_then_the_guard_newest_first(tmp_path: Path) -> None:
    log.configure(level="debug")
    root = make_root(tmp_path, mode=0)
    quiet(root)
    fs = HostFS(str(root))
    cmds = FakeCommands(root)
    ctl = BalloonController(fs, DirectoryXenstore(fs, "/xenstore"), ClassicConfig(),
                            guard_commands=cmds)
    ctl.start()
    decision = ctl.tick()  # arms the guard (the sysctl, then zram), then lowers the target
    assert decision is not None
    recorded = [c.kind for c in BalloonJournal(fs).load() if c.kind in GUARD_WHAT]
    assert recorded == ["sysctl", "zram_module", "zram_device", "swap"]
    with capture_logs() as logs:  # the daemon was killed: guestagent reset, from the journal
        _target, report = reset_balloon(BalloonActuator(fs, DirectoryXenstore(fs, "/xenstore")),
                                        cmds)
    assert report.failures == 0, report.lines
    names = [e["event"] for e in logs]
    assert names.index("balloon_reset") < names.index("guard_undone")
    undone = [e["what"] for e in logs if e["event"] == "guard_undone"]
    assert undone == [GUARD_WHAT[kind] for kind in reversed(recorded)]
