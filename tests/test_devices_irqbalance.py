"""irqbalance beside the devices job, through irqbalance's own mechanism (issue 16 item 4).

The packages ship ``packaging/irqbalance/irqbalance-policy``, irqbalance's ``--policyscript``,
and a drop-in for ``irqbalance.service`` that passes it. The script answers ``ban=true`` for the
IRQs the agent's journal (``devices.json``) records as pinned, and nothing for any other IRQ; the
job sends irqbalance a SIGHUP (a rescan, which asks the script again) after it pins and after
``reset`` unpins. Here: the real script against a journal the real journal code wrote, the
drop-in's command line read the way the job reads irqbalance's, the job's rescan requests over a
fixture tree with an irqbalance process in its ``/proc``, and the SIGHUP to a real process.
"""

# House rule (docs/DEVELOPING.md): Optional/Union, not X | Y, for Python 3.9.
# ruff: noqa: UP045

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Optional

from guestagent.devices import execute
from guestagent.devices.apply import DevicesJob
from guestagent.devices.config import DevicesConfig
from guestagent.devices.irqbalance import POLICY_SCRIPT, IrqbalanceStatus, decide, detect
from guestagent.devices.state import STATE_FILE, StateStore
from guestagent.dom0.backendthreads import THREAD_KIND, thread_path
from guestagent.dom0.owndevices_io import journal_in
from guestagent.hostfs import HostFS
from guestagent.undo import Change, Journal

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "packaging" / "irqbalance" / "irqbalance-policy"
DROP_IN = REPO / "packaging" / "irqbalance" / "guestagent.conf"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
VF = "0000:00:05.0"  # devices-2node: MSI-X 29-31, numa_node -1
Logs = list[MutableMapping[str, Any]]


