"""Undo of the devices job when it is needed most (issue 15, item 3; the devices part).

Seen before the fix:
- ``devices --reset`` loaded the whole configuration first: a bad ``node_overrides`` entry
  blocked the reset and nothing was restored; the unit's ``ExecStopPost=-`` hid the failure.
- One malformed entry in the state file blocked every restore.
- A path in the state file was written wherever it pointed (``..`` escaped the root).

Now the reset reads ``[agent] state_dir`` alone, leniently (any other problem of the files is
ignored, one line each); each entry of the state file is checked on its own (a bad one is reported
and skipped, the others are restored; each path must be one of the files the job writes); and any
failure is logged at error level and makes the exit status 1, so the journal shows it even under
``ExecStopPost=-``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import shutil
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from guestagent.cli import Context
from guestagent.devices import commands
from guestagent.host import Host
from guestagent.hostfs import HostFS
from tests.faults.config_files import config_files_beside

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VF = "0000:00:05.0"
IRQ = "/proc/irq/29/smp_affinity_list"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dest = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", dest, symlinks=True)
    return dest


def run(root: Path, *argv: str, hostfs: HostFS | None = None) -> tuple[int, str]:
    """``guestagent devices ARGV`` on the tree at ``root`` (or ``hostfs``, a test's HostFS over
    it), with the test's own configuration files; exit status and standard output."""
    parser = argparse.ArgumentParser(prog="guestagent")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["devices", *argv])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fs = hostfs or HostFS(str(root))  # the default route on eth0, netlink not asked
        host = Host(fs, open_default_interfaces=lambda _fs: ["eth0"])
        rc = args.func(args, Context(hostfs=fs, host=host, config_files=config_files_beside(root)))
    return rc, out.getvalue()


def apply(root: Path) -> None:
    rc, _ = run(root, "apply", "--node", f"{VF}=1")
    assert rc == 0
    assert (root / IRQ.lstrip("/")).read_text() == "2-3"


def state(root: Path, state_dir: str = "run/guestagent") -> Any:
    return json.loads((root / state_dir / "devices.json").read_text())


def write_state(root: Path, data: Any, state_dir: str = "run/guestagent") -> None:
    (root / state_dir / "devices.json").write_text(json.dumps(data))


def test_reset_needs_no_valid_configuration(
    root: Path, tmp_path: Path, log_events: list[MutableMapping[str, Any]]
) -> None:
    """A configuration that ``run`` would refuse does not block the undo; ``state_dir`` is
    still taken from it."""
    (tmp_path / "guestagent.toml").write_text('[agent]\nstate_dir = "/run/ga"\n')
    apply(root)
    assert (root / "run/ga/devices.json").exists()
    (tmp_path / "guestagent.toml").write_text(
        '[agent]\nstate_dir = "/run/ga"\n[devices]\nnode_overrides = ["0000:00:05.0=banana"]\n'
        'irqbalance = "fight"\n[nosuch]\nx = 1\n'
    )
    rc, out = run(root, "--reset")
    assert rc == 0, out
    assert f"{IRQ}: restored '0-3'" in out
    assert (root / IRQ.lstrip("/")).read_text() == "0-3"
    assert (root / f"sys/devices/pci0000:00/{VF}/numa_node").read_text() == "-1"
    assert not (root / "run/ga/devices.json").exists()


def test_reset_with_unparsable_configuration_uses_the_default_state_dir(
    root: Path, tmp_path: Path, log_events: list[MutableMapping[str, Any]]
) -> None:
    apply(root)
    (tmp_path / "guestagent.toml").write_text("[agent\nthis is not TOML")
    rc, out = run(root, "--reset")
    assert rc == 0 and f"{IRQ}: restored '0-3'" in out
    assert any(e["event"] == "devices_reset_config_ignored" for e in log_events), log_events


