"""The allocation guard (guestagent/balloon/guard.py) and the balloon reset's safety, on copies of
the balloon-pv-1g fixture tree with the files the guard reads added: ``/proc/sys/vm/overcommit_*``,
``/proc/swaps``, the kernel release and a ``modules.dep`` naming zram.

Issue 12: a 1 GiB PV guest ballooned to about 300 MiB refused a program's single 450 MiB mmap
(ENOMEM under vm.overcommit_memory=0). Issue 15 item 3: ``balloon --reset`` refused with a damaged
record, and a corrupted offset reset the target to 1 KiB (a negative one to 1,001,048,575 KiB).

The commands a fixture tree cannot show (modprobe, mkswap, swapon, swapoff) are a fake that
changes the tree the way the kernel would: loading zram makes ``/sys/class/zram-control`` and the
device the next ``hot_add`` returns, swapon adds the line to ``/proc/swaps``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from guestagent import log
from guestagent.balloon.actuator import RECORD_PATH, BalloonActuator
from guestagent.balloon.controller import BalloonController
from guestagent.balloon.guard import (
    COMMIT_MARGIN_KB,
    GUARD_KEY,
    OVERCOMMIT_MEMORY,
    Guard,
    overcommit_change,
    parse_swaps,
    reset_all,
    selected_compressor,
    strict_commit_floor_kb,
    undo,
    zram_disksize_kb,
)
from guestagent.balloon.journal import BalloonJournal, view
from guestagent.balloon.policy import ClassicConfig
from guestagent.balloon.signals import BALLOON_TARGET, DirectoryXenstore
from guestagent.errors import InputError
from guestagent.hostfs import HostFS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELEASE = "6.1.0-56-amd64"
CEILING = 1048576
HARD_FLOOR = 256 * 1024
SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


@pytest.fixture(autouse=True)
def log_everything() -> None:
    log.configure(level="debug")


def make_root(tmp_path: Path, mode: int = 0, zram_module: bool = True) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "balloon-pv-1g", root)
    vm = root / "proc/sys/vm"
    vm.mkdir(parents=True)
    (vm / "overcommit_memory").write_text(f"{mode}\n")
    (vm / "overcommit_ratio").write_text("50\n")
    (vm / "overcommit_kbytes").write_text("0\n")
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(RELEASE + "\n")
    (root / "proc/swaps").write_text(SWAPS_HEADER)
    (root / "sys/block/xvda").mkdir(parents=True)
    mods = root / "lib/modules" / RELEASE
    mods.mkdir(parents=True)
    dep = "kernel/drivers/block/zram/zram.ko: kernel/mm/zsmalloc.ko\n" if zram_module else ""
    (mods / "modules.dep").write_text(dep + "kernel/drivers/block/loop.ko:\n")
    (mods / "modules.builtin").write_text("kernel/crypto/lzo-rle.ko\n")
    return root


class FakeCommands:
    """The kernel's side of modprobe, mkswap, swapon and swapoff, on the fixture tree."""

    def __init__(self, root: Path, next_device: int = 0) -> None:
        self.root = root
        self.next_device = next_device
        self.calls: list[str] = []

    def _device(self, n: int) -> None:
        d = self.root / f"sys/block/zram{n}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "disksize").write_text("0\n")
        (d / "comp_algorithm").write_text("lzo [lzo-rle] lz4 zstd\n")
        (d / "reset").write_text("")

    def modprobe(self, module: str, *params: str) -> None:
        self.calls.append(f"modprobe {module} {' '.join(params)}")
        ctl = self.root / "sys/class/zram-control"
        ctl.mkdir(parents=True)
        (ctl / "hot_add").write_text(f"{self.next_device}\n")
        (ctl / "hot_remove").write_text("")
        (self.root / "sys/module/zram").mkdir(parents=True)
        self._device(self.next_device)

    def modprobe_remove(self, module: str) -> None:
        self.calls.append(f"modprobe -r {module}")
        shutil.rmtree(self.root / "sys/class/zram-control")
        shutil.rmtree(self.root / "sys/module/zram")

    def mkswap(self, device: str) -> None:
        self.calls.append(f"mkswap {device}")

    def swapon(self, device: str, priority: int) -> None:
        self.calls.append(f"swapon {device} {priority}")
        size = int((self.root / f"sys/block/{device[5:]}/disksize").read_text()) // 1024
        with open(self.root / "proc/swaps", "a") as f:
            f.write(f"{device}\tpartition\t{size}\t0\t{priority}\n")

    def swapoff(self, device: str) -> None:
        target = int((self.root / BALLOON_TARGET.lstrip("/")).read_text())
        self.calls.append(f"swapoff {device} (target_kb {target})")
        swaps = self.root / "proc/swaps"
        swaps.write_text("".join(ln for ln in swaps.read_text().splitlines(keepends=True)
                                 if not ln.startswith(device + "\t")))


