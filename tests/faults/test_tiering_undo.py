"""Tiering's crash undo (issue 15 item 5, issue 14 item 6): the kdamonds in the undo journal.

Seen before: after ``kill -9`` of the daemon its kdamond kept migrating; the restarted daemon
called it "another DAMON user" and turned tiering off until a reboot; nothing could remove it.

Now the DAMON backend records what it adds (``nr_kdamonds`` before, each kdamond it adds) in
``tiering.json`` in the state directory before it writes ``nr_kdamonds``; ``guestagent tiering
--reset`` and the next start remove exactly those kdamonds (never another DAMON user's), one
logfmt line per step. All on fixture trees with the fake DAMON kernel of
``tests/test_tiering_damon.py``; the daemon itself runs in a subprocess that is really killed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from guestagent import cli
from guestagent.errors import ReadFailedError
from guestagent.host import TIERING_BACKENDS, BackendFactory, Host
from guestagent.hostfs import HostFS
from guestagent.tiering import commands
from guestagent.tiering.damon import KDAMONDS, NR_KDAMONDS, DamonBackend
from guestagent.tiering.journal import TieringJournal, journal_path, undo_kdamonds
from guestagent.tiering.model import Move, Plan
from guestagent.tiering.sysfs import BUSY_PAUSE_S, BUSY_TRIES, SysfsWriteError, retry_busy
from tests.faults.config_files import config_files_beside
from tests.test_tiering_damon import (
    FIXTURES,
    FakeDamonKernel,
    kd_path,
    make_tree,
    read,
    start_both_configured,
)

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
JOURNAL = "run/guestagent/tiering.json"

#: ``guestagent run`` with the fake DAMON kernel behind the sysfs writes (the kernel's memory of
#: which kdamonds ran is rebuilt from their state, as a restarted process finds it).
DAEMON = """
import sys
from pathlib import Path
from guestagent.tiering.damon import DamonBackend
from tests.test_tiering_damon import FIXTURES, FakeDamonKernel
root = Path(sys.argv[1])
kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
kernel.ran.update(i for i, s in enumerate(kernel.kdamond_states()) if s == "on")
from guestagent.cli import main
from guestagent.host import Host
backends = [("damon", lambda h: DamonBackend(h, writer=kernel.write))]
sys.exit(main(sys.argv[2:], make_host=lambda fs: Host(fs, tiering_backends=backends)))
"""


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, FakeDamonKernel]:
    root = make_tree(tmp_path)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    monkeypatch.setattr(sys.modules[__name__], "BACKENDS",
                        [("damon", lambda h: DamonBackend(h, writer=kernel.write))])
    return root, kernel


def lines(stream: io.StringIO, event: str) -> list[str]:
    return [ln for ln in stream.getvalue().splitlines() if f" event={event} " in f"{ln} "]


def journalled_backend(root: Path, kernel: FakeDamonKernel) -> DamonBackend:
    hostfs = HostFS(str(root))
    backend = DamonBackend(hostfs, writer=kernel.write)
    backend.take_journal(TieringJournal(hostfs, journal_path("/run/guestagent")).load())
    return backend


def started_then_killed(root: Path, kernel: FakeDamonKernel) -> None:
    """What ``kill -9`` leaves: the backend started and never stopped, both kdamonds configured
    (kdamond 0 on, kdamond 1 off)."""
    start_both_configured(journalled_backend(root, kernel))
    assert kernel.kdamond_states() == ["on", "off"]
    assert (root / JOURNAL).exists()


def started_then_killed_at(root: Path, kernel: FakeDamonKernel, first: int) -> None:
    """The same with the agent's kdamonds after ``first`` kdamonds of someone else."""
    start_both_configured(journalled_backend(root, kernel))
    assert kernel.kdamond_states()[first] == "on"


#: The world's tiering backends (its fake DAMON kernel), set by the fixture.
BACKENDS: Sequence[BackendFactory] = TIERING_BACKENDS


def host_of(hostfs: HostFS) -> Host:
    """The test's host: the world's backends, nothing swapped in a module."""
    return Host(hostfs, tiering_backends=BACKENDS)


