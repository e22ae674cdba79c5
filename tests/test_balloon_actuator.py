"""The balloon actuator and controller against a copy of the balloon-pv-1g fixture tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from guestagent import log
from guestagent.balloon.actuator import RECORD_PATH, BalloonActuator, BalloonUnavailable
from guestagent.balloon.common import (
    HARD_MINIMUM_ABS_KB,
    ResetTarget,
    decide_reset,
    hard_minimum_kb,
)
from guestagent.balloon.controller import BalloonController
from guestagent.balloon.policy import PressureConfig
from guestagent.balloon.signals import BALLOON_TARGET, DirectoryXenstore
from guestagent.errors import InputError
from guestagent.host import Host
from guestagent.hostfs import HostFS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TARGET = BALLOON_TARGET.lstrip("/")


@pytest.fixture(autouse=True)
def log_everything() -> None:
    """Other tests may have configured a warning-level filter; these check info events."""
    log.configure(level="debug")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dest = tmp_path / "balloon-pv-1g"
    shutil.copytree(FIXTURES / "balloon-pv-1g", dest)
    return dest


def fs_xs(root: Path) -> tuple[HostFS, DirectoryXenstore]:
    fs = HostFS(str(root))
    return fs, DirectoryXenstore(fs, "/xenstore")


def target_of(root: Path) -> int:
    return int((root / TARGET).read_text())


def quiet(root: Path) -> None:
    (root / "proc/pressure/memory").write_text(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1843201\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=912040\n"
    )


def test_apply_writes_logs_and_reads_back(root: Path) -> None:
    fs, xs = fs_xs(root)
    act = BalloonActuator(fs, xs)
    with capture_logs() as logs:
        res = act.apply(900_000, "test shrink")
    assert res.written and res.target_kb == 900_000 and res.previous_kb == 1048576
    assert res.current_kb == 1048576  # a fixture's driver never moves: current lags the target
    assert target_of(root) == 900_000
    (event,) = [e for e in logs if e["event"] == "balloon_target_set"]
    assert event["reason"] == "test shrink" and event["delta_kb"] == 900_000 - 1048576


def test_the_actuator_writes_exactly_what_it_is_given(root: Path) -> None:
    """Whether a small change is worth writing is the step's (tests/test_balloon_step.py): the
    actuator writes even a 1000 KiB change, and the same target again, as given."""
    fs, xs = fs_xs(root)
    act = BalloonActuator(fs, xs)
    for target in (1048576 - 1000, 1048576 - 1000):
        res = act.apply(target, "tiny")
        assert res.written and target_of(root) == target
    with pytest.raises(InputError, match="must be positive"):
        act.apply(0, "nonsense")
    assert target_of(root) == 1048576 - 1000


def test_start_records_original_and_reset_goes_back_to_the_toolstack_target(root: Path) -> None:
    fs, xs = fs_xs(root)
    act = BalloonActuator(fs, xs)
    record = act.start()
    assert record["original_target_kb"] == 1048576 and record["toolstack_offset_kb"] == 0
    act.apply(600_000, "shrink")
    with capture_logs() as logs:
        assert act.reset() == 1048576
    assert target_of(root) == 1048576
    assert any(e["event"] == "balloon_reset" and e["previous_kb"] == 600_000 for e in logs)
    assert act.store.load_status()["active"] is False


def test_reset_after_a_crash_without_xenstore_uses_the_saved_original(root: Path) -> None:
    fs = HostFS(str(root))
    first = BalloonActuator(fs, None)
    first.start()
    first.apply(500_000, "shrink")
    # The process dies here; a new one (systemd ExecStopPost) resets.
    again = BalloonActuator(fs, None)
    assert again.reset() == 1048576
    assert target_of(root) == 1048576


def test_restart_after_a_crash_keeps_the_first_original(root: Path) -> None:
    fs = HostFS(str(root))
    BalloonActuator(fs, None).start()
    BalloonActuator(fs, None).apply(500_000, "shrink")
    record = BalloonActuator(fs, None).start()
    assert record["original_target_kb"] == 1048576


def test_reset_with_nothing_to_go_back_to(root: Path) -> None:
    act = BalloonActuator(HostFS(str(root)), None)
    with pytest.raises(InputError) as e:
        act.reset()
    assert "no xenstore memory/target and no saved original" in str(e.value)


def test_offset_is_learned_for_hvm_video_ram(root: Path) -> None:
    (root / TARGET).write_text("1040384\n")  # the driver's target is 8 MiB below memory/target
    fs, xs = fs_xs(root)
    act = BalloonActuator(fs, xs)
    assert act.start()["toolstack_offset_kb"] == 8192
    assert act.ceiling_kb() == 1048576 - 8192
    assert act.reset() == 1040384


def test_toolstack_override_is_noticed_and_logged(root: Path) -> None:
    fs, xs = fs_xs(root)
    act = BalloonActuator(fs, xs)
    act.start()
    assert not act.observe_toolstack(1048576)
    (root / "xenstore/memory/target").write_text("786432")
    with capture_logs() as logs:
        assert act.observe_toolstack(786432)
    assert logs[0]["event"] == "balloon_toolstack_override" and logs[0]["new_target_kb"] == 786432
    assert act.store.load_status()["toolstack_target_kb"] == 786432
    assert act.reset() == 786432


def test_unavailable_not_on_xen(tmp_path: Path) -> None:
    act = BalloonActuator(HostFS(str(FIXTURES / "balloon-legacy-4.19")), None)
    with pytest.raises(BalloonUnavailable) as e:
        act.reset()
    assert str(e.value).startswith("balloon unavailable: not running on Xen")


def test_unavailable_without_balloon_driver(root: Path) -> None:
    shutil.rmtree(root / "sys/devices/system/xen_memory")
    act = BalloonActuator(HostFS(str(root)), None)
    with pytest.raises(BalloonUnavailable) as e:
        act.start()
    assert str(e.value).startswith("balloon unavailable: no balloon driver")


def test_garbage_driver_files_are_one_line(root: Path) -> None:
    (root / TARGET).write_text("lots of memory\n")
    act = BalloonActuator(HostFS(str(root)), None)
    with pytest.raises(InputError) as e:
        act.apply(900_000, "x")
    assert str(e.value).startswith(BALLOON_TARGET) and "\n" not in str(e.value)
    (root / TARGET).write_text("1048576\n")
    (root / "sys/devices/system/xen_memory/xen_memory0/info/current_kb").unlink()
    with pytest.raises(InputError, match="current_kb: does not exist"):
        act.apply(900_000, "x")


def test_write_failure_is_one_line(root: Path) -> None:
    act = BalloonActuator(HostFS(str(root)), None)
    (root / TARGET).unlink()
    (root / TARGET).mkdir()
    with pytest.raises(InputError) as e:
        act._write(900_000)
    assert str(e.value).startswith(BALLOON_TARGET) and "\n" not in str(e.value)


def test_damaged_record_is_one_line(root: Path) -> None:
    path = root / RECORD_PATH.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    act = BalloonActuator(HostFS(str(root)), None)
    with pytest.raises(InputError, match="unreadable record"):
        act.start()
    path.write_text('{"original_target_kb": -5}')
    with pytest.raises(InputError, match="bad original_target_kb"):
        act.start()


# --- the controller (its loop is the daemon's: tests/test_balloon_job.py) ----------------------


def test_controller_object_ticks_for_an_outside_event_loop(root: Path) -> None:
    """The daemon can drive BalloonController itself: start, tick on its own events, stop."""
    quiet(root)
    fs, xs = fs_xs(root)
    now = [100.0]
    ctl = BalloonController(fs, xs, PressureConfig(), clock=lambda: now[0])
    ctl.start()
    assert ctl.arm_trigger(Host(fs)) is None  # fixture tree: never armed
    first = ctl.tick()
    assert first is not None and first.action == "shrink" and target_of(root) == first.target_kb
    now[0] += 1.0
    # A spike: the trigger fires while little memory is free.
    meminfo = root / "proc/meminfo"
    meminfo.write_text(meminfo.read_text().replace("MemFree:          612340 kB",
                                                   "MemFree:           20480 kB"))
    spike = ctl.tick(psi_trigger_fired=True)
    # The fixture's driver never moves, so a second after the shrink it is still 256 MiB short and
    # the stall reads as its own reclaim: the shrink stops where the driver is (back at 1 GiB).
    assert spike is not None and spike.action in ("grow", "stop"), spike
    assert spike.target_kb > first.target_kb and target_of(root) == spike.target_kb
    (root / "proc/vmstat").write_text("junk\n")
    now[0] += 1.0
    assert ctl.tick() is None and ctl.errors == 1
    ctl.stop()
    assert target_of(root) == 1048576


def test_set_target_floor_ceiling_and_undo(root: Path) -> None:
    fs, xs = fs_xs(root)
    act = BalloonActuator(fs, xs)
    # static-max 1 GiB: the hard minimum is max(256 MiB, 64 MiB) = 256 MiB.
    with pytest.raises(InputError) as e:
        act.set_target(256 * 1024 - 4)
    assert "below the hard minimum 262144 KiB" in str(e.value)
    assert target_of(root) == 1048576
    res = act.set_target(256 * 1024)
    assert res.written and target_of(root) == 262144
    assert act.load_record()["original_target_kb"] == 1048576
    assert act.reset() == 1048576


def test_set_target_without_xenstore_keeps_under_the_original(root: Path) -> None:
    act = BalloonActuator(HostFS(str(root)), None)
    with pytest.raises(InputError) as e:
        act.set_target(1048576 + 4)
    assert "above the ceiling 1048576 KiB (the driver's original target" in str(e.value)
    act.set_target(600_000)
    # Still the first original, not the lowered target.
    with pytest.raises(InputError):
        BalloonActuator(HostFS(str(root)), None).set_target(1048576 + 4)
    assert BalloonActuator(HostFS(str(root)), None).reset() == 1048576


# --- where a reset goes: pure (guestagent.balloon.common.decide_reset) ---------------------------


def test_decide_reset_sources_in_order() -> None:
    gib = 1048576
    assert decide_reset(gib, 2 * gib, 0, 500_000) == ResetTarget(gib, "toolstack memory/target")
    assert decide_reset(gib, 2 * gib, 4096, None) == ResetTarget(gib - 4096,
                                                                 "toolstack memory/target")
    assert decide_reset(None, gib, 0, 500_000) == ResetTarget(gib, "toolstack static-max")
    assert decide_reset(None, None, 0, 500_000) == ResetTarget(500_000, "saved original target")
    assert decide_reset(None, None, 0, None) is None
    # a damaged original of 1 KiB without xenstore: the hard floor, and what it replaced
    assert decide_reset(None, None, 0, 1) == ResetTarget(HARD_MINIMUM_ABS_KB,
                                                         "saved original target", 1)


@given(xs=st.none() | st.integers(1, 1 << 36), static_max=st.none() | st.integers(1, 1 << 36),
       offset=st.integers(0, 64 * 1024), original=st.none() | st.integers(1, 1 << 36))
def test_decide_reset_never_under_the_hard_floor_nor_over_static_max(
    xs: int | None, static_max: int | None, offset: int, original: int | None
) -> None:
    where = decide_reset(xs, static_max, offset, original)
    if where is None:
        assert xs is None and static_max is None and original is None
        return
    base = static_max if static_max is not None else (where.clamped_from_kb or where.target_kb)
    floor = hard_minimum_kb(base)
    assert where.target_kb >= floor
    if static_max is not None:
        assert where.target_kb <= max(static_max, floor)
    known = [v for v in (xs, static_max) if v is not None]
    wanted = max(1, min(known) - offset) if known else original
    # within the bounds the source's value is kept; moved, the value it replaced is said
    assert (where.target_kb if where.clamped_from_kb is None else where.clamped_from_kb) == wanted
    assert where.clamped_from_kb != where.target_kb


def test_the_status_file_gets_every_change_and_a_hold_every_30_s(root: Path) -> None:
    """At a decision every second the status file, rewritten whole, was half of a tick's CPU:
    a decision that changes nothing is written at most every 30 s; every change is."""
    from guestagent.balloon.controller import HOLD_RECORD_EVERY_S

    quiet(root)
    fs, xs = fs_xs(root)
    now = [100.0]
    ctl = BalloonController(fs, xs, PressureConfig(), clock=lambda: now[0])
    ctl.start()
    actions = []
    for _ in range(70):
        d = ctl.tick()
        assert d is not None
        actions.append(d.action)
        now[0] += 1.0
    recorded = ctl.actuator.store.load_status()["decisions"]
    changes = [a for a in actions if a != "hold"]
    holds = [d for d in recorded if d["action"] == "hold"]
    assert changes and [d["action"] for d in recorded if d["action"] != "hold"] == changes
    assert 1 <= len(holds) <= 70 / HOLD_RECORD_EVERY_S + 1
    times = [d["t"] for d in recorded]
    for a, b in zip(times, times[1:]):
        assert b > a
    assert all(b["t"] - a["t"] >= HOLD_RECORD_EVERY_S
               for a, b in zip(recorded, recorded[1:]) if b["action"] == "hold")


def test_a_hold_reads_the_driver_once_per_tick_and_reports_what_it_read(root: Path) -> None:
    """The tick's snapshot has just read the driver's target and current size; a hold (nothing
    written) reports those rather than reading both again (a tenth of a tick at one a second).
    A write still reads the driver back."""
    quiet(root)
    fs, xs = fs_xs(root)
    reads: list[str] = []
    real_read = fs.read_text

    def counting(host_path: str) -> str:
        reads.append(host_path)
        return real_read(host_path)

    fs.read_text = counting  # type: ignore[method-assign]
    now = [100.0]
    ctl = BalloonController(fs, xs, PressureConfig(), clock=lambda: now[0])
    ctl.start()
    holds = 0
    for _ in range(40):
        reads.clear()
        d = ctl.tick()
        now[0] += 1.0
        assert d is not None
        if d.action == "hold":
            holds += 1
            assert reads.count(BALLOON_TARGET) == 1, reads
            recorded = ctl.actuator.store.load_status()["decisions"][-1]
            assert recorded["target_kb"] == target_of(root)
        else:
            assert reads.count(BALLOON_TARGET) >= 2  # the snapshot, then the write read back
    assert holds