def parts(root: Path) -> tuple[HostFS, BalloonActuator]:
    fs = HostFS(str(root))
    return fs, BalloonActuator(fs, DirectoryXenstore(fs, "/xenstore"))


def record_of(root: Path) -> dict[str, Any]:
    """The balloon's undo records as the balloon code sees them (guestagent.balloon.journal)."""
    return view(BalloonJournal(HostFS(str(root))).load())


def sysctl(root: Path) -> str:
    return (root / "proc/sys/vm/overcommit_memory").read_text().strip()


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


# --- pure functions ------------------------------------------------------------------------------


def test_overcommit_change_only_turns_the_heuristic_off() -> None:
    assert overcommit_change(0) == 1
    assert overcommit_change(1) is None
    assert overcommit_change(2) is None  # strict accounting is the administrator's: floored


def test_strict_floor_examples() -> None:
    # 600 MiB spare over the margin at ratio 50: 1200 MiB could go; only what the ceiling allows
    assert strict_commit_floor_kb(1_000_000, 1_000_000 + COMMIT_MARGIN_KB + 600 * 1024,
                                  1_000_000, 50, 0) == 1_000_000 - 1200 * 1024
    # over-committed already: the floor is above the current size (a grow)
    floor = strict_commit_floor_kb(500_000, 400_000, 400_000, 50, 0)
    assert floor == 500_000 + 2 * COMMIT_MARGIN_KB
    # overcommit_kbytes set, or ratio 0: CommitLimit does not depend on RAM
    assert strict_commit_floor_kb(500_000, 400_000, 300_000, 50, 1000) is None
    assert strict_commit_floor_kb(500_000, 400_000, 300_000, 0, 0) is None