def reset(root: Path, *extra: str) -> tuple[int, str]:
    """``guestagent tiering --reset`` (its parser and handler), stdout captured."""
    parser = argparse.ArgumentParser(prog="guestagent")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tiering", "--reset", *extra])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        hostfs = HostFS(str(root))
        rc = args.func(args, cli.Context(hostfs=hostfs, host=host_of(hostfs),
                                         config_files=config_files_beside(root)))
    return rc, out.getvalue()


# --- the journal ---------------------------------------------------------------------------------


def test_the_kdamonds_are_journalled_before_nr_kdamonds_is_written(
    world: tuple[Path, FakeDamonKernel],
) -> None:
    root, kernel = world
    seen: list[object] = []

    def write(path: str, value: str) -> None:
        if path == NR_KDAMONDS and not seen:
            seen.append(json.loads((root / JOURNAL).read_text()))
        kernel.write(path, value)

    hostfs = HostFS(str(root))
    backend = DamonBackend(hostfs, writer=write)
    backend.take_journal(TieringJournal(hostfs, journal_path("/run/guestagent")).load())
    backend.start(Plan((Move(0, 1, 4 * MIB),)))
    assert seen == [{"version": 1, "changes": [
        {"kind": "damon_nr_kdamonds", "path": NR_KDAMONDS, "bdf": "", "previous": "0",
         "applied": "2"},
        {"kind": "damon_kdamond", "path": kd_path(0), "bdf": "", "previous": "off",
         "applied": ""},
        {"kind": "damon_kdamond", "path": kd_path(1), "bdf": "", "previous": "off",
         "applied": ""},
    ]}]
    backend.stop()  # a clean undo removes the entries (and the file, now empty)
    assert read(root, NR_KDAMONDS) == "0"
    assert not (root / JOURNAL).exists()


def test_a_journal_that_cannot_be_written_means_no_kdamond(
    world: tuple[Path, FakeDamonKernel],
) -> None:
    root, kernel = world
    backend = journalled_backend(root, kernel)
    (root / "run").mkdir()
    (root / "run/guestagent").write_text("a file where the state directory should be\n")
    with pytest.raises(Exception, match="cannot record the undo"):
        backend.start(Plan((Move(0, 1, 4 * MIB),)))
    assert kernel.writes == []


# --- tiering --reset after kill -9 ---------------------------------------------------------------