def policy(state_dir: Path, *args: str) -> tuple[int, str, str]:
    """The packaged script run as irqbalance runs it (``exec SCRIPT DEVPATH IRQ`` through sh)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GUESTAGENT_STATE_DIR": str(state_dir)}
    done = subprocess.run(["sh", "-c", 'exec "$0" "$@"', str(SCRIPT), *args], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stdout, done.stderr


def pin_record(store: StateStore, irq: int) -> None:
    path = f"/proc/irq/{irq}/smp_affinity_list"
    store.record(Change(kind="irq_affinity", path=path, bdf=VF, previous="0-3"))
    store.set_applied(path, "2-3")


def test_policy_script_bans_exactly_the_irqs_the_journal_pins(tmp_path: Path) -> None:
    hostfs = HostFS(str(tmp_path))
    state_dir = tmp_path / "run" / "guestagent"
    devpath = f"/sys/bus/pci/devices/{VF}"
    # No journal yet (the agent never pinned, or reset removed it): no policy for anything.
    assert policy(state_dir, devpath, "29") == (0, "", "")
    store = StateStore(hostfs, STATE_FILE)
    pin_record(store, 29)
    store.record(Change(kind="numa_node", path=f"/sys/bus/pci/devices/{VF}/numa_node", bdf=VF,
                        previous="-1"))
    assert (state_dir / "devices.json").exists()
    assert policy(state_dir, devpath, "29") == (0, "ban=true\n", "")
    # A prefix of a pinned IRQ's number, another IRQ of the device, junk: nothing, still 0.
    for irq in ("2", "30", "299", "29x", "", "-1"):
        assert policy(state_dir, devpath, irq) == (0, "", ""), irq
    assert policy(state_dir) == (0, "", "")
    # The record is journalled before the write: banned from that moment on, until undone.
    store.forget("/proc/irq/29/smp_affinity_list")
    assert policy(state_dir, devpath, "29") == (0, "", "")


def test_policy_script_answers_nothing_from_an_unreadable_journal(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "devices.json").mkdir()  # a directory where the file should be
    assert policy(state_dir, "/sys", "29") == (0, "", "")


DOM0_VF = "0000:81:00.0"  # a Dom0-driven NIC of guestagent host devices


def dom0_pin_record(journal: Journal, irq: int) -> None:
    path = f"/proc/irq/{irq}/smp_affinity_list"
    journal.record(Change(kind="irq_affinity", path=path, bdf=DOM0_VF, previous="0-7"))
    journal.set_applied(path, "4-7")


def test_policy_script_bans_the_irqs_dom0s_own_devices_journal_pins(tmp_path: Path) -> None:
    """In Dom0 the pins are in dom0-devices.json (guestagent host devices --apply, the Dom0
    daemon's [dom0] own_devices), beside or instead of a devices.json: both are read, whichever
    exist, and only the pinned IRQs of either are banned."""
    hostfs = HostFS(str(tmp_path))
    state_dir = tmp_path / "run" / "guestagent"
    devpath = f"/sys/bus/pci/devices/{DOM0_VF}"
    dom0 = journal_in(hostfs, "/run/guestagent")
    dom0_pin_record(dom0, 120)
    dom0.record(Change(kind=THREAD_KIND, path=thread_path(4242), bdf="", previous="0-7"))
    assert (state_dir / "dom0-devices.json").exists()
    assert not (state_dir / "devices.json").exists()
    assert policy(state_dir, devpath, "120") == (0, "ban=true\n", "")
    for irq in ("12", "121", "1200", "4242"):
        assert policy(state_dir, devpath, irq) == (0, "", ""), irq
    # Both journals: each one's IRQs are banned, once.
    pin_record(StateStore(hostfs, STATE_FILE), 29)
    assert policy(state_dir, devpath, "29") == (0, "ban=true\n", "")
    assert policy(state_dir, devpath, "120") == (0, "ban=true\n", "")
    # Dom0's pin undone: its IRQ is irqbalance's again; the guest journal's stays banned.
    dom0.forget("/proc/irq/120/smp_affinity_list")
    assert policy(state_dir, devpath, "120") == (0, "", "")
    assert policy(state_dir, devpath, "29") == (0, "ban=true\n", "")


def test_an_unreadable_devices_journal_still_lets_dom0s_ban(tmp_path: Path) -> None:
    state_dir = tmp_path / "run" / "guestagent"
    dom0_pin_record(journal_in(HostFS(str(tmp_path)), "/run/guestagent"), 120)
    (state_dir / "devices.json").mkdir()  # a directory where the file should be
    assert policy(state_dir, "/sys", "120") == (0, "ban=true\n", "")
    assert policy(state_dir, "/sys", "29") == (0, "", "")


def test_policy_script_is_posix_sh_and_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")
    if shutil.which("dash"):
        assert subprocess.run(["dash", "-n", str(SCRIPT)], check=False).returncode == 0


def drop_in() -> dict[str, list[str]]:
    """The drop-in's directives (name -> values in order; blank lines and comments left out)."""
    out: dict[str, list[str]] = {}
    for line in DROP_IN.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_drop_in_runs_irqbalance_with_the_script_after_the_agent() -> None:
    directives = drop_in()
    assert directives["After"] == ["guestagent.service"]
    # ExecStart= empty first (a drop-in replaces a service's command only that way).
    reset, command = directives["ExecStart"]
    assert reset == ""
    argv = [a for a in shlex.split(command) if a != "$IRQBALANCE_ARGS"]
    status = IrqbalanceStatus(running=True, pid=1, found_by="process", cmdline=argv)
    assert argv[0] == "/usr/sbin/irqbalance" and "--foreground" in argv
    assert status.policyscript == POLICY_SCRIPT and status.uses_our_policy
    assert decide("auto", status).touch is True
    # The operator's own arguments come after ours, so their own --policyscript wins.
    assert command.rstrip().endswith("$IRQBALANCE_ARGS")


def test_packages_install_the_script_and_the_drop_in() -> None:
    deb = (REPO / "packaging/debian/guestagent.install").read_text().splitlines()
    assert "packaging/irqbalance/irqbalance-policy usr/libexec/guestagent/" in deb
    assert ("packaging/irqbalance/guestagent.conf lib/systemd/system/irqbalance.service.d/"
            in deb)
    spec = (REPO / "packaging/rpm/guestagent.spec").read_text()
    assert ("install -Dpm 0755 packaging/irqbalance/irqbalance-policy "
            "%{buildroot}%{_libexecdir}/guestagent/irqbalance-policy") in spec
    assert ("install -Dpm 0644 packaging/irqbalance/guestagent.conf "
            "%{buildroot}%{_unitdir}/irqbalance.service.d/guestagent.conf") in spec
    assert POLICY_SCRIPT == "/usr/libexec/guestagent/irqbalance-policy"


# ---------------------------------------------------------------- the job's rescan requests


def tree_with_irqbalance(tmp_path: Path, cmdline: list[str]) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    proc = root / "proc" / "4242"
    proc.mkdir(parents=True)
    (proc / "comm").write_text("irqbalance\n")
    (proc / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
    return root


class Nudges(list[tuple[Optional[IrqbalanceStatus], str]]):
    """The job's rescan requests (its ``nudge`` argument; the signal itself: below)."""

    def __call__(self, status: Optional[IrqbalanceStatus], hostfs: HostFS, reason: str) -> bool:
        self.append((status, reason))
        return True


def test_job_asks_irqbalance_to_rescan_after_pinning_and_after_reset(tmp_path: Path) -> None:
    root = tree_with_irqbalance(tmp_path, ["/usr/sbin/irqbalance", "--foreground",
                                           f"--policyscript={POLICY_SCRIPT}"])
    hostfs = HostFS(str(root))
    nudges = Nudges()
    job = DevicesJob(hostfs, DevicesConfig(node_overrides={VF: 1}), [], route_lookup=list,
                     nudge=nudges)
    assert job.irq_decision.touch, job.irq_decision  # auto + our script: the agent pins
    job.scan(apply=True)
    assert (root / "proc/irq/29/smp_affinity_list").read_text() == "2-3"
    assert len(nudges) == 1
    status, reason = nudges[0]
    assert status is not None and status.pid == 4242 and status.uses_our_policy
    assert "pinned" in reason
    job.scan(apply=True)  # nothing changed: no rescan asked
    assert len(nudges) == 1
    # The undo, from the journal alone (what `guestagent reset` runs): irqbalance takes them back.
    DevicesJob(hostfs, DevicesConfig(), [], nudge=nudges).reset()
    assert (root / "proc/irq/29/smp_affinity_list").read_text() != "2-3"
    assert len(nudges) == 2 and "unpinned" in nudges[1][1]
    assert nudges[1][0] is not None and nudges[1][0].pid == 4242
    DevicesJob(hostfs, DevicesConfig(), [], nudge=nudges).reset()  # nothing left to unpin
    assert len(nudges) == 2


def test_irqbalance_started_after_the_first_pass_is_asked_too(tmp_path: Path) -> None:
    """The job decided to pin while no irqbalance ran; one started since is found for the
    rescan request (the decision is not taken again)."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    hostfs = HostFS(str(root))
    nudges = Nudges()
    job = DevicesJob(hostfs, DevicesConfig(node_overrides={VF: 1}), [], route_lookup=list,
                     nudge=nudges)
    job.scan(apply=True)
    assert nudges and nudges[0][0] is not None and not nudges[0][0].running
    started = tree_with_irqbalance(tmp_path / "later", ["irqbalance", "-l", POLICY_SCRIPT])
    shutil.copytree(started / "proc" / "4242", root / "proc" / "4242")
    job.reset()
    status = nudges[-1][0]
    assert status is not None and status.pid == 4242 and status.uses_our_policy
    assert detect(hostfs).policyscript == POLICY_SCRIPT


# ---------------------------------------------------------------- the signal


CHILD = """
import signal, sys, time
signal.signal(signal.SIGHUP, lambda *_: (print("HUP", flush=True), sys.exit(0)))
print("ready", flush=True)
time.sleep(60)
print("no signal", flush=True)
"""


def test_rescan_request_is_a_sighup_to_irqbalance(log_events: Logs) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        real = HostFS("/")
        plain = IrqbalanceStatus(True, pid=child.pid, found_by="process",
                                 cmdline=["irqbalance", "--foreground"])
        assert execute.nudge_irqbalance(plain, real, "test") is False  # not our script: no signal
        assert execute.nudge_irqbalance(IrqbalanceStatus(False), real, "test") is False
        ours = IrqbalanceStatus(True, pid=child.pid, found_by="process",
                                cmdline=["irqbalance", f"--policyscript={POLICY_SCRIPT}"])
        assert execute.nudge_irqbalance(ours, HostFS("/tmp"), "test") is False  # fixture root
        assert execute.nudge_irqbalance(ours, real, "IRQs unpinned") is True
        assert child.stdout.readline() == "HUP\n"
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    (event,) = [e for e in log_events if e["event"] == "irqbalance_rescan"]
    assert event["pid"] == child.pid and event["reason"] == "IRQs unpinned"
