"""Real-Xen check of Dom0's own devices (issue 16 item 2). Passed on 2026-12-05 (run
``20261205-083442-16241-pytest-numa2``), outside the default run.

Not a ``test_`` file, so a plain ``pytest -m e2e`` does not collect it; pytest collects a file
named on its command line whatever its name, so the lead runs it with::

    export E2E_CACHE=/var/cache/guestagent-e2e
    python -m pytest -m e2e tests/e2e/dom0_own_devices.py

The host is the 2-node layout (``bed_numa2``: the e1000e behind a ``pxb-pcie`` on host node 1,
Dom0 with ``dom0_max_vcpus=2``). The bed's Xen command line does not place Dom0's vCPUs, so the
check places them at run time with ``xl vcpu-pin`` (hard affinity, what ``dom0_vcpus_pin``
would give at boot): vCPU 0 on a node-0 pCPU, vCPU 1 on a node-1 pCPU. The e1000e is given back
to its driver if an earlier test left it with pciback, and its interface is brought up so that
the driver requests its MSI-X vectors. Then:

* ``host devices --json`` (no write) plans the vectors onto vCPU 1 and writes nothing;
* ``host devices --apply --json`` pins every vector to ``1``; ``xl vcpu-list 0`` shows vCPU 1
  running on a node-1 pCPU (so the interrupts are delivered on node 1), and the journal
  ``dom0-devices.json`` holds each vector;
* ``host devices --reset`` restores every vector's affinity as it was and removes the journal;
* with both vCPUs unpinned again, ``host devices --apply`` reports ``dom0_vcpus_unplaced`` and
  writes nothing.

:func:`check_dom0_daemon_own_devices` does the same through the daemon, as the issue's proof
asks: ``guestagent dom0 run`` (the Dom0 job alone, what ``guestagent run --role dom0`` runs)
with ``[dom0] own_devices = "auto"`` pins the vectors at its start, and its SIGTERM undoes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.e2e.bed import XenBed
from tests.e2e.passthrough import E1000E, pci_by_id
from tests.e2e.test_dom0_devices import agent_json, wait_for, xl_info_numa

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

JOURNAL = "/run/guestagent/dom0-devices.json"


def xl_vcpu_list(out: str) -> dict[int, tuple[int, str, str]]:
    """``xl vcpu-list 0``: {vCPU: (pCPU it runs on, hard affinity, soft affinity)}; a vCPU that
    is not running has ``-`` for its pCPU (-1 here)."""
    vcpus: dict[int, tuple[int, str, str]] = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 9 or fields[1] != "0":
            continue
        cpu = int(fields[3]) if fields[3].isdigit() else -1
        vcpus[int(fields[2])] = (cpu, fields[6], fields[8])
    return vcpus


def vectors(bed: XenBed, bdf: str) -> dict[int, str]:
    """The device's MSI-X vectors that the driver requested, with their smp_affinity_list."""
    out = bed.dom0_ok(
        f"for i in $(ls /sys/bus/pci/devices/{bdf}/msi_irqs); do "
        '[ -e /proc/irq/$i/smp_affinity_list ] && echo "$i $(cat /proc/irq/$i/smp_affinity_list)"; '
        "done; true")
    return {int(a): b for a, b in (ln.split() for ln in out.splitlines() if ln.strip())}


def give_back_to_dom0(bed: XenBed, bdf: str) -> None:
    """The e1000e bound to its own driver in Dom0 (not pciback), its interface up."""
    bed.dom0_ok(f"xl pci-assignable-list | grep -q {bdf} && xl pci-assignable-remove -r {bdf}; "
                "true")
    driver = bed.dom0_ok(f"basename $(readlink /sys/bus/pci/devices/{bdf}/driver)").strip()
    assert driver == "e1000e", f"{bdf} is bound to {driver!r}, not e1000e"
    bed.dom0_ok(f"for n in $(ls /sys/bus/pci/devices/{bdf}/net); do "
                "ip link set dev $n up 2>/dev/null || ifconfig $n up; done")


