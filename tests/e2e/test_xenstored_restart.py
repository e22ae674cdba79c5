"""A live update of Dom0's xenstored under the running Dom0 daemon (issue 15).

The bed's Dom0 runs Xen's C xenstored (``tests/e2e/dom0/init``). ``xenstore-control live-update
/usr/lib/xen-4.17/bin/xenstored`` is Xen's supported way to replace it while it serves: the old
process dumps its state (nodes, watches, connections) to ``/run/xenstored/state_dump`` and
execs the new binary with ``-U`` (``--live-update``, same PID), which reads the state back. C
xenstored hands every socket connection's descriptor over, so a client is expected to see no
break; this test
does not assume which: it asserts that, either way, the Dom0 daemon (``guestagent run --role
dom0``, what guestagent-dom0.service starts) is connected afterwards, its watches fire and its
full pass writes xenstore again, and ``status`` agrees with its log (no reconnect counted
without a ``xenstore_lost`` line, and the other way round). ``xl list`` works afterwards.

No guest: the daemon's full pass is made visible with a stale hint tree under a domain with no
PCI backend (``/local/domain/77/guestagent-dom0``, written by hand), which the pass removes
(``dom0_hints_published domid=77 ... removes=1``). The pass is set off by a write to the PCI
backend root the job watches (``/local/domain/0/backend/pci``: the Dom0 kernel's own xenbus
watch on ``backend`` ignores a path that short), and the periodic pass is put out of the way
(``resync_seconds = 3600``), so the removal shows the watch works. Checked once before the live
update (the probe itself works) and once after it.

The bed is shut down after the test: no later test meets the live-updated xenstored.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.bed import XenBed
from tests.e2e.test_dom0_devices import AGENT_ROOT, cpu_ticks, daemon_status, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

XENSTORED = "/usr/lib/xen-4.17/bin/xenstored"
XENSTORE_CONTROL = "/usr/lib/xen-4.17/bin/xenstore-control"
#: A domain with no PCI backend and a stale hint tree: every full pass of the job removes it.
FAKE_DOMID = 77
STALE = f"/local/domain/{FAKE_DOMID}/guestagent-dom0"
BACKEND_ROOT = "/local/domain/0/backend/pci"
CONFIG = "[dom0]\nresync_seconds = 3600\n"
#: What the old xenstored appends to its own command line when it execs the new binary (4.17's
#: lu_activate_binary: ``-U``; ``--live-update`` is the long form).
LU_FLAG = re.compile(r"(^|\s)(-U|--live-update)(\s|$)")


def xenstored_pid(bed: XenBed) -> int:
    return int(bed.dom0_ok("cat /run/xenstored.pid").strip())


def daemon_log(bed: XenBed) -> str:
    return bed.dom0_ok("cat /run/e2e/xsr-daemon.log")


def stale_removed_by_the_watch(bed: XenBed, what: str) -> None:
    """The stale tree written, the backend root touched (the job's watch), and the tree gone:
    the daemon's full pass ran and wrote xenstore."""
    passes = daemon_log(bed).count(f"domid={FAKE_DOMID} ")
    bed.dom0_ok(f"xenstore-write {STALE}/devices/0000-81-00-0/host-node 1")
    bed.dom0_ok(f"xenstore-exists {BACKEND_ROOT} || xenstore-write {BACKEND_ROOT} ''; "
                f"xenstore-write {BACKEND_ROOT} ''")
    wait_for(f"{what}: {STALE} removed by the pass the watch sets off",
             lambda: bed.dom0(f"xenstore-exists {STALE}")[1] != 0, 60, 2)
    assert daemon_log(bed).count(f"domid={FAKE_DOMID} ") > passes


def live_update(bed: XenBed) -> str:
    """``xenstore-control live-update``; returns what it printed. The same PID afterwards, now
    started with ``-U`` (``--live-update``): the new binary took over."""
    pid = xenstored_pid(bed)
    before = bed.dom0_ok(f"tr '\\0' ' ' </proc/{pid}/cmdline")
    assert not LU_FLAG.search(before), before
    out, rc = bed.dom0(f"{XENSTORE_CONTROL} live-update -t 60 {XENSTORED} 2>&1", timeout=180)
    if rc != 0 and "BUSY" in out.upper():  # a connection kept a transaction open: force it
        print(f"live update refused ({rc}), forced (-F): {out!r}")
        out, rc = bed.dom0(f"{XENSTORE_CONTROL} live-update -F -t 60 {XENSTORED} 2>&1",
                           timeout=180)
    assert rc == 0, f"xenstore-control live-update failed ({rc}):\n{out}"
    after = bed.dom0_ok(f"tr '\\0' ' ' </proc/{pid}/cmdline")
    assert LU_FLAG.search(after), (before, after, out)
    return f"xenstored {pid}: {before.strip()!r} -> {after.strip()!r}; xenstore-control: {out!r}"


def test_dom0_daemon_through_a_xenstored_live_update(beds: Any) -> None:
    bed: XenBed = beds.get(host_numa2=False)
    try:
        run_the_check(bed)
    finally:
        beds.close()  # the live-updated xenstored serves no other test


def run_the_check(bed: XenBed) -> None:
    bed.dom0_ok("e2e-agent setup", timeout=300)
    bed.dom0_ok(f"test -x {XENSTORE_CONTROL}")
    bed.dom0_ok(f"mkdir -p {AGENT_ROOT}/tmp/xsr.d; "
                f"cat > {AGENT_ROOT}/tmp/xsr.toml <<'E2E_XSR'\n{CONFIG}E2E_XSR")
    bed.dom0_ok(
        "mkdir -p /run/e2e; e2e-agent --log-level info run --role dom0 --config /tmp/xsr.toml "
        "--conf-dir /tmp/xsr.d >/run/e2e/xsr-daemon.log 2>&1 </dev/null & "
        "echo $! >/run/e2e/xsr-daemon.pid",
        timeout=300,
    )
    pid = int(bed.dom0_ok("cat /run/e2e/xsr-daemon.pid").strip())
    log = ""
    try:
        wait_for("the Dom0 daemon answering status, xenstore connected",
                 lambda: daemon_status(bed).get("xenstore") == "connected", 180)
        stale_removed_by_the_watch(bed, "before the live update")
        assert daemon_status(bed)["xenstore_reconnects"] == 0

        ticks_before = cpu_ticks(bed, pid)
        print(live_update(bed))
        bed.dom0_ok("xl list")
        status = wait_for("status connected after the live update", lambda: (
            s if (s := daemon_status(bed)).get("xenstore") == "connected" else None), 120, 2)
        stale_removed_by_the_watch(bed, "after the live update")
        used, elapsed = (a - b for a, b in zip(cpu_ticks(bed, pid), ticks_before))
        status = daemon_status(bed)
        print(f"status after the live update: {status}")
        print(f"the daemon used {used} of {elapsed} CPU ticks from the live update on")
    finally:
        log, _ = bed.dom0(f"kill {pid}; sleep 3; cat /run/e2e/xsr-daemon.log; "
                          f"xenstore-rm /local/domain/{FAKE_DOMID}")
        print(f"the Dom0 daemon's log:\n{log}")
    bed.dom0_ok("xl list")
    assert status["xenstore"] == "connected" and status["xenstore_connected"] is True, status
    lost = log.count("event=xenstore_lost")
    assert status["xenstore_reconnects"] == lost, (status, log)
    if lost:
        assert re.search(r"event=xenstore_reconnected\b", log), log
        print("the live update broke the connection: the daemon reconnected")
    else:
        print("the live update kept the connection: no xenstore_lost, no reconnect")
    assert used * 4 < elapsed, f"{used} of {elapsed} CPU ticks since the live update:\n{log}"
    assert "Traceback" not in log and "level=error" not in log, log
