"""The daemon's balloon job (guestagent.balloon.job) on an event loop with a fake clock, against a
copy of the balloon-pv-1g fixture tree: what ``balloon run``'s own loop did before it became the
daemon running this job, each behaviour with its test (issue 14 item 2):

* it shrinks a quiet guest and records every decision; stop puts the target back at the ceiling;
* it gives up after three failed ticks in a row: the daemon stops it (reset) and a one-job
  command fails; a tick that failed while xenstore is down is not counted;
* the PSI trigger's descriptor hanging up drops the trigger (one warning), never a tick;
* no trigger is armed on a fixture tree; a refused watch is one warning, the job runs on;
* a toolstack write to ``memory/target`` is followed at once (the watch), not at the interval.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from guestagent.balloon.actuator import BalloonActuator
from guestagent.balloon.job import HUB, MAX_CONSECUTIVE_ERRORS, BalloonJob
from guestagent.balloon.signals import BALLOON_TARGET, DirectoryXenstore
from guestagent.config import Config, defaults
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import Daemon, JobContext, XenstoreHub
from guestagent.errors import GuestAgentError
from guestagent.host import Host
from guestagent.hostfs import HostFS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TARGET = BALLOON_TARGET.lstrip("/")
Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dest = tmp_path / "balloon-pv-1g"
    shutil.copytree(FIXTURES / "balloon-pv-1g", dest)
    (dest / "proc/pressure/memory").write_text(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1843201\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=912040\n"
    )
    return dest


def target_of(root: Path) -> int:
    return int((root / TARGET).read_text())


def events(logs: Logs, name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def balloon_config(policy: str = "pressure") -> Config:
    cfg = defaults()
    cfg.values["balloon"].update(enabled=True, policy=policy)
    return cfg


class Bench:
    """One job on a loop with a fake clock; ``ended`` holds what it told the daemon."""

    def __init__(self, root: Path, policy: str = "pressure", connect: Any = None,
                 job: BalloonJob | None = None, host: Host | None = None) -> None:
        self.clock = Clock()
        self.loop = EventLoop(clock=self.clock)
        self.hub = XenstoreHub(self.loop, connect or self._no_xenstore)
        self.ended: list[tuple[str, str | None]] = []
        self.hostfs = HostFS(str(root)) if host is None else host.fs
        self.ctx = JobContext(self.loop, self.hostfs, balloon_config(policy), self.hub, "guest",
                              lambda name, error: self.ended.append((name, error)), host=host)
        stand_in = DirectoryXenstore(self.hostfs, "/xenstore")
        self.job = job or BalloonJob(lambda flags: None, lambda: None,
                                     xenstore=HUB if connect else stand_in)

    @staticmethod
    def _no_xenstore() -> Any:
        raise GuestAgentError("no xenstore in this test")

    def advance(self, seconds: float) -> None:
        """Time passes; the loop runs what is due (never waits on the real clock)."""
        self.clock.now += seconds
        self.loop.run_once(max_wait=0)

    def close(self) -> None:
        self.hub.close()
        self.loop.close()


@pytest.fixture
def bench(root: Path) -> Any:
    made: list[Bench] = []

    def make(**kw: Any) -> Bench:
        made.append(Bench(root, **kw))
        return made[-1]

    yield make
    for b in made:
        b.close()


def test_shrinks_a_quiet_guest_records_each_change_and_stop_resets(
    root: Path, bench: Any, log_events: Logs
) -> None:
    b = bench()
    b.job.start(b.ctx)  # the first tick is at start
    journal = root / "run/guestagent/balloon.json"
    written = (journal.stat().st_ino, journal.stat().st_mtime_ns)
    for _ in range(2):
        b.advance(5.0)  # [balloon] interval_seconds
    assert b.job.status()["ticks"] == 3
    assert target_of(root) < 1048576
    sets = events(log_events, "balloon_target_set")
    assert sets and all(e["reason"].startswith("quiet") for e in sets)
    # The undo journal is written when the undo changes (the start), not on every tick.
    assert (journal.stat().st_ino, journal.stat().st_mtime_ns) == written
    assert BalloonActuator(b.hostfs, None).load_record()["original_target_kb"] == 1048576
    status = BalloonActuator(b.hostfs, None).store.load_status()
    # Every change is in the status file (a hold at most every 30 s: the next test).
    changes = events(log_events, "balloon_decision")
    assert status["active"] and len(status["decisions"]) == len(changes) >= 1
    assert [d["action"] for d in status["decisions"]] == [e["action"] for e in changes]
    b.job.stop()
    assert target_of(root) == 1048576
    assert events(log_events, "balloon_controller_stop")[0]["ticks"] == 3


def test_classic_on_the_fixture(root: Path, bench: Any) -> None:
    b = bench(policy="classic")
    b.job.start(b.ctx)
    # The fixture's own numbers: MemTotal 998576, Committed_AS 412656, totalreserve 2455 pages.
    assert target_of(root) == 988980
    b.job.stop()


def test_gives_up_after_repeated_bad_input_and_the_reset_runs(
    root: Path, bench: Any, log_events: Logs
) -> None:
    b = bench()
    b.job.start(b.ctx)
    assert target_of(root) < 1048576  # shrunk: the reset below has something to undo
    (root / "proc/meminfo").write_text("garbage\n")
    for _ in range(MAX_CONSECUTIVE_ERRORS - 1):
        b.advance(5.0)
    assert b.ended == []  # two in a row: not yet
    b.advance(5.0)
    failed = events(log_events, "balloon_tick_failed")
    assert len(failed) == 3 and "/proc/meminfo line 1" in failed[0]["error"]
    assert [e["consecutive"] for e in failed] == [1, 2, 3]
    assert b.ended == [("balloon", "3 ticks in a row failed; the target goes back to the ceiling")]
    assert events(log_events, "balloon_given_up")
    b.advance(5.0)  # given up: no more ticks while the daemon stops it
    assert len(events(log_events, "balloon_tick_failed")) == 3
    b.job.stop()
    assert target_of(root) == 1048576


def test_a_good_tick_clears_the_count(root: Path, bench: Any) -> None:
    b = bench()
    b.job.start(b.ctx)
    meminfo = (root / "proc/meminfo").read_text()
    for _ in range(3):
        (root / "proc/meminfo").write_text("garbage\n")
        b.advance(5.0)
        b.advance(5.0)
        (root / "proc/meminfo").write_text(meminfo)
        b.advance(5.0)
    assert b.ended == []
    b.job.stop()


def test_an_actuator_failure_counts_as_a_failed_tick(
    root: Path, bench: Any, monkeypatch: pytest.MonkeyPatch, log_events: Logs
) -> None:
    """balloon run's loop ended (after its reset) on any exception; the job counts it instead."""
    b = bench()
    b.job.start(b.ctx)

    def refuse(*args: Any, **kw: Any) -> Any:
        raise OSError(5, "Input/output error")

    # every tick hands the actuator the toolstack's target (a hold no longer reads the driver
    # back: the tick's snapshot has just read it)
    assert b.job._ctl is not None
    monkeypatch.setattr(b.job._ctl.actuator, "observe_toolstack", refuse)  # this job's only
    for _ in range(3):
        b.advance(5.0)
    assert [e["kind"] for e in events(log_events, "balloon_tick_failed")] == ["OSError"] * 3
    assert b.ended and b.ended[0][0] == "balloon"
    monkeypatch.undo()
    b.job.stop()
    assert target_of(root) == 1048576


