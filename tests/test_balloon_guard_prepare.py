"""The allocation guard's zram swap under the systemd unit (issue 12 item 1): made before the
daemon starts by ``guestagent balloon --prepare-guard`` (the unit's privileged ExecStartPre),
adopted by the sandboxed daemon, left in the record when the sandbox refuses the swapoff, and
undone by the privileged ``guestagent reset`` (ExecStopPost; its balloon part is ``balloon
--reset``'s) in order: the target back at the ceiling first, then swapoff, device reset and
removal, module unload, overcommit.

On copies of the balloon-pv-1g fixture tree with the guard's files (tests/test_balloon_guard.py's
``make_root``) and its fake commands; log lines are asserted in their logfmt form.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from guestagent import log
from guestagent.balloon import commands
from guestagent.balloon.guard import (
    GUARD_KEY,
    OVERCOMMIT_MEMORY,
    CommandDenied,
    Guard,
    denied,
    denied_output,
    reset_all,
)
from guestagent.balloon.guard import undo as undo_guard
from guestagent.cli import Context
from guestagent.hostfs import HostFS
from tests.test_balloon_guard import (
    CEILING,
    FIXTURES,
    HARD_FLOOR,
    SWAPS_HEADER,
    FakeCommands,
    make_root,
    parts,
    record_of,
    sysctl,
    target_of,
)

ENABLED = '[agent]\nrole = "guest"\n\n[balloon]\nenabled = true\n'


def write_config(tmp_path: Path, text: str = ENABLED) -> tuple[str, str]:
    main = tmp_path / "guestagent.toml"
    main.write_text(text)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir(exist_ok=True)
    return str(main), str(conf_d)


def prepare(root: Path, tmp_path: Path, cmds: FakeCommands | None, text: str = ENABLED) -> bool:
    """``guestagent --root ROOT balloon --prepare-guard`` with the given configuration text."""
    main, conf_d = write_config(tmp_path, text)
    args = argparse.Namespace(no_xenstore=False)
    log.configure(level="warning")
    ctx = Context(hostfs=HostFS(str(root)))
    return commands.prepare_guard(args, ctx, main, conf_d, cmds)


#: A logfmt line's event and, when it has one, its ``what`` (quoted when it holds a space).
_EVENT_WHAT = re.compile(r'event=(\S+)(?:.*? what=("[^"]*"|\S+))?')


def lines(err: str, event: str) -> list[str]:
    return [ln for ln in err.splitlines() if f"event={event} " in ln + " "]


def shrink(root: Path, target_kb: int = 400 * 1024) -> None:
    (root / "sys/devices/system/xen_memory/xen_memory0/target_kb").write_text(f"{target_kb}\n")


# --- prepare ---------------------------------------------------------------------------------


def test_prepare_makes_the_zram_swap_records_it_and_leaves_overcommit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path, mode=0)
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds) is True
    assert cmds.calls == ["modprobe zram num_devices=0", "mkswap /dev/zram0",
                          "swapon /dev/zram0 100"]
    # ceiling 1 GiB (static-max), floor max(0, 256 MiB, static-max/16): 768 MiB
    assert int((root / "sys/block/zram0/disksize").read_text()) == (CEILING - HARD_FLOOR) * 1024
    assert "/dev/zram0\tpartition\t786432\t0\t100" in (root / "proc/swaps").read_text()
    assert [c["kind"] for c in record_of(root)[GUARD_KEY]] == ["zram_module", "zram_device",
                                                               "swap"]
    assert sysctl(root) == "0"  # overcommit stays the daemon's
    err = capsys.readouterr().err
    assert 'event=guard_set' in err and 'what="swap /dev/zram0"' in err
    assert not lines(err, "guard_prepare_skipped")


def test_prepare_sizes_with_the_configured_floor(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds, ENABLED + "floor_mb = 640\n") is True
    assert int((root / "sys/block/zram0/disksize").read_text()) == (1024 - 640) << 20


def test_prepare_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path)
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds) and prepare(root, tmp_path, cmds)
    assert len(cmds.calls) == 3 and len(record_of(root)[GUARD_KEY]) == 3
    assert len(lines(capsys.readouterr().err, "guard_adopted")) == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[agent]\nrole = "guest"\n', "ballooning is off"),
        ('[agent]\nrole = "dom0"\n\n[balloon]\nenabled = true\n', "role dom0"),
        ("[balloon]\nenabled = yes-please\n", "configuration refused"),
        (ENABLED + 'policy = "none"\n', "policy none: the job holds the ceiling"),
    ],
)
def test_prepare_without_ballooning_does_nothing_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str
) -> None:
    root = make_root(tmp_path)
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds, text) is False
    assert cmds.calls == [] and not record_of(root) and sysctl(root) == "0"
    (line,) = lines(capsys.readouterr().err, "guard_prepare_skipped")
    assert reason in line


def test_prepare_in_an_hvm_guest_only_when_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The job holds the ceiling in an HVM guest unless ``allow_hvm`` (guestagent.balloon.job):
    no zram swap is made for a job that will not shrink; allowed, it is."""
    root = make_root(tmp_path)
    (root / "sys/hypervisor").mkdir(parents=True, exist_ok=True)
    (root / "sys/hypervisor/guest_type").write_text("HVM\n")
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds) is False
    assert cmds.calls == [] and not record_of(root)
    (line,) = lines(capsys.readouterr().err, "guard_prepare_skipped")
    assert "an HVM guest: the job holds the ceiling ([balloon] allow_hvm = false)" in line
    assert prepare(root, tmp_path, cmds, ENABLED + "allow_hvm = true\n") is True
    assert cmds.calls[-1] == "swapon /dev/zram0 100"


