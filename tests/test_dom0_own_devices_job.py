"""The Dom0 daemon job with ``[dom0] own_devices`` (issue 16 item 2): on the real event loop
and xenstore hub, the simulated Xen of tests/test_dom0_own_devices.py, and its fixture tree:
start pins the e1000e's vectors onto the node-1 Dom0 vCPUs, a full pass pins a new vector, stop
and a reload to ``off`` undo, and without the domctls the hints go on alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent.config import Config, defaults
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import JobContext, XenstoreHub
from guestagent.dom0.job import Dom0Job
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.xen.domctl import Domctl
from guestagent.xen.errors import XenUnavailable
from guestagent.xen.sysctl import Sysctl
from tests.hostnuma_support import Vcpu
from tests.test_dom0_own_devices import NIC, affinity, dom0_tree, dom0_xen, write

JOURNAL = "run/guestagent/dom0-devices.json"


def config(mode: str) -> Config:
    cfg = defaults()
    cfg.values["dom0"]["own_devices"] = mode
    return cfg


def host(root: Path, controls: bool = True) -> Host:
    xen = dom0_xen()

    @contextmanager
    def open_sysctl(hostfs: HostFS) -> Iterator[Sysctl]:
        yield Sysctl(xen)

    @contextmanager
    def open_controls(hostfs: HostFS) -> Iterator[tuple[Any, Any]]:
        if not controls:
            raise XenUnavailable("the C extension is not built (test)")
        yield Sysctl(xen), Domctl(xen)

    return Host(HostFS(str(root)), open_sysctl=open_sysctl, open_xen_controls=open_controls)


def started(root: Path, connect: Callable[[], Any], mode: str,
            controls: bool = True) -> Dom0Job:
    h = host(root, controls)
    job, loop = Dom0Job(), EventLoop()
    job.start(JobContext(loop, h.fs, config(mode), XenstoreHub(loop, connect), "dom0", host=h))
    return job


def test_start_pins_a_full_pass_follows_and_stop_undoes(
    tmp_path: Path, xs_connect: Callable[[int], Any]
) -> None:
    root = dom0_tree(tmp_path)
    job = started(root, lambda: xs_connect(0), "auto")
    assert affinity(root, 40) == affinity(root, 41) == "1-2" and affinity(root, 50) == "0-3"
    assert (root / JOURNAL).exists()
    status = job.status()
    assert {k: v for k, v in status.items() if k.startswith("own_")} == {
        "own_devices": "auto", "own_devices_pinned_irqs": 2, "own_devices_devices": 2,
        "own_devices_failed": 0, "own_devices_vcpus_unplaced": False,
        "own_devices_pinned_threads": 0}
    write(root, f"/sys/bus/pci/devices/{NIC}/msi_irqs/42", "msix\n")  # the driver asked one more
    write(root, "/proc/irq/42/smp_affinity_list", "0-3\n")
    job.republish("test")
    assert affinity(root, 42) == "1-2" and job.status()["own_devices_pinned_irqs"] == 3
    job.stop()
    assert [affinity(root, irq) for irq in (40, 41, 42)] == ["0-3"] * 3
    assert not (root / JOURNAL).exists()


def test_backend_threads_are_read_and_a_fixture_tree_refuses_to_move_them(
    tmp_path: Path, xs_connect: Callable[[int], Any], log_events: list[dict[str, Any]]
) -> None:
    """The job's pass reads netback's thread of domain 5 (kept on node 1 by its vCPUs' soft
    affinity) and plans it onto Dom0 vCPUs 1-2; on a fixture tree sched_setaffinity refuses
    (its pids are not this machine's): one failed line logged, the IRQs pinned all the same."""
    root = dom0_tree(tmp_path)
    write(root, "/proc/300/comm", "vif5.0-q0-guest\n")
    write(root, "/proc/300/status", "Name:\tvif5.0-q0-guest\nCpus_allowed_list:\t0-5\n")
    h = host(root)
    xen = h.open_xen_controls  # the same simulated Xen behind both openers
    job, loop = Dom0Job(), EventLoop()
    with xen(h.fs) as (_sysctl, domctl):
        domctl.privcmd.domains[5] = [Vcpu(cpu=2)]
        domctl.privcmd.affinity[(5, 0)] = (frozenset(range(16)), frozenset({2, 3}))
    job.start(JobContext(loop, h.fs, config("auto"), XenstoreHub(loop, lambda: xs_connect(0)),
                         "dom0", host=h))
    assert affinity(root, 40) == "1-2"
    (failed,) = [e for e in log_events if e.get("event") == "dom0_own_device_failed"]
    assert "vif5.0-q0-guest (pid 300)" in failed["error"]
    assert "not the real host" in failed["error"]
    assert job.status()["own_devices_pinned_threads"] == 0
    job.stop()
    assert affinity(root, 40) == "0-3"


def test_off_by_default_and_a_reload_to_off_undoes(
    tmp_path: Path, xs_connect: Callable[[int], Any]
) -> None:
    root = dom0_tree(tmp_path)
    job = started(root, lambda: xs_connect(0), "off")
    assert affinity(root, 40) == "0-3" and "own_devices" not in job.status()
    job.reload(config("pin"))
    assert affinity(root, 40) == "1-2" and job.status()["own_devices"] == "pin"
    job.reload(config("off"))
    assert affinity(root, 40) == "0-3" and not (root / JOURNAL).exists()
    assert "own_devices" not in job.status()
    job.stop()


def test_without_the_domctls_the_hints_go_on_alone(
    tmp_path: Path, xs_connect: Callable[[int], Any], log_events: list[dict[str, Any]]
) -> None:
    root = dom0_tree(tmp_path)
    job = started(root, lambda: xs_connect(0), "auto", controls=False)
    assert affinity(root, 40) == "0-3" and "own_devices" not in job.status()
    (warning,) = [e for e in log_events if e.get("event") == "dom0_own_devices_unavailable"]
    assert "C extension" in warning["error"]
    job.stop()
