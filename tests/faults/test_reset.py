"""``guestagent reset`` (issue 14 item 6, issue 15 "undo that always works"): the unit's only
``ExecStopPost`` undoes everything the agent may have changed, from the state files alone, in
order: the balloon target back to the ceiling (and the allocation guard), the devices' changes
(``devices.json``), the agent's own kdamonds (``tiering.json``), ``numa_balancing``
(``numa.json``). A journal that is no longer JSON still gives back every whole entry it holds
(the cases at the end).

Seen before: three ``ExecStopPost`` lines, each reading the configuration its own way; a part
that failed was hidden by ``-``. Now one command: a part that fails is one error-level logfmt line
naming it (``event=reset_failed part=...``), the other parts still run, and the exit status is 1.

On one fixture tree holding the three features' files: the devices fixture (devices-2node), the
fake DAMON kernel of ``tests/test_tiering_damon.py`` (damon-6.12) and the balloon fixture with its
stand-in xenstore (balloon-pv-1g).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from guestagent import cli, log
from guestagent import reset as reset_mod
from guestagent.host import TIERING_BACKENDS, BackendFactory, Host
from guestagent.hostfs import HostFS
from guestagent.tiering.damon import NR_KDAMONDS, DamonBackend
from guestagent.tiering.journal import TieringJournal, journal_path
from tests.faults.config_files import config_files_beside
from tests.test_tiering_damon import (
    FIXTURES,
    FakeDamonKernel,
    make_tree,
    read,
    start_both_configured,
)

MIB = 1 << 20
VF = "0000:00:05.0"
IRQ = "proc/irq/29/smp_affinity_list"
NUMA_NODE = f"sys/devices/pci0000:00/{VF}/numa_node"
TARGET = "sys/devices/system/xen_memory/xen_memory0/target_kb"
CEILING = 1048576  # balloon-pv-1g's xenstore memory/target


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, FakeDamonKernel]:
    """One guest's tree: tiering-2node with DAMON, the devices and the balloon fixtures."""
    root = make_tree(tmp_path)
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True, dirs_exist_ok=True)
    shutil.copytree(FIXTURES / "balloon-pv-1g", root, dirs_exist_ok=True)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    monkeypatch.setattr(sys.modules[__name__], "BACKENDS",
                        [("damon", lambda h: DamonBackend(h, writer=kernel.write))])
    return root, kernel


#: The world's tiering backends (its fake DAMON kernel), set by the fixture.
BACKENDS: Sequence[BackendFactory] = TIERING_BACKENDS


def host_of(hostfs: HostFS) -> Host:
    """The test's host: the world's backends, a default route on eth0 for the devices part,
    nothing swapped in a module."""
    return Host(hostfs, tiering_backends=BACKENDS, open_default_interfaces=lambda _fs: ["eth0"])


def events(stream: io.StringIO, event: str) -> list[str]:
    return [ln for ln in stream.getvalue().splitlines() if f" event={event} " in f"{ln} "]


def errors(stream: io.StringIO) -> list[str]:
    return [ln for ln in stream.getvalue().splitlines() if "level=error" in ln]


def reset(root: Path, *extra: str) -> tuple[int, str]:
    """``guestagent reset`` (its parser and handler), stdout captured."""
    parser = argparse.ArgumentParser(prog="guestagent")
    reset_mod.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["reset", *extra])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        hostfs = HostFS(str(root))
        rc = args.func(args, cli.Context(hostfs=hostfs, host=host_of(hostfs),
                                         config_files=config_files_beside(root)))
    return rc, out.getvalue()


def change_everything(root: Path, kernel: FakeDamonKernel, state_dir: str = "/run/guestagent",
                      ) -> None:
    """What a killed daemon leaves: the balloon shrunk, a device bound to node 1 (IRQ and
    numa_node), the agent's kdamond migrating."""
    (root / TARGET).write_text(f"{600 * 1024}\n")
    parser = argparse.ArgumentParser(prog="guestagent")
    from guestagent.devices import commands as devices_commands

    devices_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["devices", "apply", "--node", f"{VF}=1"])
    with contextlib.redirect_stdout(io.StringIO()):
        ctx = cli.Context(hostfs=HostFS(str(root)), config_files=config_files_beside(root))
        assert args.func(args, ctx) == 0
    assert (root / IRQ).read_text() == "2-3"
    assert (root / NUMA_NODE).read_text() == "1"
    hostfs = HostFS(str(root))
    backend = DamonBackend(hostfs, writer=kernel.write)
    backend.take_journal(TieringJournal(hostfs, journal_path(state_dir)).load())
    start_both_configured(backend)
    assert kernel.kdamond_states() == ["on", "off"]