@given(
    current=st.integers(128 * 1024, 1 << 30),
    limit=st.integers(0, 1 << 30),
    committed=st.integers(0, 1 << 30),
    ratio=st.integers(1, 1000),
)
def test_strict_floor_keeps_commit_limit_above_committed_plus_margin(
    current: int, limit: int, committed: int, ratio: int
) -> None:
    """Ballooning to the floor (each KiB out lowers CommitLimit by ratio/100) never leaves
    CommitLimit under Committed_AS + margin, and the floor is tight to within one step."""
    floor = strict_commit_floor_kb(current, limit, committed, ratio, 0)
    assert floor is not None
    limit_at_floor = limit - (current - floor) * ratio / 100
    assert limit_at_floor >= committed + COMMIT_MARGIN_KB - 1e-6
    one_lower = limit - (current - floor + 1 + 100 // ratio) * ratio / 100
    assert one_lower < committed + COMMIT_MARGIN_KB


def test_zram_size_is_what_may_be_ballooned_out() -> None:
    assert zram_disksize_kb(CEILING, HARD_FLOOR) == 768 * 1024
    assert zram_disksize_kb(CEILING, CEILING + 5) == 0
    assert zram_disksize_kb(1000 * 1024 + 1000, 0) == 1000 * 1024


def test_swaps_and_compressor_parsing() -> None:
    text = SWAPS_HEADER + "/dev/zram0\tpartition\t786428\t12\t100\n/swapfile\tfile\t1024\t0\t-2\n"
    swaps = parse_swaps(text)
    assert [(s.path, s.size_kb, s.priority) for s in swaps] == [
        ("/dev/zram0", 786428, 100), ("/swapfile", 1024, -2)]
    with pytest.raises(InputError):
        parse_swaps("garbage\n")
    assert selected_compressor("lzo [lzo-rle] lz4 zstd\n") == "lzo-rle"
    assert selected_compressor("lzo lz4\n") is None


# --- arming and undo -----------------------------------------------------------------------------


def test_mode_0_becomes_1_recorded_first_and_undone(tmp_path: Path) -> None:
    root = make_root(tmp_path, mode=0)
    fs, act = parts(root)
    cmds = FakeCommands(root)
    guard = Guard(fs, act, cmds)
    with capture_logs() as logs:
        guard.arm(CEILING, HARD_FLOOR)
    assert sysctl(root) == "1"
    changes = record_of(root)[GUARD_KEY]
    assert changes[0] == {"kind": "sysctl", "path": OVERCOMMIT_MEMORY, "previous": "0"}
    (setting,) = [e for e in events(logs, "guard_set") if e["what"] == OVERCOMMIT_MEMORY]
    assert setting["previous"] == 0 and setting["value"] == 1
    # zram: module loaded, a device of ceiling - floor, swap at priority 100
    assert [c["kind"] for c in changes] == ["sysctl", "zram_module", "zram_device", "swap"]
    assert cmds.calls == ["modprobe zram num_devices=0", "mkswap /dev/zram0",
                          "swapon /dev/zram0 100"]
    assert int((root / "sys/block/zram0/disksize").read_text()) == 768 * 1024 * 1024
    assert "/dev/zram0\tpartition\t786432\t0\t100" in (root / "proc/swaps").read_text()
    (dev,) = [e for e in events(logs, "guard_set") if e["what"] == "/dev/zram0"]
    assert dev["compressor"] == "lzo-rle" and dev["previous"] == "absent"

    with capture_logs() as logs:
        assert undo(fs, act, cmds) == 0
    assert sysctl(root) == "0"
    assert (root / "proc/swaps").read_text() == SWAPS_HEADER
    assert (root / "sys/block/zram0/reset").read_text() == "1\n"
    assert cmds.calls[3:] == ["swapoff /dev/zram0 (target_kb 1048576)", "modprobe -r zram"]
    assert GUARD_KEY not in record_of(root)
    undone = [e["what"] for e in events(logs, "guard_undone")]
    assert undone == ["swap /dev/zram0", "/dev/zram0", "module zram", OVERCOMMIT_MEMORY]


def test_mode_1_is_left_alone(tmp_path: Path) -> None:
    root = make_root(tmp_path, mode=1, zram_module=False)
    fs, act = parts(root)
    with capture_logs() as logs:
        Guard(fs, act, FakeCommands(root)).arm(CEILING, HARD_FLOOR)
    assert sysctl(root) == "1" and not record_of(root).get(GUARD_KEY)
    assert events(logs, "guard_overcommit_kept")


def test_no_zram_in_the_kernel_is_one_line_and_overcommit_still_set(tmp_path: Path) -> None:
    root = make_root(tmp_path, mode=0, zram_module=False)
    fs, act = parts(root)
    cmds = FakeCommands(root)
    with capture_logs() as logs:
        Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    (line,) = events(logs, "guard_zram_unavailable")
    assert "no zram" in line["reason"] and line["fallback"] == "overcommit only"
    assert cmds.calls == [] and sysctl(root) == "1"


def test_a_zram_device_in_use_by_someone_else_is_never_touched(tmp_path: Path) -> None:
    root = make_root(tmp_path, mode=0)
    fs, act = parts(root)
    cmds = FakeCommands(root, next_device=0)
    cmds.modprobe("zram")  # someone else's: zram0 with a swap on it
    cmds.calls.clear()
    (root / "sys/block/zram0/disksize").write_text(str(512 << 20))
    cmds.swapon("/dev/zram0", 5)
    cmds.calls.clear()
    with capture_logs() as logs:
        Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    (line,) = events(logs, "guard_zram_unavailable")
    assert "/dev/zram0" in line["reason"] and "someone else" in line["reason"]
    assert cmds.calls == []
    undo(fs, act, cmds)
    assert "/dev/zram0\tpartition" in (root / "proc/swaps").read_text() and cmds.calls == []


def test_an_unused_foreign_zram_module_gets_our_own_device(tmp_path: Path) -> None:
    """zram already loaded (zram0 unused, disksize 0): the guard hot-adds its own device and
    never unloads the module it did not load."""
    root = make_root(tmp_path, mode=0)
    fs, act = parts(root)
    cmds = FakeCommands(root, next_device=0)
    cmds.modprobe("zram")
    (root / "sys/class/zram-control/hot_add").write_text("1\n")
    cmds._device(1)
    cmds.calls.clear()
    Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    assert cmds.calls == ["mkswap /dev/zram1", "swapon /dev/zram1 100"]
    undo(fs, act, cmds)
    assert cmds.calls[2:] == ["swapoff /dev/zram1 (target_kb 1048576)"]
    assert (root / "sys/class/zram-control/hot_remove").read_text() == "1\n"
    assert (root / "sys/block/zram0/reset").read_text() == ""


def test_a_restarted_agent_adopts_its_changes_and_keeps_the_first_previous(tmp_path: Path) -> None:
    root = make_root(tmp_path, mode=0)
    fs, act = parts(root)
    cmds = FakeCommands(root)
    Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    before = record_of(root)[GUARD_KEY]
    # kill -9; the daemon starts again and shrinks again
    with capture_logs() as logs:
        Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    assert record_of(root)[GUARD_KEY] == before
    assert len(events(logs, "guard_adopted")) == 2 and len(cmds.calls) == 3
    undo(fs, act, cmds)
    assert sysctl(root) == "0"


def test_a_bad_guard_entry_is_skipped_and_the_rest_undone(tmp_path: Path) -> None:
    root = make_root(tmp_path, mode=0)
    fs, act = parts(root)
    cmds = FakeCommands(root)
    Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    path = root / RECORD_PATH.lstrip("/")
    journal = json.loads(path.read_text())
    journal["changes"][:0] = [
        {"kind": "sysctl", "path": "/../../etc/passwd", "bdf": "", "previous": "0", "applied": ""},
        {"kind": "swap", "path": "/dev/zram-3", "bdf": "", "previous": "off", "applied": ""},
    ]
    path.write_text(json.dumps(journal))
    with capture_logs() as logs:
        assert undo(fs, act, cmds) == 0
    skipped = events(logs, "undo_entry_skipped")
    assert len(skipped) == 2 and all(e["journal"] == RECORD_PATH for e in skipped), skipped
    assert sysctl(root) == "0" and (root / "proc/swaps").read_text() == SWAPS_HEADER


def test_a_failed_swapoff_stays_in_the_record_for_the_next_reset(tmp_path: Path) -> None:
    root = make_root(tmp_path, mode=0)
    fs, act = parts(root)
    cmds = FakeCommands(root)
    Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)

    def refuse(device: str) -> None:
        raise OSError(12, "Cannot allocate memory")

    real = cmds.swapoff
    cmds.swapoff = refuse  # type: ignore[method-assign]
    with capture_logs() as logs:
        left = undo(fs, act, cmds)
    assert left == 3 and events(logs, "guard_undo_failed")
    assert sysctl(root) == "0"  # the sysctl is undone all the same
    cmds.swapoff = real  # type: ignore[method-assign]
    assert undo(fs, act, cmds) == 0 and GUARD_KEY not in record_of(root)