def test_prepare_without_zram_exits_0_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path, zram_module=False)
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds) is False
    assert cmds.calls == [] and not record_of(root).get(GUARD_KEY)
    (line,) = lines(capsys.readouterr().err, "guard_zram_unavailable")
    assert "the kernel has no zram" in line


def test_prepare_with_a_foreign_zram_exits_0_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    cmds = FakeCommands(root)
    cmds.modprobe("zram")  # someone else's zram0, swapped on
    (root / "sys/block/zram0/disksize").write_text(str(512 << 20))
    cmds.swapon("/dev/zram0", 5)
    cmds.calls.clear()
    assert prepare(root, tmp_path, cmds) is False
    assert cmds.calls == [] and not record_of(root).get(GUARD_KEY)
    (line,) = lines(capsys.readouterr().err, "guard_zram_unavailable")
    assert "someone else" in line and "/dev/zram0" in line


def test_prepare_without_a_balloon_driver_exits_0_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    root = tmp_path / "legacy"
    shutil.copytree(FIXTURES / "balloon-legacy-4.19", root)
    assert prepare(root, tmp_path, FakeCommands(root)) is False
    (line,) = lines(capsys.readouterr().err, "guard_prepare_skipped")
    assert "balloon unavailable" in line


def test_prepare_when_a_command_fails_undoes_what_it_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    cmds = FakeCommands(root)

    def refuse(device: str, priority: int) -> None:
        raise CommandDenied("swapon -p 100 /dev/zram0: exit 255: Operation not permitted")

    cmds.swapon = refuse  # type: ignore[method-assign]
    assert prepare(root, tmp_path, cmds) is False
    assert cmds.calls[-1] == "modprobe -r zram" and not record_of(root).get(GUARD_KEY)
    assert (root / "proc/swaps").read_text() == SWAPS_HEADER
    assert lines(capsys.readouterr().err, "guard_zram_failed")