@pytest.mark.parametrize("bad", [
    {"kind": "irq_affinity", "path": 7, "bdf": VF, "previous": "0-3"},
    {"kind": "teleport", "path": "/proc/irq/30/smp_affinity_list", "bdf": VF, "previous": "0"},
    {"kind": "irq_affinity", "path": "/proc/irq/../../etc/passwd", "bdf": VF, "previous": "x"},
    {"kind": "hugepages", "path": "/../outside", "bdf": "", "previous": "0"},
    {"kind": "irq_affinity", "path": "/proc/irq/30/smp_affinity_list", "bdf": VF,
     "previous": "0-3\nroot::0:0"},
    "not an object",
])
def test_one_malformed_entry_does_not_block_the_others(
    root: Path, tmp_path: Path, log_events: list[MutableMapping[str, Any]], bad: Any
) -> None:
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0\n")
    apply(root)
    data = state(root)
    good = len(data["changes"])
    data["changes"].insert(1, bad)
    write_state(root, data)
    rc, out = run(root, "--reset")
    assert rc == 1, out
    assert (root / IRQ.lstrip("/")).read_text() == "0-3"
    assert (root / f"sys/devices/pci0000:00/{VF}/numa_node").read_text() == "-1"
    assert sum("restored" in line for line in out.splitlines()) == good, out
    assert sum("malformed" in line for line in out.splitlines()) == 1, out
    assert (root / "etc/passwd").read_text() == "root:x:0:0\n"
    assert not (tmp_path / "outside").exists()
    errors = [e for e in log_events if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["devices_undo_failed"], log_events


class IrqRefusingFS(HostFS):
    """The tree's file system, where writing the device's IRQ affinity is refused (EACCES)."""

    def write_text(self, host_path: str, value: str) -> None:
        if host_path == IRQ:
            raise PermissionError(errno.EACCES, "Permission denied", host_path)
        super().write_text(host_path, value)


def test_a_failed_restore_is_an_error_and_the_exit_status_says_so(
    root: Path, log_events: list[MutableMapping[str, Any]]
) -> None:
    """``ExecStopPost=-`` ignores the exit status for the unit's result; the error-level line
    in the journal and the status (shown by ``systemctl status``) still tell. The failed entry
    stays in the state file, so a later reset tries again."""
    apply(root)
    rc, out = run(root, "--reset", hostfs=IrqRefusingFS(str(root)))
    assert rc == 1, out
    assert f"{IRQ}: restoring '0-3' failed (EACCES: Permission denied)" in out, out
    assert (root / f"sys/devices/pci0000:00/{VF}/numa_node").read_text() == "-1"
    errors = [e for e in log_events if e["log_level"] == "error"]
    assert len(errors) == 1 and errors[0]["event"] == "devices_undo_failed", log_events
    assert IRQ in errors[0]["result"] and errors[0]["error"] == errors[0]["result"]
    assert [c["path"] for c in state(root)["changes"]] == [IRQ]
    rc, out = run(root, "--reset")
    assert rc == 0 and out == f"{IRQ}: restored '0-3'\n", out
    assert (root / IRQ.lstrip("/")).read_text() == "0-3"


def test_a_state_file_that_is_not_json_fails_with_one_error_line(
    root: Path, log_events: list[MutableMapping[str, Any]]
) -> None:
    apply(root)
    (root / "run/guestagent/devices.json").write_text("{garbage")
    rc, _ = run(root, "--reset")
    assert rc == 1
    errors = [e for e in log_events if e["log_level"] == "error"]
    assert len(errors) == 1 and "not JSON" in errors[0]["error"], log_events


def test_apply_and_reset_refuse_while_another_guestagent_holds_the_state_dir(
    root: Path, log_events: list[MutableMapping[str, Any]]
) -> None:
    """Two concurrent ``devices apply`` lost undo records (2 runs of 6), and a reset under a
    running daemon undid its bindings behind its back. Now both take the state directory's lock
    and refuse, one line naming the holder, before changing anything."""
    from guestagent import statelock
    from guestagent.errors import GuestAgentError

    apply(root)
    before = state(root)
    fd = statelock.acquire(str(root / "run/guestagent"), "run")  # as a running daemon does
    try:
        with pytest.raises(GuestAgentError, match=rf"\(run, pid {os.getpid()}\)"):
            run(root, "apply", "--node", f"{VF}=1")
        rc, out = run(root, "--reset")
        assert rc == 1 and out == "", out
        assert (root / IRQ.lstrip("/")).read_text() == "2-3", "the reset undid a daemon's work"
        assert state(root) == before
        errors = [e for e in log_events if e["log_level"] == "error"]
        assert "holds" in errors[-1]["error"], errors
    finally:
        statelock.release(fd)
    rc, out = run(root, "--reset")
    assert rc == 0 and f"{IRQ}: restored '0-3'" in out
