"""Real-Xen check of PCI hotplug while the guest's daemon runs (issue 16 item 3). Passed on
2026-12-05 (run ``20261205-093953-3481-pytest-numa2``), outside the default run.

Not a ``test_`` file, so a plain ``pytest -m e2e`` does not collect it; pytest collects a file
named on its command line whatever its name, so the lead runs it with::

    export E2E_CACHE=/var/cache/guestagent-e2e
    python -m pytest -m e2e tests/e2e/io_hotplug.py

The host is the 2-node layout (``bed_numa2``: the e1000e behind a ``pxb-pcie`` on host node 1).
The guest is test_dom0_devices.py's HVM passthrough guest (vnode 0 on host node 0, vnode 1 on
host node 1, one vCPU each) booted **without** the device: no ``pci=`` line, passthrough enabled
so that ``xl pci-attach`` can give it one later. Dom0 makes the e1000e assignable and runs its
job (``guestagent dom0 run``), which follows the PCI backends and publishes the hint. In the
guest, udevd is started (the e2e init runs none, and the agent's hotplug monitor hears only
udevd's netlink group), then ``guestagent run``. Then:

* ``xl pci-attach``: within ``ATTACH_SECONDS`` (times E2E_TIMEOUT_SCALE) the daemon logs
  ``hotplug_event action=add`` for the device's guest BDF and writes its ``numa_node``, 1 (the
  hint's vnode); the driver (loaded by udevd's rules, else by ``modprobe``) gets its interface
  up, and within ``VECTORS_SECONDS`` the MSI-X vectors are on vnode 1's vCPU; ``devices.json``
  records ``numa_node`` and every vector;
* ``xl pci-detach``: the device leaves the guest, the daemon logs ``hotplug_event
  action=remove``, ``devices.json`` records nothing any more, the Dom0 hint is gone, the log has
  no error line and the daemon still answers ``status`` (without the device);
* SIGTERM: the daemon exits with status 0, still without an error line.

A gap found by reading (io-e2e, 2026-12-05) and fixed before the run (8de3d4e): the job
repeated its pass for vectors the driver had not requested yet only after a full pass, not after
a udev event (``DevicesJob._on_udev`` dropped the reports), so nothing pinned the vectors of a
device hot-plugged with its interface down. In the run the vectors were on vnode 1's vCPU 21 s
after the link came up (which pass pinned them, the log of that run does not say).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from tests.e2e.bed import Guest, XenBed
from tests.e2e.passthrough import (
    DAEMON_LOG,
    DAEMON_RC,
    DAEMON_START,
    E1000E,
    PNODE_MAPPED,
    UDEVD_START,
    assignable_script,
    error_lines,
    hint_path,
    host_bdf,
    log_events,
    passthrough_guest,
    pci_by_id,
)
from tests.e2e.test_dom0_devices import (
    _daemon_status,
    _devices_journal,
    bring_up,
    daemon_stopped,
    guest_device,
    irq_affinities,
    start_dom0_job,
    stop_dom0_job,
    wait_for,
)
from tests.e2e.util import TIMEOUT_SCALE
from tests.e2e.vnuma import VNode

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000 * TIMEOUT_SCALE)]

#: From ``xl pci-attach`` to the device in the guest, its udev event in the daemon's log and its
#: numa_node written (the issue asks for "within seconds"; the TCG bed is slow).
ATTACH_SECONDS = 60
#: From the interface up to the vectors pinned: the job's repeated pass for vectors not requested
#: yet comes 30 s after the pass that saw them (guestagent/devices/job.py), plus a margin.
VECTORS_SECONDS = 120
#: From ``xl pci-detach`` to the device gone, its journal entries dropped and the hint removed.
DETACH_SECONDS = 120


def io_hotplug_attach_detach(bed_numa2: XenBed) -> None:
    """The e1000e attached to and detached from the running guest (module text)."""
    with passthrough_guest_and_dom0_job(bed_numa2, "hp", PNODE_MAPPED, attached=False) as (
            g, domid, host):
        print(check_hotplug(bed_numa2, g, domid, host))


@contextmanager
def passthrough_guest_and_dom0_job(
    bed: XenBed, name: str, vnodes: Sequence[VNode], attached: bool
) -> Iterator[tuple[Guest, int, str]]:
    """The e1000e made assignable, the Dom0 job running (its log checked at the end: the hints
    published, no error line), the passthrough guest up, with the device from its boot when
    ``attached``; yields the guest, its domid and the e1000e's host BDF (io_remote.py too)."""
    bed.dom0_ok("e2e-agent setup", timeout=300)
    host = host_bdf(bed.dom0_ok, E1000E)
    bed.dom0_ok(assignable_script(host))
    start_dom0_job(bed)
    try:
        with bed.guest(passthrough_guest(name, vnodes, host if attached else None)) as g:
            assert g.domid is not None
            yield g, g.domid, host
    finally:
        log = stop_dom0_job(bed)
    assert "dom0_hints_published" in log, log
    assert error_lines(log) == [], log