def test_the_cli_never_fails_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a fixture tree there are no commands: one line, exit 0; a broken configuration
    file as well."""
    root = make_root(tmp_path)
    main, conf_d = write_config(tmp_path)
    from tests.test_balloon_cli import run

    assert run(root, "--prepare-guard", config_files=(main, conf_d)) == 0
    assert "not the real host root" in capsys.readouterr().err
    Path(main).write_text("[balloon\n")
    assert run(root, "--prepare-guard", config_files=(main, conf_d)) == 0
    (line,) = lines(capsys.readouterr().err, "guard_prepare_skipped")
    assert "configuration refused" in line
    assert run(root, "--prepare-guard", "--reset", config_files=(main, conf_d)) == 2


# --- the daemon adopts, its sandboxed stop leaves the zram to ExecStopPost ------------------


def test_arm_adopts_the_prepared_swap_and_sets_only_overcommit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path, mode=0)
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds)
    capsys.readouterr()
    fs, act = parts(root)
    log.configure(level="info")
    Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    assert len(cmds.calls) == 3  # nothing made again
    (line,) = [ln for ln in lines(capsys.readouterr().err, "guard_adopted")
               if "zram" in ln]
    assert "what=/dev/zram0" in line and "size_kb=786432" in line and "priority=100" in line
    assert sysctl(root) == "1"
    assert [c["kind"] for c in record_of(root)[GUARD_KEY]] == ["zram_module", "zram_device",
                                                               "swap", "sysctl"]


def test_arm_without_a_prepared_swap_in_the_sandbox_says_what_it_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path, mode=0)
    # ProtectKernelModules=yes: /lib/modules is an inaccessible node (the tests run as root,
    # which a mode 000 would not stop: a directory in place of modules.dep cannot be read either)
    dep = root / "lib/modules/6.1.0-56-amd64/modules.dep"
    dep.unlink()
    dep.mkdir()
    fs, act = parts(root)
    log.configure(level="info")
    cmds = FakeCommands(root)
    Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    (line,) = lines(capsys.readouterr().err, "guard_zram_unavailable")
    assert "modules cannot be loaded here" in line and 'fallback="overcommit only"' in line
    assert cmds.calls == [] and sysctl(root) == "1"


def sandboxed(cmds: FakeCommands) -> None:
    """What the unit's sandbox does to the daemon's commands: swapoff and modprobe refused."""

    def refuse(*args: object) -> None:
        raise CommandDenied("swapoff /dev/zram0: exit 4: swapoff failed: Operation not permitted")

    cmds.swapoff = refuse  # type: ignore[method-assign]
    cmds.modprobe_remove = refuse  # type: ignore[method-assign]


def test_the_sandboxed_stop_leaves_the_zram_for_exec_stop_post(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path, mode=0)
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds)
    fs, act = parts(root)
    Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    shrink(root)
    sandboxed(cmds)
    capsys.readouterr()
    log.configure(level="info")
    reset_all(act, cmds, wait_s=0.0)  # the daemon's stop (BalloonController.stop)
    err = capsys.readouterr().err
    assert target_of(root) == CEILING
    (left,) = lines(err, "guard_undo_left")
    assert "level=info" in left and 'what="swap /dev/zram0"' in left
    assert "left for ExecStopPost" in left
    assert "level=error" not in err and not lines(err, "guard_undo_failed")
    # kept in the order they were recorded, so the next reset takes them newest first again
    assert [c["kind"] for c in record_of(root)[GUARD_KEY]] == ["zram_module", "zram_device",
                                                               "swap"]
    assert sysctl(root) == "0"  # what the sandbox allows is undone at once
    assert "/dev/zram0\tpartition" in (root / "proc/swaps").read_text()


def test_reset_after_prepare_undoes_everything_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unit's whole life: ExecStartPre prepares, the daemon arms and shrinks, its sandboxed
    stop leaves the zram, ExecStopPost's privileged reset undoes the rest."""
    root = make_root(tmp_path, mode=0)
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds)
    fs, act = parts(root)
    act.start()
    Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    shrink(root)
    daemon = FakeCommands(root)
    sandboxed(daemon)
    reset_all(act, daemon, wait_s=0.0)
    shrink(root, 500 * 1024)  # whatever happened after: the reset puts the target back first
    capsys.readouterr()
    log.configure(level="info")
    assert reset_all(act, cmds, wait_s=0.0) == CEILING  # ExecStopPost
    err = capsys.readouterr().err
    steps = [m.group(1, 2) for m in (_EVENT_WHAT.search(ln) for ln in err.splitlines()) if m]
    assert [s for s in steps if s[0].startswith(("balloon_reset", "guard_"))] == [
        ("balloon_reset", None), ("guard_undo_start", None),
        ("guard_undone", '"swap /dev/zram0"'), ("guard_undone", "/dev/zram0"),
        ("guard_undone", '"module zram"')]
    assert cmds.calls[3:] == ["swapoff /dev/zram0 (target_kb 1048576)", "modprobe -r zram"]
    assert GUARD_KEY not in record_of(root)
    assert (root / "proc/swaps").read_text() == SWAPS_HEADER
    assert not (root / "sys/class/zram-control").exists()
    assert sysctl(root) == "0"
    assert undo_guard(fs, act, cmds) == 0


