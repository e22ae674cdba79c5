"""Real-Xen check of a device on a host node where the guest has no vnode (issue 16 item 6).
Passed on 2026-12-05 (run ``20261205-094334-6254-pytest-numa2``), outside the default run.

Not a ``test_`` file, so a plain ``pytest -m e2e`` does not collect it; pytest collects a file
named on its command line whatever its name, so the lead runs it with::

    export E2E_CACHE=/var/cache/guestagent-e2e
    python -m pytest -m e2e tests/e2e/io_remote.py

The host is the 2-node layout (``bed_numa2``: the e1000e behind a ``pxb-pcie`` on host node 1).
The guest is test_dom0_devices.py's HVM passthrough guest with the e1000e from its boot, but
both of its vnodes on host node 0 (``BOTH_ON_NODE0``), so the device's host node holds none of
them. Dom0 runs its job (``guestagent dom0 run``), as test_dom0_devices.py does. Shown:

* Dom0's hint: ``host-node`` 1, ``vnode`` 0 (the nearest: both vnodes are 20 away, the lower
  wins), ``vnode-source`` ``nearest``; ``dom0 publish --json`` says the same;
* in the guest, with the driver loaded and the interface up, then ``guestagent run`` (metrics
  served): the daemon binds the device to vnode 0 (numa_node 0, the vectors on vnode 0's vCPU)
  and logs a ``device_remote`` warning with ``host_node=1 vnode=0``;
* ``guestagent devices --json``: the device with ``host_node`` 1, ``remote`` true and a
  ``remote: ...`` skipped line with the remedy;
* ``guestagent status --json``: ``remote_devices`` 1 and the device ``remote``;
* the metrics: ``guestagent_devices_remote_devices`` 1, ``guestagent_devices_device_remote`` 1
  and ``guestagent_devices_device_host_node`` 1 for the device;
* SIGTERM: numa_node and the vectors as before, exit status 0, no error line.
"""

from __future__ import annotations

import pytest

from tests.e2e.bed import Guest, XenBed
from tests.e2e.io_hotplug import passthrough_guest_and_dom0_job, within
from tests.e2e.passthrough import (
    BOTH_ON_NODE0,
    DAEMON_LOG,
    DAEMON_RC,
    DAEMON_START,
    E1000E,
    METRICS_GET,
    METRICS_ON,
    error_lines,
    hint_path,
    log_events,
    metric_samples,
    pci_by_id,
)
from tests.e2e.test_dom0_devices import (
    _daemon_status,
    agent_json,
    bring_up,
    daemon_stopped,
    guest_device,
    irq_affinities,
    json_of,
)
from tests.e2e.util import TIMEOUT_SCALE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000 * TIMEOUT_SCALE)]

#: The hint's answer for the e1000e (host node 1) in a guest whose vnodes are both on node 0.
REMOTE_HINT = {"host-node": "1", "vnode": "0", "vnode-source": "nearest"}


def io_remote_device(bed_numa2: XenBed) -> None:
    """The e1000e on host node 1, the guest's vnodes on node 0 (module text)."""
    with passthrough_guest_and_dom0_job(bed_numa2, "rm", BOTH_ON_NODE0, attached=True) as (
            g, domid, host):
        check_remote_hint(bed_numa2, g, domid, host)
        print(check_remote_in_guest(g))


def check_remote_hint(bed: XenBed, g: Guest, domid: int, host: str) -> None:
    """The Dom0 job's hint says the device is on host node 1, nearest vnode 0."""
    (bdf,) = pci_by_id(g.run_ok, E1000E)
    hint = hint_path(domid, host)

    def published() -> dict[str, str]:
        out, rc = bed.dom0(f"for k in {' '.join(REMOTE_HINT)}; do "
                           f'echo "$k $(xenstore-read {hint}/$k)"; done')
        got = dict(ln.split(" ", 1) for ln in out.splitlines() if " " in ln)
        return got if rc == 0 and got.get("vnode-source") else {}

    assert within(f"the Dom0 job's hint under {hint}", published, 120, 3) == REMOTE_HINT
    assert bed.dom0_ok(f"xenstore-read {hint}/guest-bdf").strip() == bdf
    results = agent_json(bed, "dom0 publish --json")
    mine = [r for r in results if r["domid"] == domid]
    assert mine and mine[0]["error"] is None, results
    assert mine[0]["devices"] == [{"host_bdf": host, "guest_bdf": bdf, "host_node": 1,
                                   "vnode": 0, "vnode_source": "nearest"}], results