# --- the controller: armed before the first shrink, floored under mode 2, undone in order ------


def quiet(root: Path) -> None:
    (root / "proc/pressure/memory").write_text(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1843201\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=912040\n"
    )


def test_controller_arms_before_the_first_shrink_and_stop_undoes_in_order(tmp_path: Path) -> None:
    root = make_root(tmp_path, mode=0)
    quiet(root)
    fs = HostFS(str(root))
    cmds = FakeCommands(root)
    ctl = BalloonController(fs, DirectoryXenstore(fs, "/xenstore"), ClassicConfig(),
                            guard_commands=cmds)
    ctl.start()
    with capture_logs() as logs:
        decision = ctl.tick()
    assert decision is not None and decision.target_kb < CEILING
    names = [e["event"] for e in logs]
    assert names.index("guard_set") < names.index("balloon_target_set")
    assert sysctl(root) == "1" and "swapon /dev/zram0 100" in cmds.calls
    with capture_logs() as logs:
        ctl.stop(reset=True)
    names = [e["event"] for e in logs]
    assert names.index("balloon_reset") < names.index("guard_undo_start") < names.index(
        "guard_undone")
    # the swapoff ran after the target was back at the ceiling
    assert "swapoff /dev/zram0 (target_kb 1048576)" in cmds.calls
    assert sysctl(root) == "0" and GUARD_KEY not in record_of(root)


def test_controller_under_mode_2_floors_the_target_and_never_changes_the_mode(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path, mode=2, zram_module=False)
    quiet(root)
    meminfo = root / "proc/meminfo"
    text = meminfo.read_text()
    # 10 MiB of spare commit over the margin at ratio 50: 20 MiB may go (classic wants 27.5)
    limit = 412656 + COMMIT_MARGIN_KB + 10 * 1024  # Committed_AS is 412656 kB
    text = text.replace("CommitLimit:     1023572 kB", f"CommitLimit:     {limit} kB")
    meminfo.write_text(text)
    fs = HostFS(str(root))
    ctl = BalloonController(fs, DirectoryXenstore(fs, "/xenstore"), ClassicConfig(),
                            guard_commands=FakeCommands(root))
    ctl.start()
    with capture_logs() as logs:
        decision = ctl.tick()
    assert decision is not None
    assert decision.target_kb == CEILING - 20 * 1024, decision
    (floored,) = events(logs, "guard_commit_floor")
    assert floored["policy_target_kb"] < decision.target_kb
    assert sysctl(root) == "2" and not record_of(root).get(GUARD_KEY)
    ctl.stop(reset=True)
    assert int((root / BALLOON_TARGET.lstrip("/")).read_text()) == CEILING


