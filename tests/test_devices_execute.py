"""The devices job's executor (guestagent/devices/execute.py): it writes exactly the plan it is
given, journals each change before making it, and `guestagent reset` undoes what it wrote.

Plans are built by hand; the host is a copy of the ``devices-2node`` fixture tree.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Callable

import pytest

from guestagent.devices import commands, netif
from guestagent.devices.execute import Applied, apply
from guestagent.devices.netif import Rings
from guestagent.devices.plan import (
    ForgetRecords,
    HugepageNodeDone,
    Note,
    Rebind,
    SetIrqAffinity,
    WriteNumaNode,
    irq_affinity_path,
    numa_node_path,
)
from guestagent.devices.state import STATE_FILE, StateStore
from guestagent.hostfs import HostFS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VF = "0000:00:05.0"
Logs = list[MutableMapping[str, Any]]


class WatchedHostFS(HostFS):
    """Records every write, and calls ``hook(path)`` just before it."""

    def __init__(self, root: str, hook: Callable[[str], None] = lambda path: None) -> None:
        super().__init__(root)
        self.hook = hook
        self.writes: list[tuple[str, str]] = []

    def write_text(self, host_path: str, value: str) -> None:
        self.hook(host_path)
        self.writes.append((host_path, value))
        super().write_text(host_path, value)


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    return root


def journal_on_disk(root: Path) -> dict[str, Any]:
    path = root / STATE_FILE.lstrip("/")
    if not path.exists():
        return {}
    return {c["path"]: c for c in json.loads(path.read_text())["changes"]}


def test_each_change_is_journalled_before_it_is_made(tmp_path: Path) -> None:
    root = tree(tmp_path)
    seen: dict[str, Any] = {}

    def at_write(path: str) -> None:
        if not path.startswith("/run/"):  # the journal's own temporary file is not a change
            seen[path] = journal_on_disk(root).get(path)

    hostfs = WatchedHostFS(str(root), at_write)
    journal = StateStore(hostfs).load()
    irq = irq_affinity_path(29)
    done = apply([WriteNumaNode(VF, 1, -1, "dom0"), SetIrqAffinity(VF, 29, "2-3", "0-3")],
                 hostfs, journal)
    assert done.failed == [] and len(done.applied) == 2
    assert seen[numa_node_path(VF)]["previous"] == "-1"
    assert seen[numa_node_path(VF)]["applied"] == "", "recorded before, applied after"
    assert seen[irq]["previous"] == "0-3"
    assert journal_on_disk(root)[irq]["applied"] == "2-3"
    assert journal_on_disk(root)[numa_node_path(VF)]["applied"] == "1"


def test_notes_write_nothing_and_log_their_events(tmp_path: Path, log_events: Logs) -> None:
    root = tree(tmp_path)
    hostfs = WatchedHostFS(str(root))
    done = apply([
        Note("skipped", "rebind refused: holds the root file system", event="rebind_refused",
             fields=(("bdf", VF), ("reason", "holds the root file system"))),
        Note("skipped", "IRQ 30: not requested by the driver yet", pending_irq=30),
        Note("planned", "IRQ 29: smp_affinity_list 0-3 -> 2-3"),
        HugepageNodeDone(1),
    ], hostfs, StateStore(hostfs).load())
    assert hostfs.writes == []
    assert done.skipped == ["rebind refused: holds the root file system",
                            "IRQ 30: not requested by the driver yet"]
    assert done.planned == ["IRQ 29: smp_affinity_list 0-3 -> 2-3"]
    assert done.pending_irqs == [30] and done.hugepage_nodes == {1}
    (event,) = [e for e in log_events if e["event"] == "rebind_refused"]
    assert event["bdf"] == VF and event["log_level"] == "warning"


def test_a_refused_numa_node_write_runs_none_of_its_then_steps(tmp_path: Path) -> None:
    root = tree(tmp_path)

    def refuse(path: str) -> None:
        if path == numa_node_path(VF):
            raise OSError(22, "Invalid argument", path)

    hostfs = WatchedHostFS(str(root), refuse)
    journal = StateStore(hostfs).load()
    done = apply([WriteNumaNode(VF, 1, -1, "config", then=(Rebind(VF, "ixgbevf"),))],
                 hostfs, journal)
    assert done.failed == ["numa_node = 1 refused by the kernel (EINVAL: Invalid argument)"]
    assert not done.rebound and journal.changes == {}
    assert (root / "sys/bus/pci/drivers/ixgbevf/unbind").read_text() == ""


def test_a_rebind_after_the_write_drops_the_old_vector_records(tmp_path: Path) -> None:
    root = tree(tmp_path)
    hostfs = WatchedHostFS(str(root))
    journal = StateStore(hostfs).load()
    apply([SetIrqAffinity(VF, 29, "2-3", "0-3")], hostfs, journal)
    done = apply([WriteNumaNode(VF, 1, -1, "config", then=(Rebind(VF, "ixgbevf"),))],
                 hostfs, journal)
    assert done.rebound
    assert [c.kind for c in journal.for_device(VF)] == ["numa_node", "driver_rebind"]
    assert (root / "sys/bus/pci/drivers/ixgbevf/unbind").read_text() == VF
    assert (root / "sys/bus/pci/drivers/ixgbevf/bind").read_text() == VF


def test_what_apply_journals_guestagent_reset_undoes(tmp_path: Path) -> None:
    """The journal format stays the one ``guestagent reset`` (devices part) reads."""
    root = tree(tmp_path)
    hostfs = HostFS(str(root))
    journal = StateStore(hostfs).load()
    stale = irq_affinity_path(24)
    apply([SetIrqAffinity("0000:00:03.0", 24, "0-1", "0-3"), ForgetRecords((stale,)),
           WriteNumaNode(VF, 1, -1, "dom0"), SetIrqAffinity(VF, 29, "2-3", "0-3")],
          hostfs, journal)
    assert stale not in journal.changes
    report = commands.undo(hostfs, "/run/guestagent")
    assert report.failures == 0
    assert report.lines == [
        f"{irq_affinity_path(29)}: restored '0-3'",
        f"{numa_node_path(VF)}: restored '-1' (the taint stays until reboot)",
    ]
    assert (root / "proc/irq/29/smp_affinity_list").read_text() == "0-3"
    assert (root / "proc/irq/24/smp_affinity_list").read_text() == "0-1", (
        "a forgotten record is not undone")
    assert not (root / STATE_FILE.lstrip("/")).exists()


# ---------------------------------------------------------------- interfaces across a rebind

IFNAME = "eth1"


class FakeDriver:
    """The rebound NIC's driver as the executor sees it: the unbind drops the interface's flags
    to down and its rings to the default; every ring read, ring set and flags write is logged
    in ``calls`` in order."""

    def __init__(self, root: Path, rings: Rings, up: bool = True) -> None:
        self.root = root
        self.rings = rings
        self.calls: list[str] = []
        net = root / f"sys/devices/pci0000:00/{VF}/net/{IFNAME}"
        net.mkdir(parents=True)
        (net / "flags").write_text("0x1003\n" if up else "0x1002\n")
        (root / f"sys/class/net/{IFNAME}").symlink_to(
            f"../../devices/pci0000:00/{VF}/net/{IFNAME}")
        self.flags = net / "flags"

    def get(self, ifname: str) -> Rings:
        assert ifname == IFNAME
        return self.rings

    def set(self, ifname: str, rings: Rings) -> None:
        self.calls.append(f"rings {rings.rx}/{rings.tx}")
        self.rings = rings

    def hook(self, path: str) -> None:
        if path.endswith("/unbind"):
            self.rings = Rings(256, 256)
            self.flags.write_text("0x1002\n")
        if path.endswith(f"/{IFNAME}/flags"):
            self.calls.append("flags")


def rebound(tmp_path: Path, up: bool = True, hook: Callable[[str], None] = lambda path: None,
            rename_wait: float = 5.0, can_admin: bool = True) -> tuple[Applied, FakeDriver]:
    root = tree(tmp_path)
    driver = FakeDriver(root, Rings(4096, 4096), up)

    def both(path: str) -> None:
        driver.hook(path)
        hook(path)

    hostfs = WatchedHostFS(str(root), both)
    done = apply([Rebind(VF, "ixgbevf", (2, 3))], hostfs, StateStore(hostfs).load(),
                 netif.NetAccess(driver, rename_wait, can_admin))
    return done, driver


def test_a_rebind_sets_the_rings_back_then_brings_the_interface_up(
        tmp_path: Path, log_events: Logs) -> None:
    done, driver = rebound(tmp_path)
    assert done.rebound and done.failed == []
    assert driver.calls == ["rings 4096/4096", "flags"], "rings while down, then up"
    assert driver.flags.read_text() == "0x1003"
    assert done.applied[-1] == f"interface {IFNAME}: rings rx 4096 tx 4096, up again"
    (event,) = [e for e in log_events if e["event"] == "interface_restored"]
    assert event["interface"] == IFNAME and event["restored"] == "rings rx 4096 tx 4096,up"


def test_an_interface_that_was_down_gets_its_rings_and_stays_down(tmp_path: Path) -> None:
    done, driver = rebound(tmp_path, up=False)
    assert driver.calls == ["rings 4096/4096"]
    assert driver.flags.read_text() == "0x1002\n"
    assert done.applied[-1] == f"interface {IFNAME}: rings rx 4096 tx 4096 again"


def test_an_interface_that_does_not_come_back_is_a_failed_line(
        tmp_path: Path, log_events: Logs) -> None:
    link = tmp_path / "root" / f"sys/class/net/{IFNAME}"  # tree()'s copy

    def remove_on_bind(path: str) -> None:
        if path.endswith("/bind"):
            link.unlink()

    done, driver = rebound(tmp_path, hook=remove_on_bind, rename_wait=0.0)
    assert done.rebound and driver.calls == []
    assert done.failed == [f"interface {IFNAME}: not back after the rebind; left to the "
                           "network configuration"]
    assert [e["interface"] for e in log_events if e["event"] == "interface_not_back"] == [IFNAME]


def test_a_refused_bring_up_is_a_failed_line_and_the_rebind_stands(tmp_path: Path) -> None:
    def refuse(path: str) -> None:
        if path.endswith(f"/{IFNAME}/flags"):
            raise PermissionError(1, "Operation not permitted", path)

    done, driver = rebound(tmp_path, hook=refuse)
    assert done.rebound and driver.flags.read_text() == "0x1002\n"
    assert done.failed == [f"interface {IFNAME}: not set back after the rebind "
                           "(EPERM: Operation not permitted)"]


def test_unreadable_interface_flags_leave_it_as_the_bind_makes_it(tmp_path: Path) -> None:
    root = tree(tmp_path)
    driver = FakeDriver(root, Rings(4096, 4096))
    driver.flags.write_text("up\n")
    hostfs = HostFS(str(root))
    states, problems = netif.read_interfaces(hostfs, VF, driver)
    assert states == []
    assert problems == [f"interface {IFNAME}: state not read (/sys/class/net/{IFNAME}/flags: "
                        "expected hexadecimal interface flags like 0x1003 (got 'up')); left as "
                        "the bind makes it"]


def test_interfaces_are_found_through_a_child_device(tmp_path: Path) -> None:
    """virtio-net's interface sits under ``virtio0/net``, not under the PCI function's ``net``."""
    hostfs = HostFS(str(tree(tmp_path)))
    assert netif.interface_names(hostfs, "0000:00:03.0") == ["eth0"]
    assert netif.interface_names(hostfs, VF) == []


def test_the_thread_runs_on_the_given_cpus_and_goes_back() -> None:
    before = os.sched_getaffinity(0)
    cpu = min(before)
    with netif.on_cpus([cpu], HostFS("/")) as placement:
        assert os.sched_getaffinity(0) == {cpu}
        assert placement == "on the node's CPUs"
    assert os.sched_getaffinity(0) == before
    with netif.on_cpus([cpu], HostFS("/nonexistent-fixture")) as placement:
        assert placement == "" and os.sched_getaffinity(0) == before


def test_the_ring_ioctl_reaches_the_driver() -> None:
    """SIOCETHTOOL on a netlink socket gets to the device's ethtool ops: the loopback device has
    no ring parameters and says so (EOPNOTSUPP), not EFAULT or ENOTTY (a wrong request)."""
    with pytest.raises(OSError) as caught:
        netif.EthtoolRings().get("lo")
    assert caught.value.errno == errno.EOPNOTSUPP


def test_without_cap_net_admin_a_nic_that_is_up_is_not_rebound(
        tmp_path: Path, log_events: Logs) -> None:
    """The packaged unit has no CAP_NET_ADMIN: the bind would leave the interface down (its
    rings and IFF_UP cannot be set back), so the rebind is refused before the unbind."""
    unbinds: list[str] = []
    done, driver = rebound(tmp_path, can_admin=False,
                           hook=lambda path: unbinds.append(path) if path.endswith("/unbind")
                           else None)
    assert not done.rebound and unbinds == [] and driver.calls == []
    assert done.failed == [f"rebind refused: {IFNAME} is up and this process lacks "
                           "CAP_NET_ADMIN to bring it back up after the bind (docs/IONUMA.md, "
                           "the unit's drop-in)"]
    assert [e["event"] for e in log_events if e["event"] == "rebind_refused"] == [
        "rebind_refused"]


def test_without_cap_net_admin_a_nic_that_is_down_is_still_rebound(tmp_path: Path) -> None:
    done, _driver = rebound(tmp_path, up=False, can_admin=False)
    assert done.rebound and done.failed == []


def test_cap_net_admin_is_read_from_capeff() -> None:
    assert netif.has_net_admin("Name:\tx\nCapEff:\t0000000000001000\n")
    assert not netif.has_net_admin("CapEff:\t0000000000000fff\n")
    assert not netif.has_net_admin("CapEff:\tzz\n")
    assert not netif.has_net_admin("Name:\tx\n")