def check_remote_in_guest(g: Guest) -> str:
    """The daemon binds the device to vnode 0 and reports it remote everywhere; a summary."""
    (bdf,) = pci_by_id(g.run_ok, E1000E)
    assert g.run_ok("cat /sys/devices/system/node/online").strip() == "0-1"
    node0 = g.run_ok("cat /sys/devices/system/node/node0/cpulist").strip()
    # Driver and interface first: the vectors exist when the daemon's first pass runs (the e2e
    # guest runs no udevd, so the daemon hears of no later bind).
    irqs = bring_up(g, bdf)
    assert irqs, guest_device(g, bdf)
    before = irq_affinities(g, irqs)
    g.run_ok(METRICS_ON)
    g.run_ok(DAEMON_START)
    pinned = {i: node0 for i in irqs}
    within("the daemon's numa_node 0 and the vectors on vnode 0's vCPU", lambda: (
        guest_device(g, bdf)["node"] == "0" and irq_affinities(g, irqs) == pinned), 300, 3)
    check_command_and_status(g, bdf)
    check_metrics(g, bdf)
    warnings = log_events(g.run_ok(DAEMON_LOG), "device_remote", bdf=bdf, host_node="1",
                          vnode="0")
    assert warnings and all(w.get("level") == "warning" for w in warnings), warnings

    log = daemon_stopped(g)
    assert g.run_ok(DAEMON_RC).strip() == "0", log
    assert error_lines(log) == [], log
    assert guest_device(g, bdf)["node"] == "-1", log
    assert irq_affinities(g, irqs) == before, log
    return (f"remote: hint host-node 1, vnode 0 (nearest); {bdf} bound to vnode 0 "
            f"({len(irqs)} vectors on CPU {node0}), remote in devices --json, status "
            f"(remote_devices 1) and metrics, {len(warnings)} device_remote warnings; "
            "SIGTERM: undone, exit 0")


def check_command_and_status(g: Guest, bdf: str) -> None:
    """``devices --json`` and the daemon's status: host node 1, remote, the remedy's line."""
    shown = json_of(g.run_ok("guestagent devices --json 2>/dev/null", timeout=180))
    (report,) = [d for d in shown["devices"] if d["bdf"] == bdf]
    assert (report["source"], report["node"], report["host_node"], report["remote"]) == (
        "dom0", 0, 1, True), report
    remedy = "remote: the device sits on host node 1"
    assert [s for s in report["skipped"] if s.startswith(remedy)], report
    status = within("the daemon's status", lambda: _daemon_status(g), 120, 3)
    job = status["jobs"]["devices"]
    assert job["remote_devices"] == 1, job
    (entry,) = [d for d in job["devices"] if d["bdf"] == bdf]
    assert (entry["host_node"], entry["remote"]) == (1, True), entry


def check_metrics(g: Guest, bdf: str) -> None:
    """One scrape of the daemon's metrics: one remote device, this one, on host node 1."""

    def scrape() -> str:
        out, rc = g.run(METRICS_GET, timeout=60)
        return out if rc == 0 else ""

    text = within("the daemon's metrics", scrape, 60, 3)
    device = f'device="{bdf}"'
    assert metric_samples(text, "guestagent_devices_remote_devices") == {"": 1.0}, text
    remote = metric_samples(text, "guestagent_devices_device_remote")
    assert remote[device] == 1.0 and sum(remote.values()) == 1.0, text
    assert metric_samples(text, "guestagent_devices_device_host_node")[device] == 1.0, text


#: What pytest runs when this file is named on its command line (the file is not a ``test_``
#: one, so a plain ``pytest -m e2e`` leaves it out until the lead adopts it).
test_io_remote_device = pytest.mark.hvm(io_remote_device)