def test_undo_after_prepare_puts_the_sysctl_back_first(tmp_path: Path) -> None:
    """Issue 14, undone newest first: ExecStartPre made the zram swap, then the daemon set the
    sysctl, so the sysctl goes back before the swapoff (overcommit is already 0 when it runs)."""
    root = make_root(tmp_path, mode=0)
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds)
    fs, act = parts(root)
    Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    seen: list[str] = []
    swapoff = cmds.swapoff

    def swapoff_seeing_the_sysctl(device: str) -> None:
        seen.append(sysctl(root))
        swapoff(device)

    cmds.swapoff = swapoff_seeing_the_sysctl  # type: ignore[method-assign]
    with capture_logs() as logs:
        assert undo_guard(fs, act, cmds) == 0
    assert [e["what"] for e in logs if e["event"] == "guard_undone"] == [
        OVERCOMMIT_MEMORY, "swap /dev/zram0", "/dev/zram0", "module zram"]
    assert seen == ["0"]
    assert GUARD_KEY not in record_of(root)


def test_a_reset_that_leaves_guard_changes_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the commands (a fixture tree: as a reset that cannot swapoff), the swap stays:
    one error line and exit 1, where systemctl status shows it."""
    root = make_root(tmp_path)
    assert prepare(root, tmp_path, FakeCommands(root))
    from tests.test_balloon_cli import run

    capsys.readouterr()
    assert run(root, "--reset") == 1
    (line,) = lines(capsys.readouterr().err, "guard_undo_incomplete")
    assert "level=error" in line
    assert OVERCOMMIT_MEMORY not in str(record_of(root)[GUARD_KEY])


@pytest.mark.parametrize(
    ("output", "refused"),
    [
        ("swapoff: Not superuser.", True),  # util-linux swapoff on EPERM (the seccomp filter)
        ("swapon: /dev/zram0: swapon failed: Operation not permitted", True),
        ("mkswap: cannot open /dev/zram0: Operation not permitted", True),  # DevicePolicy
        ("modprobe: ERROR: could not insert 'zram': Operation not permitted", True),
        ("swapoff: /dev/zram0: swapoff failed: Cannot allocate memory", False),
        ("modprobe: FATAL: Module zram not found in directory /lib/modules/6.1.0", False),
    ],
)
def test_a_refusal_for_lack_of_privilege_is_told_from_a_failure(output: str,
                                                                 refused: bool) -> None:
    assert denied_output(output) is refused
    assert denied(CommandDenied(output)) and denied(PermissionError(1, "x"))
    assert denied(OSError(30, "Read-only file system"))
    assert not denied(OSError(12, "Cannot allocate memory"))


def test_a_swap_made_in_another_mount_namespace_is_still_ours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unit's ExecStartPre runs in the unit's mount namespace, which ends with it: /proc/swaps
    then shows its swap as /zram0 (seen on the testbed). The daemon adopts it, the reset swaps it
    off; a swap file named zram0 is never taken for the device."""
    root = make_root(tmp_path, mode=0)
    cmds = FakeCommands(root)
    assert prepare(root, tmp_path, cmds)
    swaps = root / "proc/swaps"
    swaps.write_text(swaps.read_text().replace("/dev/zram0\t", "/zram0\t"))
    fs, act = parts(root)
    log.configure(level="info")
    Guard(fs, act, cmds).arm(CEILING, HARD_FLOOR)
    (line,) = [ln for ln in lines(capsys.readouterr().err, "guard_adopted") if "zram" in ln]
    assert "what=/dev/zram0" in line and "size_kb=786432" in line and len(cmds.calls) == 3
    cmds.swapoff = lambda device: swaps.write_text(SWAPS_HEADER)  # type: ignore[method-assign]
    assert undo_guard(fs, act, cmds) == 0 and swaps.read_text() == SWAPS_HEADER

    other = make_root(tmp_path / "other")
    (other / "proc/swaps").write_text(SWAPS_HEADER + "/srv/zram0\tfile\t1024\t0\t-2\n")
    from guestagent.balloon.guard import parse_swaps, zram_swaps

    assert zram_swaps(parse_swaps((other / "proc/swaps").read_text())) == {}
