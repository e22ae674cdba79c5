"""The balloon's undo in the undo journal (guestagent/balloon/journal.py): typed records, written
only when the undo changes, an earlier version's untyped ``balloon.json`` converted and undone,
and the status (decisions) in a file of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from guestagent import log
from guestagent.balloon.actuator import RECORD_PATH, STATUS_PATH
from guestagent.balloon.commands import reset_balloon
from guestagent.balloon.guard import GUARD_KEY, OVERCOMMIT_MEMORY, Guard
from guestagent.balloon.journal import KINDS, BalloonJournal, changes_of, view
from guestagent.host import Host
from guestagent.reset import reset_everything
from tests.test_balloon_guard import (
    CEILING,
    HARD_FLOOR,
    FakeCommands,
    events,
    make_root,
    parts,
    sysctl,
    target_of,
)


@pytest.fixture(autouse=True)
def log_everything() -> None:
    log.configure(level="debug")


def journal_of(root: Path) -> dict[str, Any]:
    return json.loads((root / RECORD_PATH.lstrip("/")).read_text())


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_the_record_is_the_undo_journal_with_typed_entries(tmp_path: Path) -> None:
    root = make_root(tmp_path, mode=0)
    fs, act = parts(root)
    act.start()
    Guard(fs, act, FakeCommands(root)).arm(CEILING, HARD_FLOOR)
    journal = journal_of(root)
    assert journal["version"] == 1 and set(journal) == {"version", "changes"}
    kinds = [c["kind"] for c in journal["changes"]]
    assert kinds == ["target", "toolstack_offset", "sysctl", "zram_module", "zram_device",
                     "swap"], kinds
    by_kind = {c["kind"]: c for c in journal["changes"]}
    assert by_kind["target"]["previous"] == str(CEILING)
    assert by_kind["sysctl"] == {"kind": "sysctl", "path": OVERCOMMIT_MEMORY, "bdf": "",
                                 "previous": "0", "applied": ""}
    assert by_kind["swap"]["path"] == "/dev/zram0"
    assert by_kind["zram_device"]["path"] == "/sys/block/zram0"
    assert all(KINDS[c["kind"]].path.fullmatch(c["path"]) for c in journal["changes"])


@pytest.mark.parametrize("device", [None, 0, 7, 1023])
def test_the_guard_entries_survive_the_journal(device: int | None) -> None:
    guard = [{"kind": "sysctl", "path": OVERCOMMIT_MEMORY, "previous": "2"},
             {"kind": "zram_module", "previous": "not loaded"},
             {"kind": "zram_device", "device": device}]
    if device is not None:
        guard.append({"kind": "swap", "device": device})
    record = {"original_target_kb": 4096, "toolstack_offset_kb": 8192, GUARD_KEY: guard}
    assert view(changes_of(record)) == record


def test_a_tick_that_changes_no_undo_writes_no_journal(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    _fs, act = parts(root)
    act.start()
    path = root / RECORD_PATH.lstrip("/")
    before = stamp(path)
    act.save_record(act.load_record())  # the same records: no write
    act.start()  # a second start keeps the first original: no write
    act.record_decision({"action": "hold"})
    assert stamp(path) == before
    assert json.loads((root / STATUS_PATH.lstrip("/")).read_text())["decisions"] == [
        {"action": "hold"}]


LEGACY = {
    "active": True,
    "original_target_kb": CEILING,
    "toolstack_target_kb": CEILING,
    "static_max_kb": CEILING,
    "toolstack_offset_kb": 0,
    "decisions": [{"policy": "pressure", "action": "shrink", "target_kb": 500_000}],
    GUARD_KEY: [{"kind": "sysctl", "path": OVERCOMMIT_MEMORY, "previous": "0"}],
}


def write_legacy(root: Path, record: dict[str, Any]) -> Path:
    path = root / RECORD_PATH.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def test_an_earlier_versions_record_is_undone_by_guestagent_reset(tmp_path: Path) -> None:
    """A ballooned-down guest with the guard's sysctl set, left by an earlier version (untyped
    balloon.json): ``guestagent reset`` puts both back, and the old file is gone."""
    root = make_root(tmp_path, mode=1)  # the earlier version had set 0 -> 1
    fs, act = parts(root)
    act.apply(500_000, "shrink")
    path = write_legacy(root, LEGACY)
    with capture_logs() as logs:
        (result,) = [r for r in reset_everything(Host(fs), "/run/guestagent")
                     if r.part == "balloon"]
    assert not result.failed and result.report.lines, result
    assert target_of(root) == CEILING and sysctl(root) == "0"
    (converted,) = events(logs, "balloon_record_converted")
    assert converted["records"] == 3
    # Converted once: what is left is the journal's own format (the offset, kept for the boot).
    journal = json.loads(path.read_text())
    assert journal["version"] == 1
    assert [c["kind"] for c in journal["changes"]] == ["toolstack_offset"]
    status = json.loads((root / STATUS_PATH.lstrip("/")).read_text())
    assert status["decisions"] == LEGACY["decisions"] and status["active"] is False


def test_an_earlier_versions_original_is_honoured_without_xenstore(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    fs, _act = parts(root)
    from guestagent.balloon.actuator import BalloonActuator

    act = BalloonActuator(fs, None)  # no toolstack figures: only the record knows the ceiling
    act.apply(500_000, "shrink")
    path = write_legacy(root, {"original_target_kb": 900_000, "active": True})
    target, report = reset_balloon(act)
    assert target == 900_000 and target_of(root) == 900_000 and not report.failures
    assert not path.exists()  # nothing left to undo: the old file is removed


def test_an_earlier_versions_record_after_its_reset_leaves_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    _fs, act = parts(root)
    path = write_legacy(root, {"active": False, "original_target_kb": None,
                               "last_reset": {"target_kb": CEILING, "source": "x"}})
    assert act.load_record() == {}
    assert not path.exists()


def test_a_damaged_target_entry_is_skipped_alone_by_the_reset(tmp_path: Path) -> None:
    """A start refuses it (it must not take the ballooned-down target for the original); the
    reset drops it with one line, keeps the other entries (the guard's sysctl is undone) and
    goes back to xenstore's ceiling; the file is kept (no ``.bad``), without the bad entry."""
    root = make_root(tmp_path, mode=1)
    _fs, act = parts(root)
    record = act.start()
    record[GUARD_KEY] = [{"kind": "sysctl", "path": OVERCOMMIT_MEMORY, "previous": "0"}]
    act.save_record(record)
    act.apply(500_000, "shrink")
    path = root / RECORD_PATH.lstrip("/")
    journal = journal_of(root)
    assert journal["changes"][0]["kind"] == "target"
    journal["changes"][0]["previous"] = "-5"
    path.write_text(json.dumps(journal))
    with pytest.raises(Exception, match="bad original_target_kb"):
        BalloonJournal(act.hostfs).load()
    with capture_logs() as logs:
        target, report = reset_balloon(act)
    assert target == CEILING and target_of(root) == CEILING and not report.failures
    assert sysctl(root) == "0"
    (bad,) = events(logs, "balloon_record_bad_value")
    assert bad["field"] == "original_target_kb" and bad["value"] == "-5", bad
    assert not events(logs, "balloon_record_unreadable")
    assert not events(logs, "undo_entry_skipped")  # one line for the damage, not two
    assert not (path.parent / "balloon.json.bad").exists()
    assert [c["kind"] for c in journal_of(root)["changes"]] == ["toolstack_offset"]


def test_a_start_after_an_earlier_version_keeps_its_original(tmp_path: Path) -> None:
    """The daemon of this version starting where an earlier one crashed ballooned down: the
    earlier original target is the one to go back to, not the current (low) target."""
    root = make_root(tmp_path)
    _fs, act = parts(root)
    act.apply(500_000, "shrink")
    write_legacy(root, {"original_target_kb": CEILING, "toolstack_offset_kb": 0, "active": True})
    assert act.start()["original_target_kb"] == CEILING
    assert [c["kind"] for c in journal_of(root)["changes"]] == ["target", "toolstack_offset"]
    assert act.reset() == CEILING and target_of(root) == CEILING


def test_the_journal_and_the_status_stay_readable_without_root(tmp_path: Path) -> None:
    """balloon status reads both; the untyped record was 0644 and so are they."""
    root = make_root(tmp_path)
    _fs, act = parts(root)
    act.start()
    act.record_decision({"action": "hold"})
    for path in (RECORD_PATH, STATUS_PATH):
        assert (root / path.lstrip("/")).stat().st_mode & 0o777 == 0o644, path