# --- balloon --reset safety (issue 15 item 3) ----------------------------------------------------


def target_of(root: Path) -> int:
    return int((root / BALLOON_TARGET.lstrip("/")).read_text())


def test_reset_with_a_garbage_record_falls_back_to_xenstore(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    _fs, act = parts(root)
    act.apply(500_000, "shrink")
    path = root / RECORD_PATH.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    with capture_logs() as logs:
        assert reset_all(act) == CEILING
    assert target_of(root) == CEILING
    (line,) = events(logs, "balloon_record_unreadable")
    assert line["source"] == RECORD_PATH and "unreadable record" in line["error"]
    assert (path.parent / "balloon.json.bad").read_text() == "{not json"


def write_offset(root: Path, previous: str) -> None:
    """Put ``previous`` as the toolstack_offset record's value, as damage would."""
    path = root / RECORD_PATH.lstrip("/")
    journal = json.loads(path.read_text())
    (entry,) = [c for c in journal["changes"] if c["kind"] == "toolstack_offset"]
    entry["previous"] = previous
    path.write_text(json.dumps(journal))


@pytest.mark.parametrize("offset", [str(CEILING - 1), "-1000000000", "99999999999999999999"])
def test_reset_bounds_checks_the_recorded_offset(tmp_path: Path, offset: str) -> None:
    root = make_root(tmp_path)
    _fs, act = parts(root)
    act.start()
    act.apply(500_000, "shrink")
    write_offset(root, offset)
    with capture_logs() as logs:
        assert act.reset() == CEILING
    (line,) = events(logs, "balloon_record_bad_value")
    assert line["field"] == "toolstack_offset_kb" and line["value"] == offset[:40]
    assert line["used"] == 0


@pytest.mark.parametrize("offset", ["12.5", "True", "", "0x10"])
def test_reset_skips_an_offset_that_is_not_an_integer(tmp_path: Path, offset: str) -> None:
    root = make_root(tmp_path)
    _fs, act = parts(root)
    act.start()
    act.apply(500_000, "shrink")
    write_offset(root, offset)
    with capture_logs() as logs:
        assert act.reset() == CEILING
    (line,) = events(logs, "undo_entry_skipped")
    assert "toolstack_offset" in line["error"] and line["journal"] == RECORD_PATH


def test_reset_never_goes_under_the_hard_floor(tmp_path: Path) -> None:
    """No xenstore, a damaged original of 1 KiB: the reset writes max(256 MiB, ...) instead."""
    root = make_root(tmp_path)
    fs = HostFS(str(root))
    act = BalloonActuator(fs, None)
    act.start()
    record = act.load_record()
    record["original_target_kb"] = 1
    act.save_record(record)
    with capture_logs() as logs:
        assert act.reset() == HARD_FLOOR
    (line,) = events(logs, "balloon_reset_clamped")
    assert line["bad_value"] == 1 and line["used"] == HARD_FLOOR
    assert line["source"] == "saved original target"
    assert target_of(root) == HARD_FLOOR


def test_reset_never_goes_over_static_max(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "xenstore/memory/target").write_text(str(CEILING * 4))
    _fs, act = parts(root)
    # memory/target above static-max: the ceiling is min(target, static-max)
    assert act.reset() == CEILING


def test_reset_with_only_static_max(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "xenstore/memory/target").unlink()
    _fs, act = parts(root)
    act.apply(500_000, "shrink")
    with capture_logs() as logs:
        assert act.reset() == CEILING
    assert events(logs, "balloon_reset")[0]["source"] == "toolstack static-max"


def test_an_unreadable_record_leaves_the_guard_unarmed_and_the_shrink_undone(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path, mode=0)
    quiet(root)
    fs = HostFS(str(root))
    ctl = BalloonController(fs, DirectoryXenstore(fs, "/xenstore"), ClassicConfig(),
                            guard_commands=FakeCommands(root))
    ctl.start()
    (root / RECORD_PATH.lstrip("/")).write_text("[1, 2")
    with capture_logs() as logs:
        assert ctl.tick() is None
    assert events(logs, "balloon_tick_failed") and not ctl.guard.armed
    assert target_of(root) == CEILING and sysctl(root) == "0"