def within(what: str, probe: Any, seconds: float, step: float = 2) -> Any:
    """:func:`wait_for` with the bound scaled by E2E_TIMEOUT_SCALE (io_remote.py too)."""
    return wait_for(what, probe, seconds * TIMEOUT_SCALE, step)


def check_hotplug(bed: XenBed, g: Guest, domid: int, host: str) -> str:
    """Attach, bind, detach under the running daemon; a summary line."""
    assert pci_by_id(g.run_ok, E1000E) == [], "the guest has the e1000e before the attach"
    g.run_ok(UDEVD_START, timeout=90)
    g.run_ok(DAEMON_START)
    status = within("the daemon answering status", lambda: _daemon_status(g), 180, 3)
    job = status["jobs"]["devices"]
    assert job["running"] and job["hotplug"] == "following udev", status
    bdf, attached = check_attach(bed, g, domid, host)
    check_detach(bed, g, domid, host, bdf)
    log = daemon_stopped(g)
    assert g.run_ok(DAEMON_RC).strip() == "0", log
    assert error_lines(log) == [], log
    return (f"hotplug: {attached}; xl pci-detach -> remove event, devices.json empty, hint "
            "gone, status answered; SIGTERM: exit 0, no error line")


def check_attach(bed: XenBed, g: Guest, domid: int, host: str) -> tuple[str, str]:
    """``xl pci-attach``: the udev event, numa_node 1, then (interface up) the vectors on vnode
    1's vCPU, all journalled. Returns the guest BDF and what was seen, with its times."""
    attached = time.monotonic()
    print(bed.dom0_ok(f"xl pci-attach {domid} {host}", timeout=120))
    (bdf,) = within("the e1000e in the guest", lambda: pci_by_id(g.run_ok, E1000E), ATTACH_SECONDS)
    within(f"hotplug_event action=add bdf={bdf} in the daemon's log", lambda: log_events(
        g.run_ok(DAEMON_LOG), "hotplug_event", action="add", bdf=bdf), ATTACH_SECONDS)
    event_after = time.monotonic() - attached
    within("numa_node 1 written", lambda: guest_device(g, bdf)["node"] == "1", ATTACH_SECONDS)
    bound_after = time.monotonic() - attached
    hint = hint_path(domid, host)
    assert bed.dom0_ok(f"xenstore-read {hint}/guest-bdf").strip() == bdf
    assert bed.dom0_ok(f"xenstore-read {hint}/vnode").strip() == "1"

    # udevd's rules load the driver (its modalias) and may rename the interface: let it finish.
    g.run_ok("udevadm settle --timeout=60", timeout=90)
    loader = "udevd" if guest_device(g, bdf)["driver"] == "e1000e" else "modprobe"
    up = time.monotonic()
    irqs = bring_up(g, bdf)  # its modprobe does nothing when udevd loaded the driver
    assert irqs, guest_device(g, bdf)
    pinned = {i: "1" for i in irqs}
    within("the vectors on vnode 1's vCPU", lambda: irq_affinities(g, irqs) == pinned,
           VECTORS_SECONDS, 3)
    pinned_after = time.monotonic() - up
    journalled = _devices_journal(g)
    assert f"/sys/bus/pci/devices/{bdf}/numa_node" in journalled, journalled
    assert all(f"/proc/irq/{i}/smp_affinity_list" in journalled for i in irqs), journalled
    return bdf, (f"xl pci-attach -> hotplug_event add for {bdf} after {event_after:.0f} s, "
                 f"numa_node 1 after {bound_after:.0f} s; driver loaded by {loader}; "
                 f"{len(irqs)} vectors on vnode 1's vCPU {pinned_after:.0f} s after the link "
                 "came up")


def check_detach(bed: XenBed, g: Guest, domid: int, host: str, bdf: str) -> None:
    """``xl pci-detach``: the device gone, the remove event, the journal and the hint empty,
    no error line, the daemon answering status without the device."""
    print(bed.dom0_ok(f"xl pci-detach {domid} {host}", timeout=180))
    within("the e1000e gone from the guest", lambda: not pci_by_id(g.run_ok, E1000E),
           DETACH_SECONDS)
    within(f"hotplug_event action=remove bdf={bdf} in the daemon's log", lambda: log_events(
        g.run_ok(DAEMON_LOG), "hotplug_event", action="remove", bdf=bdf), DETACH_SECONDS)
    within("devices.json without the device's entries", lambda: _devices_journal(g) == [],
           DETACH_SECONDS)
    hint = hint_path(domid, host)
    within("the Dom0 hint removed",
           lambda: bed.dom0(f"xenstore-read {hint}/host-node")[1] != 0, DETACH_SECONDS, 3)
    log = g.run_ok(DAEMON_LOG)
    assert error_lines(log) == [], log
    status = within("the daemon answering status after the detach", lambda: _daemon_status(g), 60)
    assert status["jobs"]["devices"]["running"], status
    assert bdf not in [d["bdf"] for d in status["jobs"]["devices"]["devices"]], status


#: What pytest runs when this file is named on its command line (the file is not a ``test_``
#: one, so a plain ``pytest -m e2e`` leaves it out until the lead adopts it).
test_io_hotplug_attach_detach = pytest.mark.hvm(io_hotplug_attach_detach)