def assert_devices_undone(root: Path, state_dir: str = "run/guestagent") -> None:
    assert (root / IRQ).read_text() == "0-3"
    assert (root / NUMA_NODE).read_text() == "-1"
    assert not (root / state_dir / "devices.json").exists()


def assert_tiering_undone(root: Path, state_dir: str = "run/guestagent") -> None:
    assert read(root, NR_KDAMONDS) == "0"
    assert not (root / state_dir / "tiering.json").exists()


def test_reset_undoes_all_three_parts_in_order(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    root, kernel = world
    change_everything(root, kernel)
    rc, out = reset(root)
    assert rc == 0, (out, logfmt.getvalue())
    assert (root / TARGET).read_text().strip() == str(CEILING)
    assert_devices_undone(root)
    assert_tiering_undone(root)
    lines = out.splitlines()
    assert lines[0] == f"balloon: target reset to {CEILING} KiB (was {600 * 1024} KiB)"
    assert f"devices: /{IRQ}: restored '0-3'" in lines
    assert lines[-1] == "tiering: nr_kdamonds: 2 -> 0 (the agent's kdamonds removed)"
    parts = [line.split(":")[0] for line in lines]
    assert parts == sorted(parts, key=reset_mod.PARTS.index), lines
    assert errors(logfmt) == [], logfmt.getvalue()
    # Idempotent: a second run finds nothing.
    assert reset(root) == (0, "nothing to undo\n")


def test_nothing_to_undo_is_exit_0_and_one_line(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    root, kernel = world
    assert reset(root) == (0, "nothing to undo\n")
    assert kernel.writes == []
    assert (root / TARGET).read_text().strip() == str(CEILING)
    nothing = events(logfmt, "reset_nothing")
    assert [ln.split(" part=")[1].split()[0] for ln in nothing] == list(reset_mod.PARTS)
    assert "target at the ceiling already" in nothing[0]


def test_nothing_to_undo_on_a_bare_tree(tmp_path: Path, logfmt: io.StringIO) -> None:
    """No balloon driver, no DAMON, no state directory: nothing to undo, not an error."""
    root = tmp_path / "bare"
    root.mkdir()
    assert reset(root) == (0, "nothing to undo\n")
    assert errors(logfmt) == [], logfmt.getvalue()


@pytest.mark.parametrize(("part", "state_file"),
                         [("devices", "devices.json"), ("tiering", "tiering.json")])
def test_a_corrupt_state_file_is_one_line_and_the_other_parts_are_undone(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO, part: str, state_file: str
) -> None:
    root, kernel = world
    change_everything(root, kernel)
    (root / "run/guestagent" / state_file).write_text('{"version": 1, "changes": [trunc')
    rc, out = reset(root)
    assert rc == 1, out
    (line,) = errors(logfmt)
    assert " event=reset_failed " in line and f"part={part}" in line, line
    assert f"/run/guestagent/{state_file}" in line and "not JSON" in line, line
    assert (root / TARGET).read_text().strip() == str(CEILING)
    if part == "devices":
        assert_tiering_undone(root)
        assert (root / IRQ).read_text() == "2-3"  # nothing of it could be read
    else:
        assert_devices_undone(root)
        assert kernel.kdamond_states() == ["on", "off"]
    assert not any(ln.startswith(f"{part}:") for ln in out.splitlines()), out
    assert "nothing to undo" not in out


def test_a_balloon_that_cannot_be_read_is_one_line_and_the_others_are_undone(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    root, kernel = world
    change_everything(root, kernel)
    (root / TARGET).write_text("garbage\n")
    rc, out = reset(root)
    assert rc == 1, out
    (line,) = errors(logfmt)
    assert " event=reset_failed " in line and "part=balloon" in line and "target_kb" in line
    assert_devices_undone(root)
    assert_tiering_undone(root)
    assert not out.startswith("balloon:"), out


def test_a_part_that_breaks_unexpectedly_is_one_line(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No traceback, and the parts after it still run."""
    root, kernel = world
    change_everything(root, kernel)

    def broken(path: str, value: str) -> None:
        raise RuntimeError("the kernel said something new")

    monkeypatch.setattr(sys.modules[__name__], "BACKENDS",
                        [("damon", lambda h: DamonBackend(h, writer=broken))])
    (root / "run/guestagent/devices.json").write_text("[]")
    rc, out = reset(root)
    assert rc == 1
    failed = events(logfmt, "reset_failed")
    assert [ln.split(" part=")[1].split()[0] for ln in failed] == ["devices", "tiering"]
    assert "internal error: RuntimeError: the kernel said something new" in failed[1]
    assert "Traceback" not in logfmt.getvalue()
    assert out.startswith("balloon: target reset to")


def test_no_configuration_needed(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO, tmp_path: Path
) -> None:
    """A file that is not TOML at all: the default state directory, one warning, all undone."""
    root, kernel = world
    change_everything(root, kernel)
    (tmp_path / "guestagent.toml").write_text("[agent\nthis is not TOML")
    rc, out = reset(root)
    assert rc == 0, (out, logfmt.getvalue())
    assert (root / TARGET).read_text().strip() == str(CEILING)
    assert_devices_undone(root)
    assert_tiering_undone(root)
    (warning,) = events(logfmt, "reset_config_ignored")
    assert "level=warning" in warning


def test_a_configuration_run_would_refuse_still_names_the_state_directory(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO, tmp_path: Path
) -> None:
    root, kernel = world
    (tmp_path / "guestagent.toml").write_text('[agent]\nstate_dir = "/run/ga"\n')
    change_everything(root, kernel, state_dir="/run/ga")
    assert (root / "run/ga/devices.json").exists() and (root / "run/ga/tiering.json").exists()
    (tmp_path / "guestagent.toml").write_text(
        '[agent]\nstate_dir = "/run/ga"\n[devices]\nnode_overrides = ["0000:00:05.0=banana"]\n'
        '[tiering]\ninterval_seconds = nan\n[nosuch]\nx = 1\n')
    rc, out = reset(root)
    assert rc == 0, (out, logfmt.getvalue())
    assert_devices_undone(root, "run/ga")
    assert_tiering_undone(root, "run/ga")


def test_reset_refuses_while_the_daemon_holds_the_state_directory(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    """The lock semantics of the per-feature resets: a running daemon would take the reset as a
    change behind its back, so nothing is changed, and one line names the holder."""
    from guestagent import statelock
    from guestagent.errors import GuestAgentError

    root, kernel = world
    change_everything(root, kernel)
    kernel.writes.clear()
    fd = statelock.acquire(str(root / "run/guestagent"), "run")
    try:
        with pytest.raises(GuestAgentError, match=r"another guestagent \(run, pid \d+\) holds"):
            reset(root)
    finally:
        statelock.release(fd)
    assert kernel.writes == []
    assert (root / TARGET).read_text().strip() == str(600 * 1024)
    assert (root / IRQ).read_text() == "2-3"


def test_through_the_command_line(
    world: tuple[Path, FakeDamonKernel], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """``guestagent --root R reset``: the word is registered and needs no configuration file."""
    absent = (str(tmp_path / "absent.toml"), str(tmp_path / "absent.d"))
    root, _kernel = world
    (root / TARGET).write_text(f"{700 * 1024}\n")
    assert cli.main(["--root", str(root), "reset"], make_host=host_of, config_files=absent) == 0
    assert capsys.readouterr().out == (
        f"balloon: target reset to {CEILING} KiB (was {700 * 1024} KiB)\n")
    assert cli.main(["reset", "--root", str(root)], make_host=host_of, config_files=absent) == 0
    assert capsys.readouterr().out == "nothing to undo\n"


def test_guard_changes_left_in_force_fail_the_balloon_part(
    tmp_path: Path, logfmt: io.StringIO
) -> None:
    """A fixture tree cannot swapoff (no commands): the guard's zram swap stays, so the balloon
    part fails: the guard's own error line, then the part's one line; exit 1 (as balloon --reset,
    tests/test_balloon_guard_prepare.py)."""
    from tests.test_balloon_guard import FakeCommands, make_root
    from tests.test_balloon_guard_prepare import prepare

    root = make_root(tmp_path)
    assert prepare(root, tmp_path, FakeCommands(root))
    log.configure(level="info", stream=logfmt, journal=False)  # prepare configured its own
    rc, out = reset(root)
    assert rc == 1, out
    assert [ln.split(" event=")[1].split()[0] for ln in errors(logfmt)] == [
        "guard_undo_incomplete", "reset_failed"]
    assert "part=balloon" in errors(logfmt)[1]
    assert "balloon: allocation guard: changes still in force" in out


def test_reset_puts_numa_balancing_back(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    """The numa job's ``balancing = "auto"`` switch, left on by a killed daemon, is the fourth
    part: ``reset`` writes the value from before the switch, from ``numa.json`` alone."""
    from guestagent.numa import balancing

    root, _kernel = world
    sysctl = root / "proc/sys/kernel/numa_balancing"
    sysctl.parent.mkdir(parents=True, exist_ok=True)
    sysctl.write_text("0\n")
    hostfs = HostFS(str(root))
    (root / "run/guestagent").mkdir(parents=True, exist_ok=True)
    journal = balancing.NumaJournal(hostfs, balancing.journal_path("/run/guestagent")).load()
    balancing.turn_on(hostfs, journal, previous=0, value=1)
    assert sysctl.read_text().strip() == "1"
    rc, out = reset(root)
    assert rc == 0, (out, logfmt.getvalue())
    assert sysctl.read_text().strip() == "0"
    assert any(line.startswith("numa: ") for line in out.splitlines()), out
    assert not (root / "run/guestagent/numa.json").exists()
    assert reset(root) == (0, "nothing to undo\n")


# -- a journal that is no longer JSON (issue 15: each entry stands alone) ------------------------
#
# Before: one garbled byte anywhere in devices.json, tiering.json or numa.json (trailing garbage,
# a NUL, a file cut short) made ``Journal.load`` raise "not JSON": one ``reset_failed`` line, exit
# status 1, and nothing of that part restored (``numa_balancing`` left at 1). Now the journal
# gives back every whole entry it holds (``guestagent.undo.salvage``, shared with the balloon's).

NUMA_SYSCTL = "proc/sys/kernel/numa_balancing"
#: What stays as the agent left it when the last entry of a part's journal is lost: IRQ 5's
#: affinity; ``nr_kdamonds`` (kdamond 1, named by no entry, is not known to be the agent's, so
#: it is left and so is the count: the agent's kdamond 0 is off and empty all the same);
#: ``numa_balancing``, numa.json's only entry.
LAST_ENTRY = {"devices": ("proc/irq/5/smp_affinity_list", "2-3"),
              "tiering": (NR_KDAMONDS.lstrip("/"), "2"),
              "numa": (NUMA_SYSCTL, "1")}


def _garble(data: bytes, at: int) -> bytes:
    return data[:at] + b"\xff" + data[at + 1:]


def _last_entry(data: bytes) -> int:
    return data.rindex(b"{")


#: name: (the damage, whether the last entry survives it whole, the lines it gives).
DAMAGE = {
    # a non-ASCII byte for the colon after the last entry's "kind"
    "garbled-byte-in-the-last-entry": (
        lambda d: _garble(d, d.index(b'"kind"', _last_entry(d)) + 6), False, 1),
    # ...and for the colon after "changes": no entry touched
    "garbled-byte-in-the-head": (lambda d: _garble(d, d.index(b'"changes"') + 9), True, 1),
    "trailing-nuls-and-garbage": (lambda d: d + b"\x00\x00garbage\n", True, 1),
    "cut-short-in-the-last-entry": (lambda d: d[:d.index(b'"path"', _last_entry(d))], False, 1),
    "cut-short-after-the-last-entry": (lambda d: d[:d.rindex(b"}", 0, d.rindex(b"]")) + 1],
                                       True, 1),
}


def numa_switched_on(root: Path) -> None:
    """What a killed daemon's ``balancing = "auto"`` leaves: numa_balancing 1, numa.json."""
    from guestagent.numa import balancing

    sysctl = root / NUMA_SYSCTL
    sysctl.parent.mkdir(parents=True, exist_ok=True)
    sysctl.write_text("0\n")
    hostfs = HostFS(str(root))
    journal = balancing.NumaJournal(hostfs, balancing.journal_path("/run/guestagent")).load()
    balancing.turn_on(hostfs, journal, previous=0, value=1)
    assert sysctl.read_text().strip() == "1"


def assert_numa_undone(root: Path) -> None:
    assert (root / NUMA_SYSCTL).read_text().strip() == "0"
    assert not (root / "run/guestagent/numa.json").exists()


@pytest.mark.parametrize(("part", "case"), [
    (part, case) for part in ("devices", "tiering", "numa") for case in DAMAGE
    # numa.json holds one entry: cut short inside it, nothing is whole (the test after this)
    if (part, case) != ("numa", "cut-short-in-the-last-entry")])
def test_a_journal_that_is_not_json_still_undoes_the_entries_it_holds_whole(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO, part: str, case: str
) -> None:
    root, kernel = world
    change_everything(root, kernel)
    numa_switched_on(root)
    journal = root / "run/guestagent" / f"{part}.json"
    damage, last_kept, bad_lines = DAMAGE[case]
    damaged = damage(journal.read_bytes())
    journal.write_bytes(damaged)
    rc, out = reset(root)
    log_text = logfmt.getvalue()
    assert "Traceback" not in log_text
    assert not events(logfmt, "reset_failed") or part == "devices", log_text
    # every part is undone; of the damaged one, every whole entry
    assert (root / TARGET).read_text().strip() == str(CEILING)
    assert (root / IRQ).read_text() == "0-3", (out, log_text)
    assert (root / NUMA_NODE).read_text() == "-1", (out, log_text)
    assert kernel.kdamond_states()[:1] in ([], ["off"]), (out, log_text)  # the agent's stopped
    last_file, left = LAST_ENTRY[part]
    if last_kept:
        assert_numa_undone(root)
        assert_tiering_undone(root)
        assert_devices_undone(root)
        assert (root / "proc/irq/5/smp_affinity_list").read_text() == "0-3"
    else:
        assert (root / last_file).read_text().strip() == left, (out, log_text)
    # one line per bad piece, in the reset's output and in the log; one summary line
    skipped = [ln for ln in out.splitlines()
               if ln.startswith(f"{part}: ") and "malformed, skipped" in ln]
    assert len(skipped) == bad_lines, out
    assert all(f"/run/guestagent/{part}.json" in ln for ln in skipped), skipped
    (summary,) = events(logfmt, "journal_unreadable")
    assert f"owner={part}" in summary and f"skipped={bad_lines}" in summary, summary
    # the devices part counts a skipped entry as a failed step (exit 1, as for any malformed
    # entry of devices.json); the tiering and numa parts do not
    assert rc == (1 if part == "devices" else 0), (out, log_text)
    if part == "devices":
        (failed,) = events(logfmt, "reset_failed")
        assert "part=devices" in failed and "1 step(s) failed" in failed, failed
    # the damaged file is kept for a person once the journal was written again
    if (root / "run/guestagent" / f"{part}.json.bad").exists():
        assert (root / "run/guestagent" / f"{part}.json.bad").read_bytes() == damaged
    else:  # nothing of it undone, so nothing written: the same file, the same lines again
        assert journal.read_bytes() == damaged
        again = [ln for ln in reset(root)[1].splitlines() if ln.startswith(f"{part}: ")]
        assert again == [ln for ln in out.splitlines() if ln.startswith(f"{part}: ")]


def test_a_journal_without_one_whole_entry_is_still_one_error_line(
    world: tuple[Path, FakeDamonKernel], logfmt: io.StringIO
) -> None:
    """numa.json cut short inside its only entry: nothing in it can be known, so the numa part
    fails with one line (exit status 1), as a journal that is not JSON did before; the other
    parts are undone."""
    root, kernel = world
    change_everything(root, kernel)
    numa_switched_on(root)
    journal = root / "run/guestagent/numa.json"
    data = journal.read_bytes()
    journal.write_bytes(data[:data.index(b'"path"')])
    rc, out = reset(root)
    assert rc == 1, out
    (line,) = errors(logfmt)
    assert "part=numa" in line and "not JSON" in line and "no whole entry" in line, line
    assert (root / NUMA_SYSCTL).read_text().strip() == "1"
    assert_devices_undone(root)
    assert_tiering_undone(root)
