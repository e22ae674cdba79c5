"""The balloon part of ``guestagent reset`` (the unit's ExecStopPost) against damaged and hostile
state (issue 15, "undo that always works"), through the command as systemd runs it.

Seen before: ``balloon --reset`` refused when its record was unreadable although xenstore's
``memory/target`` was there; it trusted the record's offset without bounds and applied no floor
(a corrupted offset reset the target to 1 KiB, which would kill the guest; a negative one set
1,001,048,575 KiB); the reset wrote ``previous`` to any path its state named.

On the balloon-pv-1g fixture (xenstore ``memory/target`` and ``static-max`` 1048576 KiB in its
stand-in tree) with the overcommit sysctls (mode 0), the daemon's record as a shrink leaves it
(target 600 MiB, the guard's ``overcommit_memory`` change), then damaged one way per case. Each
case: the target written, the exit status, and one warning line naming the damage.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guestagent import cli
from guestagent.balloon.actuator import RECORD_PATH, BalloonActuator
from guestagent.balloon.guard import GUARD_KEY
from guestagent.balloon.signals import BALLOON_TARGET, DirectoryXenstore
from guestagent.hostfs import HostFS
from tests.test_balloon_guard import make_root

CEILING = 1048576
HARD_FLOOR = 256 * 1024  # max(256 MiB, static-max / 16)
TARGET = BALLOON_TARGET.lstrip("/")
RECORD = RECORD_PATH.lstrip("/")
OVERCOMMIT = "proc/sys/vm/overcommit_memory"


def shrunk(tmp_path: Path) -> Path:
    """What a killed daemon leaves: the record (original target, offset 0, the guard's sysctl
    change), the target at 600 MiB, overcommit at 1."""
    root = make_root(tmp_path, mode=0)
    hostfs = HostFS(str(root))
    actuator = BalloonActuator(hostfs, DirectoryXenstore(hostfs, "/xenstore"))
    record = actuator.start()
    record[GUARD_KEY] = [{"kind": "sysctl", "path": "/proc/sys/vm/overcommit_memory",
                          "previous": "0"}]
    actuator.save_record(record)
    (root / OVERCOMMIT).write_text("1\n")
    (root / TARGET).write_text(f"{600 * 1024}\n")
    return root


def edit_record(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        record = json.loads((root / RECORD).read_text())
        change(record)
        (root / RECORD).write_text(json.dumps(record))
    return damage


def write(rel: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_text(text)


def remove(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        for step in steps:
            step(root)
    return damage


def hostile_guard_entries(record: dict[str, Any]) -> None:
    record[GUARD_KEY][:0] = [
        {"kind": "sysctl", "path": "/../../escaped", "previous": "0"},
        {"kind": "sysctl", "path": "/proc/sys/kernel/panic", "previous": "0"},
        {"kind": "swap", "device": -3},
        {"kind": "teleport"},
        "not an object",
    ]


#: (damage, the target the reset writes, the warning event naming the damage)
CASES: dict[str, tuple[Callable[[Path], None], int, str | None]] = {
    "record-wrong-type": (edit_record(lambda r: r.update(original_target_kb="1048576")),
                          CEILING, "balloon_record_bad_value"),
    "offset-to-1-kib": (edit_record(lambda r: r.update(toolstack_offset_kb=CEILING - 1)),
                        CEILING, "balloon_record_bad_value"),
    "offset-negative": (edit_record(lambda r: r.update(toolstack_offset_kb=-1_000_000_000)),
                        CEILING, "balloon_record_bad_value"),
    "offset-a-string": (edit_record(lambda r: r.update(toolstack_offset_kb="12")),
                        CEILING, "balloon_record_bad_value"),
    "only-static-max": (remove("xenstore/memory/target"), CEILING, None),
    "target-over-static-max": (write("xenstore/memory/target", str(4 * CEILING)), CEILING, None),
    "no-xenstore-original-1-kib": (
        both(remove("xenstore/memory/target"), remove("xenstore/memory/static-max"),
             edit_record(lambda r: r.update(original_target_kb=1))),
        HARD_FLOOR, "balloon_reset_clamped"),
    "hostile-guard-entries": (edit_record(hostile_guard_entries), CEILING, "guard_record_bad"),
}


def reset(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``guestagent --root ROOT reset``: exit status, standard output, the log lines."""
    rc = cli.main(["--root", str(root), "reset"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("case", list(CASES))
def test_reset_of_a_damaged_balloon_state(
    case: str, tmp_path: Path, logfmt: io.StringIO, capsys: pytest.CaptureFixture[str],
) -> None:
    damage, target, warning = CASES[case]
    root = shrunk(tmp_path)
    damage(root)
    rc, out, log = reset(root, capsys)
    assert rc == 0, (out, log)
    assert int((root / TARGET).read_text()) == target, (out, log)
    assert (root / OVERCOMMIT).read_text().strip() == "0", (out, log)
    assert f"balloon: target reset to {target} KiB" in out, out
    assert "level=error" not in log and "Traceback" not in log, log
    if warning is not None:
        assert f"event={warning} " in log, log
    # nothing written outside the root, nor to a file the guard never writes
    assert not (tmp_path / "escaped").exists() and not (root.parent / "escaped").exists()
    assert not (root / "proc/sys/kernel/panic").exists()
    # a second reset has nothing left
    assert reset(root, capsys)[:2] == (0, "nothing to undo\n")


def test_a_record_that_is_not_json_loses_only_what_it_held(
    tmp_path: Path, logfmt: io.StringIO, capsys: pytest.CaptureFixture[str],
) -> None:
    """The target still goes back (from xenstore) and the file is kept aside for a person; the
    guard's sysctl change it recorded cannot be known, so ``overcommit_memory`` stays at 1 and
    the warning says that the guard's changes were lost."""
    root = shrunk(tmp_path)
    (root / RECORD).write_text("{not json")
    rc, out, log = reset(root, capsys)
    assert rc == 0, (out, log)
    assert int((root / TARGET).read_text()) == CEILING
    assert (root / f"{RECORD}.bad").read_text() == "{not json"
    (line,) = [ln for ln in log.splitlines() if "event=balloon_record_unreadable" in ln]
    assert "lost=" in line and "guard" in line, line
    assert (root / OVERCOMMIT).read_text().strip() == "1"