@contextmanager
def dom0_on_both_nodes(bed: XenBed) -> Iterator[tuple[str, dict[int, int]]]:
    """The e1000e given back to Dom0, Dom0's vCPU 0 pinned to a node-0 pCPU and vCPU 1 to a
    node-1 pCPU (what ``dom0_vcpus_pin`` gives at boot); every vCPU unpinned afterwards. Yields
    the e1000e's BDF and Xen's pCPU -> node map."""
    bed.dom0_ok("e2e-agent setup", timeout=300)
    (e1000e,) = pci_by_id(bed.dom0_ok, E1000E)
    give_back_to_dom0(bed, e1000e)
    _nodes, cpu_nodes, devices = xl_info_numa(bed.dom0_ok("xl info -n"))
    assert devices.get(e1000e) == 1, devices
    node0 = min(c for c, n in cpu_nodes.items() if n == 0)
    node1 = min(c for c, n in cpu_nodes.items() if n == 1)
    bed.dom0_ok(f"xl vcpu-pin 0 0 {node0} all; xl vcpu-pin 0 1 {node1} all")
    try:
        yield e1000e, cpu_nodes
    finally:
        bed.dom0_ok("xl vcpu-pin 0 all all all")


def check_dom0_own_devices(bed: XenBed) -> None:
    """The e1000e's vectors pinned to the Dom0 vCPU on a node-1 pCPU, then undone (module text)."""
    with dom0_on_both_nodes(bed) as (e1000e, cpu_nodes):
        before = vectors(bed, e1000e)
        assert before, "the e1000e has no requested vector (interface not up?)"
        shown = agent_json(bed, "host devices --json")
        (nic,) = [d for d in shown["devices"] if d["bdf"] == e1000e]
        assert (nic["node"], nic["near_vcpus"]) == (1, [1]), shown
        assert not shown["dom0_vcpus_unplaced"], shown
        assert vectors(bed, e1000e) == before

        done = agent_json(bed, "host devices --apply --json")
        (nic,) = [d for d in done["devices"] if d["bdf"] == e1000e]
        assert nic["failed"] == [], nic
        pinned = vectors(bed, e1000e)
        assert set(pinned.values()) == {"1"}, (pinned, nic)
        running = xl_vcpu_list(bed.dom0_ok("xl vcpu-list 0"))
        assert cpu_nodes[running[1][0]] == 1, running
        journal = bed.dom0_ok(f"cat {JOURNAL}")
        assert all(f"/proc/irq/{irq}/smp_affinity_list" in journal for irq in pinned), journal

        undone = agent_json(bed, "host devices --reset --json")
        assert undone["failed"] == 0, undone
        assert vectors(bed, e1000e) == before
        assert bed.dom0(f"test -e {JOURNAL}")[1] != 0
    unplaced = agent_json(bed, "host devices --apply --json")
    assert unplaced["dom0_vcpus_unplaced"], unplaced
    assert vectors(bed, e1000e) == before


def check_dom0_daemon_own_devices(bed: XenBed) -> None:
    """``guestagent dom0 run`` with ``[dom0] own_devices = "auto"``: the vectors on vCPU 1
    (running on a node-1 pCPU) while it runs, as before after its SIGTERM."""
    with dom0_on_both_nodes(bed) as (e1000e, cpu_nodes):
        before = vectors(bed, e1000e)
        assert before, "the e1000e has no requested vector (interface not up?)"
        bed.dom0_ok(
            "mkdir -p /run/e2e; printf '[dom0]\\nown_devices = \"auto\"\\n' >/run/e2e/own.toml; "
            "e2e-agent --log-level info dom0 run --resync 30 --config /run/e2e/own.toml "
            ">/run/e2e/own-run.log 2>&1 </dev/null & echo $! >/run/e2e/own-run.pid",
            timeout=300)
        try:
            wait_for("the daemon pins the e1000e's vectors on vCPU 1",
                     lambda: set(vectors(bed, e1000e).values()) == {"1"}, 180)
            running = xl_vcpu_list(bed.dom0_ok("xl vcpu-list 0"))
            assert cpu_nodes[running[1][0]] == 1, running
        finally:
            log, _ = bed.dom0("kill $(cat /run/e2e/own-run.pid); sleep 3; "
                              "cat /run/e2e/own-run.log")
        assert vectors(bed, e1000e) == before, log
        assert "level=error" not in log, log
        assert bed.dom0(f"test -e {JOURNAL}")[1] != 0, log


def dom0_own_devices_irqs_on_node1(bed_numa2: XenBed) -> None:
    """Both checks on one bed (module text)."""
    check_dom0_own_devices(bed_numa2)
    check_dom0_daemon_own_devices(bed_numa2)


#: What pytest runs when this file is named on its command line (the file is not a ``test_``
#: one, so a plain ``pytest -m e2e`` leaves it out until the lead adopts it).
test_dom0_own_devices_irqs_on_node1 = dom0_own_devices_irqs_on_node1