def test_reset_after_a_kill_removes_the_kdamonds_and_is_idempotent(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    root, kernel = world
    started_then_killed(root, kernel)
    kernel.writes.clear()
    rc, out = reset(root)
    assert rc == 0, out
    assert kernel.writes == [
        (kd_path(1, "contexts/nr_contexts"), "0"),
        (kd_path(0, "state"), "off"),
        (kd_path(0, "contexts/nr_contexts"), "0"),
        (NR_KDAMONDS, "0"),
    ]
    assert read(root, NR_KDAMONDS) == "0"
    assert out.splitlines() == [
        "kdamond 1: emptied (the agent's migrate_cold kdamond)",
        "kdamond 0: turned off (was on) and emptied (the agent's migrate_cold kdamond)",
        "nr_kdamonds: 2 -> 0 (the agent's kdamonds removed)",
    ]
    undone = lines(logfmt, "undone")
    assert len(undone) == 3, logfmt.getvalue()
    assert all("component=journal" in ln and "owner=tiering" in ln for ln in undone)
    assert 'what="kdamond 0"' in undone[1] and "level=info" in undone[1]
    assert not (root / JOURNAL).exists()
    kernel.writes.clear()
    assert reset(root) == (0, "nothing to undo\n")
    assert kernel.writes == []


def test_a_kdamond_never_configured_is_already_off_and_empty_at_the_reset(
    world: tuple[Path, FakeDamonKernel],
) -> None:
    # Killed while node 0 alone was ever a source: node 1's kdamond was added (journalled) but
    # never given a context. The reset has nothing to write to it and still removes it.
    root, kernel = world
    journalled_backend(root, kernel).start(Plan((Move(0, 1, 4 * MIB),)))
    assert read(root, kd_path(1, "contexts/nr_contexts")) == "0"
    kernel.writes.clear()
    rc, out = reset(root)
    assert rc == 0, out
    assert kernel.writes == [
        (kd_path(0, "state"), "off"),
        (kd_path(0, "contexts/nr_contexts"), "0"),
        (NR_KDAMONDS, "0"),
    ]
    assert out.splitlines() == [
        "kdamond 1: already off and empty",
        "kdamond 0: turned off (was on) and emptied (the agent's migrate_cold kdamond)",
        "nr_kdamonds: 2 -> 0 (the agent's kdamonds removed)",
    ]
    assert not (root / JOURNAL).exists()


def test_reset_with_a_bad_configuration_still_works(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO, tmp_path: Path
) -> None:
    root, kernel = world
    started_then_killed(root, kernel)
    conf = tmp_path / "bad.toml"
    conf.write_text('[agent]\nstate_dir = "/run/guestagent"\n[tiering]\nsource_low_pct = "x"\n'
                    "interval_seconds = nan\n[nosuch]\n")
    rc, out = reset(root, "--config", str(conf))
    assert rc == 0, out
    assert read(root, NR_KDAMONDS) == "0"
    conf.write_text("[agent\nnot TOML at all")
    assert reset(root, "--config", str(conf))[0] == 0
    assert lines(logfmt, "tiering_reset_config_ignored"), logfmt.getvalue()


def test_reset_refuses_while_the_daemon_holds_the_state_directory(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    from guestagent import statelock

    root, kernel = world
    started_then_killed(root, kernel)
    fd = statelock.acquire(str(root / "run/guestagent"), "run")
    try:
        kernel.writes.clear()
        assert reset(root)[0] == 1
        assert kernel.writes == []
        (line,) = lines(logfmt, "tiering_undo_failed")
        assert "level=error" in line and "holds" in line
    finally:
        statelock.release(fd)


# --- another DAMON user --------------------------------------------------------------------------


def test_another_users_kdamond_is_never_touched(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    root, kernel = world
    kernel.write(NR_KDAMONDS, "1")  # someone's idle kdamond 0; the agent's go after it
    started_then_killed_at(root, kernel, first=1)
    # While the agent is dead, the other user configures and starts its kdamond 0.
    kernel.write(kd_path(0, "contexts/nr_contexts"), "1")
    kernel.write(kd_path(0, "contexts/0/operations"), "vaddr")
    kernel.write(kd_path(0, "state"), "on")
    kernel.writes.clear()
    rc, out = reset(root)
    assert rc == 0, out
    assert not [w for w in kernel.writes if w[0].startswith(kd_path(0))], kernel.writes
    assert (NR_KDAMONDS, "1") not in kernel.writes
    assert kernel.kdamond_states() == ["on", "off", "off"]
    assert read(root, kd_path(1, "contexts/nr_contexts")) == "0"
    assert "nr_kdamonds: left at 3: kdamonds [0] are in use" in out


def test_kdamonds_recreated_by_another_user_are_left_alone(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    """The agent's kdamonds were paused (off) when it died; another user rewrote nr_kdamonds
    (which recreates every kdamond), once to another count, once to the same count."""
    root, kernel = world
    backend = journalled_backend(root, kernel)
    backend.start(Plan((Move(0, 1, 4 * MIB),)))
    backend.update(Plan())  # paused: every kdamond off
    kernel.write(NR_KDAMONDS, "2")  # same count, fresh directories
    kernel.write(kd_path(0, "contexts/nr_contexts"), "1")
    kernel.write(kd_path(0, "contexts/0/operations"), "vaddr")
    kernel.write(kd_path(0, "state"), "on")
    kernel.writes.clear()
    rc, out = reset(root)
    assert rc == 0, out
    assert kernel.writes == []
    assert "kdamond 0: holds another DAMON user's setup (operations vaddr" in out
    assert not (root / JOURNAL).exists()

    backend = journalled_backend(root, kernel)
    kernel.write(kd_path(0, "state"), "off")
    kernel.write(kd_path(0, "contexts/nr_contexts"), "0")
    backend.start(Plan((Move(0, 1, 4 * MIB),)))
    backend.update(Plan())
    kernel.write(NR_KDAMONDS, "1")
    kernel.writes.clear()
    rc, out = reset(root)
    assert rc == 0 and kernel.writes == []
    assert "nr_kdamonds: 1, not the 4 the agent set" in out


# --- a damaged journal ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"kind": "damon_kdamond", "path": "/sys/kernel/mm/damon/admin/kdamonds/../../../x",
     "bdf": "", "previous": "off"},
    {"kind": "damon_kdamond", "path": kd_path(7), "bdf": "", "previous": "on\n"},
    {"kind": "damon_kdamond", "path": "/proc/sys/vm/overcommit_memory", "bdf": "",
     "previous": "off"},
    {"kind": "teleport", "path": kd_path(1), "bdf": "", "previous": "off"},
    ["not", "an", "object"],
])
def test_a_damaged_entry_is_skipped_alone(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO, bad: object
) -> None:
    root, kernel = world
    started_then_killed(root, kernel)
    data = json.loads((root / JOURNAL).read_text())
    data["changes"].insert(1, bad)
    (root / JOURNAL).write_text(json.dumps(data))
    rc, out = reset(root)
    assert rc == 0, out
    assert kernel.kdamond_states() == [] and read(root, NR_KDAMONDS) == "0"
    skipped = lines(logfmt, "undo_entry_skipped")
    assert len(skipped) == 1 and "changes[1]" in skipped[0], logfmt.getvalue()
    assert out.splitlines()[0].startswith("journal entry malformed, skipped: ")


def test_a_garbage_journal_is_one_error_line_and_touches_nothing(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    root, kernel = world
    started_then_killed(root, kernel)
    (root / JOURNAL).write_text("{not json")
    kernel.writes.clear()
    assert reset(root)[0] == 1
    assert kernel.writes == []
    (line,) = lines(logfmt, "tiering_undo_failed")
    assert "not JSON" in line and "level=error" in line


def test_a_failed_step_keeps_the_entries_for_the_next_reset(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    root, kernel = world
    started_then_killed(root, kernel)
    hostfs = HostFS(str(root))

    def refuse(path: str, value: str) -> None:
        raise OSError(13, "Permission denied")

    journal = TieringJournal(hostfs, journal_path("/run/guestagent")).load()
    report = undo_kdamonds(hostfs, refuse, journal)
    assert report.failures == 2  # both kdamonds; nr_kdamonds then not tried
    failed = lines(logfmt, "undo_failed")
    assert len(failed) == 2 and all("level=error" in ln for ln in failed), logfmt.getvalue()
    assert (root / JOURNAL).exists() and kernel.kdamond_states() == ["on", "off"]
    assert reset(root)[0] == 0
    assert read(root, NR_KDAMONDS) == "0"


# --- DAMON sysfs's lock: a passing EBUSY ------------------------------------------------------


class LockHeldOnce:
    """The fake kernel behind DAMON sysfs's trylock: each write to a file that takes the lock
    (``state``, ``nr_*``) finds it held by a kdamond once, EBUSY, and goes through when tried
    again (Linux mm/damon/sysfs.c: those stores ``mutex_trylock(&damon_sysfs_lock)`` and return
    -EBUSY; every running kdamond takes the lock for a moment each aggregation interval)."""

    def __init__(self, kernel: FakeDamonKernel) -> None:
        self.kernel = kernel
        self.refused: list[tuple[str, str]] = []

    def __call__(self, path: str, value: str) -> None:
        name = path.rsplit("/", 1)[1]
        if (name == "state" or name.startswith("nr_")) and (path, value) not in self.refused:
            self.refused.append((path, value))
            raise SysfsWriteError(path, value, errno.EBUSY)
        self.kernel.write(path, value)


def test_an_undo_without_retries_gives_up_on_a_passing_ebusy(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    """What the undo did before: one EBUSY and the agent's kdamond stays on, migrating."""
    root, kernel = world
    started_then_killed(root, kernel)
    hostfs = HostFS(str(root))
    journal = TieringJournal(hostfs, journal_path("/run/guestagent")).load()
    report = undo_kdamonds(hostfs, LockHeldOnce(kernel), journal)
    assert report.failures == 2 and kernel.kdamond_states() == ["on", "off"]
    assert "EBUSY" in logfmt.getvalue()


def test_the_undo_tries_a_passing_ebusy_again(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    root, kernel = world
    started_then_killed(root, kernel)
    hostfs = HostFS(str(root))
    journal = TieringJournal(hostfs, journal_path("/run/guestagent")).load()
    busy = LockHeldOnce(kernel)
    pauses: list[float] = []
    report = undo_kdamonds(hostfs, retry_busy(busy, sleep=pauses.append), journal)
    assert report.failures == 0, report.lines
    assert read(root, NR_KDAMONDS) == "0" and not (root / JOURNAL).exists()
    assert len(busy.refused) == 4 and pauses == [BUSY_PAUSE_S] * 4  # off, 2 x empty, shrink
    assert "undo_failed" not in logfmt.getvalue()


def test_a_lasting_ebusy_still_fails_and_other_errors_at_once() -> None:
    calls: list[str] = []
    pauses: list[float] = []

    def busy(path: str, value: str) -> None:
        calls.append(path)
        raise SysfsWriteError(path, value, errno.EBUSY if path == "busy" else errno.EACCES)

    write = retry_busy(busy, sleep=pauses.append)
    with pytest.raises(SysfsWriteError, match="EBUSY"):
        write("busy", "1")
    assert len(calls) == BUSY_TRIES and len(pauses) == BUSY_TRIES - 1
    calls.clear()
    with pytest.raises(SysfsWriteError, match="EACCES"):
        write("denied", "1")
    assert calls == ["denied"]


class StateReadHeldOnce(HostFS):
    """The read side of the same lock: since the fix for a use-after-free in ``state_show``
    (Linux 6.12.y and mainline, September 2025), a read of a kdamond's ``state`` takes the
    trylock too, and answers EBUSY while anyone holds it. Here each ``state`` file read finds it
    held once, as ``guestagent reset`` met it in the CI run of stop 33."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root))
        self.refused: list[str] = []

    def read_text(self, host_path: str) -> str:
        kdamond_state = host_path.startswith(KDAMONDS) and host_path.endswith("/state")
        if kdamond_state and host_path not in self.refused:
            self.refused.append(host_path)
            raise ReadFailedError(self.shown(host_path), errno.EBUSY,
                                  os.strerror(errno.EBUSY))
        return super().read_text(host_path)


def test_the_undo_tries_a_passing_ebusy_on_a_state_read_again(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    """The CI failure of stop 33: ``kdamond 2: unreadable (.../state: read failed: Device or
    resource busy); left as it is``. The undo's own reads (no reader passed: the default one)
    now try it again, and the agent's kdamond goes off."""
    root, kernel = world
    started_then_killed(root, kernel)
    hostfs = StateReadHeldOnce(root)
    journal = TieringJournal(hostfs, journal_path("/run/guestagent")).load()
    report = undo_kdamonds(hostfs, kernel.write, journal)
    assert report.failures == 0, report.lines
    assert hostfs.refused, "the fake never refused a state read"
    assert read(root, NR_KDAMONDS) == "0" and not (root / JOURNAL).exists()  # off, removed
    assert "undo_failed" not in logfmt.getvalue()


def test_a_lasting_ebusy_on_a_state_read_is_reported_and_left_alone(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    """A read that stays refused still fails after the retries: one line naming the file and
    the error, the kdamond and the journal left for the next reset."""
    root, kernel = world
    started_then_killed(root, kernel)
    hostfs = HostFS(str(root))
    journal = TieringJournal(hostfs, journal_path("/run/guestagent")).load()
    pauses: list[float] = []

    def always_busy(path: str) -> str:
        if path.endswith("/state"):
            raise ReadFailedError(path, errno.EBUSY, os.strerror(errno.EBUSY))
        return hostfs.read_text(path)

    read_busy = retry_busy(always_busy, sleep=pauses.append)
    report = undo_kdamonds(hostfs, kernel.write, journal, read_busy)
    assert report.failures == 2 and len(pauses) == 2 * (BUSY_TRIES - 1)  # the agent's two
    assert kernel.kdamond_states() == ["on", "off"] and (root / JOURNAL).exists()
    assert "Device or resource busy" in " ".join(report.lines)


def test_the_backends_stop_tries_a_passing_ebusy_on_a_state_read_again(
    world: tuple[Path, FakeDamonKernel]
) -> None:
    """The daemon's own stop reads each of its kdamonds' ``state`` before turning it off."""
    root, kernel = world
    hostfs = StateReadHeldOnce(root)
    backend = DamonBackend(hostfs, writer=kernel.write)
    backend.start(Plan((Move(0, 1, 4 * MIB),)))
    assert kernel.kdamond_states() == ["on", "off"]
    backend.stop()
    assert hostfs.refused and read(root, NR_KDAMONDS) == "0"  # turned off, then removed


# --- the daemon, really killed -------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_kill_9_of_the_daemon_then_a_restart_serves_then_reset(
    tmp_path: Path, world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    root, kernel = world
    first = daemon(root, tmp_path)
    try:
        wait_for("a kdamond on", lambda: "on" in states(root), first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    # The fault: process gone, journal there, the kdamond still migrating.
    assert (root / JOURNAL).exists()
    assert states(root) == ["on", "off"]

    # A restart undoes the predecessor's kdamonds first, then serves: its own kdamond goes on.
    second = daemon(root, tmp_path)
    seen = Peek(second)
    try:
        wait_for("the restart serving",
                 lambda: "event=job_started" in seen() and "on" in states(root), second)
        second.send_signal(signal.SIGKILL)  # and killed again
        second.wait(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
        stderr = seen.rest()
    assert "event=tiering_leftover_found" in stderr, stderr
    undone = [ln for ln in stderr.splitlines() if "event=undone" in ln]
    assert any('what="kdamond 0"' in ln and "turned off (was on)" in ln for ln in undone), stderr
    assert any("nr_kdamonds: 2 -> 0" in ln or "2 -> 0" in ln for ln in undone), stderr
    assert "event=job_off" not in stderr and "another DAMON user" not in stderr, stderr
    assert (root / JOURNAL).exists() and states(root) == ["on", "off"]

    # `guestagent reset` (the unit's ExecStopPost) removes what the second one left.
    kernel.ran.update(i for i, s in enumerate(states(root)) if s == "on")
    assert cli.main(["--root", str(root), "reset"], make_host=host_of,
                    config_files=config_files_beside(root)) == 0
    assert states(root) == [] and not (root / JOURNAL).exists()


def daemon(root: Path, tmp_path: Path) -> subprocess.Popen[str]:
    conf = tmp_path / "guestagent.toml"
    conf.write_text("[topology]\nenabled = false\n[devices]\nenabled = false\n"
                    "[balloon]\nenabled = false\n[tiering]\nenabled = true\n"
                    "interval_seconds = 1.0\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(root), "--root", str(root),
         "run", "--config", str(conf), "--conf-dir", str(tmp_path / "none.d"), "--role",
         "guest"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )


def wait_for(what: str, ok: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not ok():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def states(root: Path) -> list[str]:
    """The fake sysfs's kdamond states ([] while the fake kernel is recreating them)."""
    kd = root / "sys/kernel/mm/damon/admin/kdamonds"
    try:
        return [(kd / str(i) / "state").read_text().strip()
                for i in range(int((kd / "nr_kdamonds").read_text()))]
    except (OSError, ValueError):
        return []


class Peek:
    """A child's stderr read as it comes (never blocking), all of it kept."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.text = ""

    def __call__(self) -> str:
        import select

        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536).decode()
            if not chunk:
                break
            self.text += chunk
        return self.text

    def rest(self) -> str:
        self()
        return self.text + (self.proc.communicate()[1] or "")