def test_failed_ticks_while_xenstore_is_down_do_not_give_up(
    root: Path, bench: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub reconnects by itself: a reset then could not read the ceiling either."""
    b = bench()
    b.job.start(b.ctx)
    b.job._xenstore = HUB  # as under the daemon (the stand-in reads the files)
    b.hub.lost = "xenstored went away"
    monkeypatch.setattr(b.hub, "client", lambda: None)
    (root / "proc/meminfo").write_text("garbage\n")
    for _ in range(5):
        b.advance(5.0)
    assert b.ended == []
    b.hub.lost = None
    for _ in range(3):
        b.advance(5.0)
    assert b.ended and b.ended[0][0] == "balloon"
    b.job._xenstore = DirectoryXenstore(b.hostfs, "/xenstore")
    b.job.stop()


class HangingTrigger:
    """A PSI trigger whose descriptor is a pipe: closing the write end is a hang-up."""

    spec = "some 150000 1000000"
    widened = False

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.closed = False

    def fileno(self) -> int:
        return self.r

    def close(self) -> None:
        if not self.closed:
            os.close(self.r)
            self.closed = True


def test_a_trigger_that_hangs_up_is_dropped_without_a_tick(
    root: Path, bench: Any, log_events: Logs
) -> None:
    trigger = HangingTrigger()
    armed: list[tuple[str, int, int]] = []

    def open_trigger(hostfs: HostFS, kind: str, stall_us: int, window_us: int) -> HangingTrigger:
        armed.append((kind, stall_us, window_us))
        return trigger

    b = bench(host=Host(HostFS(str(root)), open_psi_trigger=open_trigger))
    b.job.start(b.ctx)
    assert b.job.status()["psi_trigger"] is True and trigger.r in b.loop.readers
    assert armed == [("some", 150_000, 1_000_000)]  # [balloon] trigger_* through ctx.host
    os.close(trigger.w)
    b.loop.run_once(max_wait=1.0)  # POLLHUP: at once
    assert events(log_events, "psi_trigger_lost")[0]["fallback"] == "interval timer only"
    assert trigger.closed and trigger.r not in b.loop.readers
    assert b.job.status()["psi_trigger"] is False
    assert b.job.status()["ticks"] == 1, "a hang-up is not pressure: no tick"
    b.advance(5.0)
    assert b.job.status()["ticks"] == 2  # the interval goes on
    b.job.stop()


def test_no_trigger_is_armed_on_a_fixture_tree(root: Path, bench: Any, log_events: Logs) -> None:
    before = (root / "proc/pressure/memory").read_bytes()
    b = bench()
    b.job.start(b.ctx)
    assert events(log_events, "balloon_controller_start")[0]["psi_trigger"] is None
    assert events(log_events, "psi_trigger_skipped")
    assert (root / "proc/pressure/memory").read_bytes() == before
    b.job.stop()


def test_refuses_without_a_driver(tmp_path: Path) -> None:
    b = Bench(FIXTURES / "balloon-legacy-4.19")
    try:
        with pytest.raises(GuestAgentError, match="balloon"):
            b.job.start(b.ctx)
    finally:
        b.close()


class RefusingClient:
    """A xenstore client that answers reads from the fixture's files and refuses watches."""

    def __init__(self, hostfs: HostFS) -> None:
        self.files = DirectoryXenstore(hostfs, "/xenstore")
        self.r, self.w = os.pipe()
        self.broken = None

    def read(self, path: str) -> bytes:
        return self.files.read(path)

    def watch(self, path: str, token: str) -> None:
        raise GuestAgentError("EACCES: watch refused")

    def fileno(self) -> int:
        return self.r

    def pending_events(self) -> list[Any]:
        return []

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def test_a_refused_watch_is_one_warning_and_the_job_runs(
    root: Path, bench: Any, log_events: Logs
) -> None:
    b = bench(connect=lambda: RefusingClient(HostFS(str(root))))
    b.job.start(b.ctx)
    warning = events(log_events, "xenstore_watch_failed")
    assert warning and warning[0]["fallback"] == "memory/target read per tick"
    assert warning[1]["fallback"] == "memory/static-max read per tick"
    assert events(log_events, "balloon_controller_start")[0]["xenstore_watch"] is False
    assert b.job.status()["ticks"] == 1
    b.job.stop()


def test_follows_a_toolstack_write_at_once(
    root: Path, bench: Any, xs_connect: Any, xs_server: Any, log_events: Logs
) -> None:
    """A toolstack write to memory/target wakes the job through the watch (the clock stands
    still: no interval passes) and the policy follows it."""
    b = bench(connect=lambda: xs_connect(5))  # domain 5: target 524288, static-max 1048576
    b.job.start(b.ctx)
    decisions = BalloonActuator(b.hostfs, None).store.load_status()["decisions"]
    # First tick: the driver's 1048576 is above memory/target 524288, so it is capped.
    assert decisions[0]["target_kb"] == 524288
    assert events(log_events, "balloon_controller_start")[0]["xenstore_watch"] is True
    xs_server.set_node("/local/domain/5/memory/target", b"786432")
    for _ in range(20):
        b.loop.run_once(max_wait=0.5)
        decisions = BalloonActuator(b.hostfs, None).store.load_status()["decisions"]
        if any(d["action"] == "follow" for d in decisions):
            break
    follows = [d for d in decisions if d["action"] == "follow"]
    assert follows and "memory/target 524288 -> 786432" in follows[0]["reason"]
    assert follows[0]["t"] == 0.0  # the fake clock never moved: woken by the watch
    assert events(log_events, "balloon_toolstack_override")
    b.job.stop()


def test_under_the_daemon_a_job_that_gives_up_is_stopped_and_fails_a_one_job_run(
    root: Path, log_events: Logs
) -> None:
    """Daemon.end_job: the job stopped from the loop (its reset ran), the one-job run over, and
    ``failure`` says why (``balloon run`` exits 1)."""
    clock = Clock()
    job = BalloonJob(lambda flags: None, lambda: None,
                     xenstore=DirectoryXenstore(HostFS(str(root)), "/xenstore"))
    cfg = balloon_config()
    cfg.values["agent"]["state_dir"] = "/run/guestagent"
    daemon = Daemon(HostFS(str(root)), cfg, lambda: cfg, lambda c, r: [job], "guest",
                    loop=EventLoop(clock=clock), one_job=True,
                    xenstore_connect=Bench._no_xenstore)
    daemon.start()
    try:
        assert target_of(root) < 1048576
        (root / "proc/meminfo").write_text("garbage\n")
        for _ in range(40):
            clock.now += 1.0
            daemon.loop.run_once(max_wait=0)
            if daemon.failure is not None:
                break
        assert daemon.failure is not None and "3 ticks in a row failed" in daemon.failure
        assert target_of(root) == 1048576
        assert events(log_events, "job_gave_up")[0]["job"] == "balloon"
        assert not daemon.records, "one job: the daemon shut down"
    finally:
        daemon.shutdown("test over")
        daemon.loop.close()


def test_a_reload_keeps_the_toolstack_offset_learned_at_start(root: Path, bench: Any) -> None:
    """An HVM guest: the toolstack's memory/target is the driver's target plus the video RAM
    (8 MiB here). The job learns that offset at start; a reload (SIGHUP) used to replace the
    configuration without it, and the ceiling rose by the offset."""
    for name in ("target", "static-max"):
        (root / "xenstore/memory" / name).write_text(f"{1048576 + 8192}\n")
    b = bench()
    b.job.start(b.ctx)
    assert b.job.status()["ceiling_kb"] == 1048576
    b.job.reload(balloon_config())
    b.advance(5.0)
    assert b.job.status()["ticks"] == 2 and b.job.status()["ceiling_kb"] == 1048576
    b.job.stop()
    assert target_of(root) == 1048576  # the reset goes to memory/target minus the offset


def test_watched_toolstack_nodes_are_read_on_a_write_not_at_every_decision(
    root: Path, bench: Any, xs_connect: Any, xs_server: Any, log_events: Logs
) -> None:
    """Both toolstack nodes are watched: decisions a second apart use the values read last (no
    xenstore round trip), and a write to memory/static-max (``xl mem-max``) is read and followed
    at once, the ceiling with it."""
    b = bench(connect=lambda: xs_connect(5))  # domain 5: target 524288, static-max 1048576
    b.job.start(b.ctx)
    start = events(log_events, "balloon_controller_start")[0]
    assert start["xenstore_watched"] == ["memory/target", "memory/static-max"]
    for _ in range(5):  # the watches' first events, read off the connection
        b.loop.run_once(max_wait=0.2)
    settled = b.job.status()["xenstore_reads"]
    ticks = b.job.status()["ticks"]
    for _ in range(20):
        b.advance(1.0)
    assert b.job.status()["ticks"] >= ticks + 20
    assert b.job.status()["xenstore_reads"] == settled  # 20 decisions, no read
    xs_server.set_node("/local/domain/5/memory/target", b"1048576")
    xs_server.set_node("/local/domain/5/memory/static-max", b"917504")
    for _ in range(20):
        b.loop.run_once(max_wait=0.2)
        if b.job.status()["ceiling_kb"] == 917504:
            break
    assert b.job.status()["ceiling_kb"] == 917504  # min(target, static-max), with no interval
    assert b.job.status()["xenstore_reads"] > settled
    b.job.stop()


def test_a_refused_watch_reads_the_node_at_every_decision(
    root: Path, bench: Any, log_events: Logs
) -> None:
    b = bench(connect=lambda: RefusingClient(HostFS(str(root))))
    b.job.start(b.ctx)
    assert [w["path"] for w in events(log_events, "xenstore_watch_failed")] == [
        "memory/target", "memory/static-max"]
    before = b.job.status()["xenstore_reads"]
    for _ in range(3):
        b.advance(1.0)
    assert b.job.status()["xenstore_reads"] == before + 2 * 3
    b.job.stop()


def test_a_resume_reads_the_watched_nodes_again(
    root: Path, bench: Any, xs_connect: Any, log_events: Logs
) -> None:
    b = bench(connect=lambda: xs_connect(5))
    b.job.start(b.ctx)
    for _ in range(5):
        b.loop.run_once(max_wait=0.2)
    settled = b.job.status()["xenstore_reads"]
    b.job.republish("resumed")
    assert b.job.status()["xenstore_reads"] == settled + 2
    b.job.stop()


@pytest.mark.parametrize(("guest_type", "policy", "allow", "running", "said"), [
    ("HVM", "pressure", False, "none", "balloon_hvm_held"),
    ("HVM", "classic", False, "none", "balloon_hvm_held"),
    ("HVM", "pressure", True, "pressure", "balloon_hvm_unproven"),
    ("HVM", "none", False, "none", None),
    ("PV", "pressure", False, "pressure", None),
    (None, "pressure", False, "pressure", None)])
def test_an_hvm_guest_holds_the_ceiling_unless_allowed(
    root: Path, bench: Any, log_events: Logs, guest_type: str | None, policy: str, allow: bool,
    running: str, said: str | None
) -> None:
    """HVM guests on the test bed were lost in 3 of 16 `pressure` runs (guest kernel panics
    while the driver gave memory back, benchmarks/README.md): there a policy that moves memory
    runs as `none` (the ceiling held) and says so once, unless ``allow_hvm``, which runs it with
    one warning; a PV guest, an unknown type or `none` say nothing."""
    if guest_type is not None:
        (root / "sys/hypervisor/guest_type").write_text(guest_type + "\n")
    b = bench(policy=policy)
    b.ctx.config.values["balloon"]["allow_hvm"] = allow
    b.job.start(b.ctx)
    for _ in range(3):
        b.advance(5.0)
    warnings = [e for e in log_events if e["event"].startswith("balloon_hvm_")]
    assert [e["event"] for e in warnings] == ([said] if said else [])
    if said:
        assert warnings[0]["log_level"] == "warning" and warnings[0]["policy"] == policy
        assert "docs/BALLOON.md" in warnings[0]["reason"]
    status = b.job.status()
    assert status["policy"] == running and status["ticks"] == 4
    assert status["held_in_hvm"] is (said == "balloon_hvm_held")
    if running == "none":
        assert target_of(root) == 1048576  # the ceiling: nothing moved
    b.job.stop()


def test_a_reload_that_allows_hvm_runs_the_policy_and_says_so_once(
    root: Path, bench: Any, log_events: Logs
) -> None:
    (root / "sys/hypervisor/guest_type").write_text("HVM\n")
    b = bench(policy="pressure")
    b.job.start(b.ctx)
    assert b.job.status()["policy"] == "none"
    allowed = balloon_config("pressure")
    allowed.values["balloon"]["allow_hvm"] = True
    b.job.reload(allowed)
    b.job.reload(allowed)
    assert b.job.status()["policy"] == "pressure" and not b.job.status()["held_in_hvm"]
    said = [e["event"] for e in log_events if e["event"].startswith("balloon_hvm_")]
    assert said == ["balloon_hvm_held", "balloon_hvm_unproven"]
    b.job.stop()
