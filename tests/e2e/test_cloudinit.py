"""cloud-init turns the agent on, on real Xen: the guest image has the agent installed from its
.deb (built by packaging/build-deb.sh, its unit left disabled) and a NoCloud seed whose user-data
holds ``guestagent: {enabled: true, ...}`` (tests/e2e/guest/cloud-init/); the guest boots systemd,
cloud-init runs its real stages, cc_guestagent writes the configuration and starts the unit, and
Dom0 sees the agent's keys in the guest's xenstore tree."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.e2e.bed import Guest, GuestSpec, XenBed
from tests.e2e.test_balloon import guard_state
from tests.e2e.test_xenstore_balloon import xenstore_ls
from tests.e2e.util import TIMEOUT_SCALE

# A cold cache builds the .deb and its image inside the test's setup (after waiting for the bed
# lock, on a shared machine); a systemd boot with cloud-init takes minutes under TCG.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600 * TIMEOUT_SCALE)]


def wait_active(g: Guest, unit: str, seconds: float) -> str:
    """Poll ``systemctl is-active`` (a Type=notify start takes a while under TCG)."""
    deadline = time.monotonic() + seconds
    while True:
        out, rc = g.run(f"systemctl is-active {unit}", timeout=60)
        if rc == 0 or time.monotonic() > deadline or out.strip() == "failed":
            return out.strip()
        time.sleep(5)


#: The agent's level names and the syslog priority journald must store for each.
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def check_journal_priorities(g: Guest) -> None:
    entries = [json.loads(line) for line in g.run_ok(
        "journalctl -b -u guestagent.service -o json --no-pager").splitlines()]
    agent = [(int(e["PRIORITY"]), json.loads(e["MESSAGE"])) for e in entries
             if isinstance(e.get("MESSAGE"), str) and e["MESSAGE"].startswith("{")]
    assert agent, entries
    for priority, record in agent:
        assert priority == PRIORITY[record["level"]], (priority, record)
        assert "timestamp" not in record, record
    warned = g.run_ok("journalctl -b -u guestagent.service -p warning -o cat --no-pager")
    expected = sorted(json.dumps(r, sort_keys=True) for p, r in agent if p <= 4)
    shown = sorted(json.dumps(json.loads(ln), sort_keys=True) for ln in warned.splitlines()
                   if ln.startswith("{"))
    assert shown == expected, (shown, expected)


#: The drop-in that turns ballooning on for the guard's check (cloud-init's user-data keeps it
#: off, so everything above runs with the configuration cloud-init wrote, unchanged).
BALLOON_DROPIN = "/etc/guestagent/conf.d/50-e2e-balloon.toml"


def check_guard_under_the_unit(g: Guest) -> str:
    """Issue 12 item 1 under the real unit: with [balloon] enabled, the unit's privileged
    ExecStartPre (balloon --prepare-guard) makes the allocation guard's zram swap (priority 100)
    before the sandboxed daemon starts; ``systemctl stop`` (the daemon's own stop, which the
    sandbox forbids the swapoff, then ExecStopPost's privileged reset) leaves the guest
    as it was: no swap, no zram device or module, overcommit unchanged. Returns a summary."""
    def journal() -> str:
        return g.run("journalctl -b -u guestagent.service -o cat --no-pager | "
                     "grep -E 'guard|prepare|balloon' | tail -n 40")[0]

    before = guard_state(g)
    assert "/dev/zram" not in before, before
    g.run_ok(f"mkdir -p /etc/guestagent/conf.d && "
             f"printf '[balloon]\\nenabled = true\\n' > {BALLOON_DROPIN}")
    g.run("systemctl restart guestagent.service", timeout=600 * TIMEOUT_SCALE)
    state = wait_active(g, "guestagent.service", 600)
    assert state == "active", g.run("systemctl status guestagent.service; "
                                    "journalctl -b -u guestagent.service --no-pager")[0]
    armed = guard_state(g)
    # The balloon moves memory: the unit's watchdog timeout, no longer the idle one.
    props = g.run_ok("systemctl show -p WatchdogUSec guestagent.service")
    assert "WatchdogUSec=3min" in props, props
    # /zramN: the step ran in the unit's mount namespace, gone since (guard.zram_swaps)
    assert re.search(r"swaps: \S*/zram\d+/100\b", armed), (
        f"the unit's ExecStartPre made no zram swap: {armed}; journal:\n{journal()}")
    record = g.run_ok("cat /run/guestagent/balloon.json")
    assert '"kind": "swap"' in record, (record, journal())
    # Where the step's own lines are (information only: it runs in a scope of its own).
    where = g.run("journalctl -b -o verbose --no-pager --grep='guard_set' | "
                  "grep -E '^ *(_SYSTEMD_UNIT|SYSLOG_IDENTIFIER|MESSAGE)=' | head -n 9")[0]
    print(f"guard under the unit: the ExecStartPre's journal lines:\n{where}")

    g.run_ok("systemctl stop guestagent.service", timeout=300 * TIMEOUT_SCALE)
    after = guard_state(g)
    log = journal()
    assert after == before, f"not undone: before {before!r}, after {after!r}; journal:\n{log}"
    errors = g.run("journalctl -b -u guestagent.service -p err -o cat --no-pager")[0]
    assert "guard_undo" not in errors, errors
    g.run_ok(f"rm -f {BALLOON_DROPIN}")
    seen = [e for e in ("guard_adopted", "guard_undo_left", "guard_undone") if e in log]
    return (f"before {before!r}; with [balloon] enabled {armed!r}; after stop {after!r}; "
            f"in the unit's journal: {', '.join(seen) or 'none of the guard lines'}")


def _check_cloud_init_ran(g: Guest) -> None:
    """The runner starts early in the boot; wait for cloud-init's last stage. Every stage must
    have run without an error (status done), ours included."""
    out, _ = g.run("cloud-init status --wait --long", timeout=1500)
    if "status: done" not in out:
        problems = g.run("grep -E 'WARNING|ERROR' /var/log/cloud-init.log | tail -n 40")[0]
        pytest.fail(f"cloud-init did not finish cleanly:\n{out}\n{problems}")
    assert g.run_ok("cat /proc/1/comm").strip() == "systemd"


def _check_package_and_module(g: Guest) -> None:
    """The agent is the package's, nothing else on PATH; cc_guestagent ran once for this
    instance (through guestagent-cloud-config.service), wrote the file from the user-data and
    switched the unit on."""
    assert "Status: install ok installed" in g.run_ok("dpkg -s guestagent")
    assert g.run_ok("command -v guestagent").strip() == "/usr/bin/guestagent"
    where = g.run_ok("python3 -c 'import guestagent; print(guestagent.__file__)'")
    assert where.startswith("/usr/lib/python3/dist-packages/guestagent/"), where
    toml = g.run_ok("cat /etc/guestagent/guestagent.toml")
    assert "Written by cloud-init (module cc_guestagent)" in toml, toml
    assert 'log_format = "json"' in toml and "refresh_seconds = 3600" in toml, toml
    assert "config_guestagent" in g.run_ok("ls /var/lib/cloud/instance/sem/")
    # Its lines in cloud-init's log ("<module name>: <what was done>").
    cilog = g.run_ok("grep -E 'cc_guestagent|guestagent: ' /var/log/cloud-init.log")
    assert "guestagent: wrote /etc/guestagent/guestagent.toml" in cilog, cilog
    assert "guestagent: systemctl enable guestagent.service" in cilog, cilog
    unit = g.run_ok("systemctl show -p ActiveState -p Result guestagent-cloud-config.service")
    assert "ActiveState=active" in unit and "Result=success" in unit, unit


def _check_unit_serves(g: Guest) -> None:
    """The image shipped the unit disabled: cloud-init enabled and started it; it answers on
    its status socket with cloud-init's configuration and logs to the journal."""
    assert g.run_ok("systemctl is-enabled guestagent.service").strip() == "enabled"
    state = wait_active(g, "guestagent.service", 600)
    assert state == "active", g.run("systemctl status guestagent.service; "
                                    "journalctl -b -u guestagent.service --no-pager")[0]
    props = g.run_ok("systemctl show -p Type -p WatchdogUSec -p NRestarts guestagent.service")
    # No job moves memory (topology and devices): the daemon asked systemd for the idle
    # timeout (sd_notify WATCHDOG_USEC=) in place of the unit's WatchdogSec=3min, and systemd
    # took it (the property shows the timeout in force).
    assert "Type=notify" in props and "WatchdogUSec=12min" in props, props
    assert "NRestarts=0" in props, props
    status = json.loads(g.run_ok("guestagent status --json"))
    assert status["role"] == "guest" and status["xenstore"] == "connected", status
    assert "/etc/guestagent/guestagent.toml" in status["config_files"], status
    topology = status["jobs"]["topology"]
    assert topology["running"] and topology["publishes"] >= 1, status
    assert topology["publish_error"] is None, status
    journal = g.run_ok("journalctl -b -u guestagent.service -o cat --no-pager")
    lines = [ln for ln in journal.splitlines() if ln.startswith("{")]
    assert any(json.loads(ln).get("event") == "started" for ln in lines), journal
    watchdog = [r for r in map(json.loads, lines) if r.get("event") == "watchdog"]
    assert [(r["timeout_s"], r["unit_s"]) for r in watchdog] == [(720.0, 180.0)], journal
    # stderr is the journal ($JOURNAL_STREAM): each line carried its syslog priority, which
    # journald stored (and stripped), and no timestamp of its own.
    check_journal_priorities(g)


def _check_dom0_sees_the_keys(bed: XenBed, g: Guest) -> None:
    """Dom0 sees the agent's keys in the guest's xenstore tree."""
    base = f"/local/domain/{g.domid}/data/guestagent"
    keys = xenstore_ls(bed, base)
    assert keys.get(f"{base}/version") == "1", keys
    assert keys.get(f"{base}/agent", "").startswith("guestagent "), keys
    assert keys.get(f"{base}/vnuma/nr-nodes") == "1", keys
    assert keys.get(f"{base}/vnuma/nodes/0/cpus") == "0-1", keys
    assert keys.get(f"{base}/vnuma/hypercall-status", "").startswith("no vNUMA"), keys


def test_cloud_init_installs_the_configuration_and_starts_the_agent(bed_debs: XenBed) -> None:
    spec = GuestSpec.pv(memory=512, vcpus=2, name="ci")
    spec.init = "systemd"
    with bed_debs.guest(spec) as g:
        _check_cloud_init_ran(g)
        _check_package_and_module(g)
        _check_unit_serves(g)
        _check_dom0_sees_the_keys(bed_debs, g)
        # The balloon's allocation guard under the unit (last: it restarts and stops the agent).
        print(f"guard under the unit: {check_guard_under_the_unit(g)}")
