"""A passthrough device on a host node where the guest has no vnode (issue 16 item 6).

Dom0 publishes the device's host node and how it chose the vnode (``vnode-source``: ``nearest``
when no vnode of the guest sits on that node). The guest's devices job carries both into its
report: ``guestagent devices`` (table and JSON), the daemon's ``status`` (``remote_devices`` and
each device's ``host_node``/``remote``), the metrics made from that status, and a warning in
the log, so an operator can move the guest. Here from the tree the Dom0 agent's own schema code
writes, read by the daemon's job over a fixture tree (``devices-2node``: vnodes 0 and 1).
"""

from __future__ import annotations

import shutil
from collections.abc import MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from guestagent.config import load
from guestagent.daemon import metrics
from guestagent.daemon.loop import EventLoop
from guestagent.devices.apply import DevicesJob as DeviceBinder
from guestagent.devices.commands import render_table, to_json
from guestagent.devices.config import DevicesConfig
from guestagent.devices.hints import StaticHintSource
from guestagent.devices.hotplug import HotplugUnavailableError
from guestagent.devices.irqbalance import IrqbalanceStatus
from guestagent.devices.job import DevicesJob
from guestagent.devices.model import DeviceHint
from guestagent.devices.resolve import on_remote_node
from guestagent.host import Host
from guestagent.hostfs import HostFS
from tests.test_devices import FakeXenstore, published

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VF = "0000:00:05.0"  # no node of its own
NVME = "0000:00:06.0"  # the kernel says node 0
Logs = list[MutableMapping[str, Any]]


@pytest.mark.parametrize(("source", "host_node", "remote"), [
    ("pnode", 1, False),  # a vnode sits on the device's node
    ("nearest", 2, True),  # none does: the nearest vnode was chosen
    ("none", 2, True),  # none does and none could be chosen
    ("nearest", None, False),  # Xen knows no node for it: nothing to say
    ("single", 1, False),  # no vNUMA: no per-node memory to compare with
    ("", 1, False),  # the configuration's override says nothing of the host
])
def test_remote_is_dom0s_word_that_no_vnode_sits_on_the_devices_node(
        source: str, host_node: int | None, remote: bool) -> None:
    hint = DeviceHint(VF, vnode=0, host_node=host_node, vnode_source=source)
    assert on_remote_node(hint) is remote
    assert on_remote_node(None) is False


def dom0_tree(domid: int) -> dict[str, str]:
    """What the Dom0 agent publishes: the VF on host node 2 (the guest's vnodes sit on host
    nodes 0 and 1, so vnode 0 is only the nearest), the NVMe on host node 0 (vnode 0)."""
    from guestagent.dom0.schema import DeviceHint as Dom0Hint
    from guestagent.xen.sysctl import PciAddress

    tree = published(domid, [
        Dom0Hint(PciAddress.parse("0000:3b:00.0"), PciAddress.parse(VF), host_node=2, vnode=0,
                 vnode_source="nearest"),
        Dom0Hint(PciAddress.parse("0000:5e:00.0"), PciAddress.parse(NVME), host_node=0, vnode=0,
                 vnode_source="pnode"),
    ])
    return {**tree, "domid": str(domid)}


def no_udev(hostfs: HostFS) -> None:
    raise HotplugUnavailableError("no udev in this test")


def test_daemon_status_metrics_and_log_report_the_remote_device(
        tmp_path: Path, log_events: Logs) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    toml = tmp_path / "guestagent.toml"
    toml.write_text('[devices]\nirqbalance = "pin"\n')
    config = load(str(toml), str(tmp_path / "conf.d"))
    client = FakeXenstore(dom0_tree(7))
    hub = SimpleNamespace(client=lambda: client, watch=lambda path, cb: True)
    loop = EventLoop()
    ctx = SimpleNamespace(loop=loop, hostfs=HostFS(str(root)), config=config, xenstore=hub,
                          role="guest", host=Host(HostFS(str(root)), open_udev=no_udev))
    job = DevicesJob()
    try:
        job.start(ctx)  # type: ignore[arg-type]
        status = job.status()
        pinned = (root / "proc/irq/29/smp_affinity_list").read_text().strip()
    finally:
        job.stop()
        loop.close()
    assert status["remote_devices"] == 1
    devices = {d["bdf"]: d for d in status["devices"]}
    vf, nvme = devices[VF], devices[NVME]
    assert (vf["remote"], vf["host_node"], vf["node"], vf["source"]) == (True, 2, 0, "dom0")
    (line,) = [s for s in vf["skipped"] if s.startswith("remote:")]
    assert "host node 2, where this guest has no vnode; vnode 0, the nearest, is used" in line
    assert "move the guest" in line
    # Bound to its nearest vnode all the same (vnode 0's CPUs), and undone on stop.
    assert pinned == "0-1"
    assert (root / "proc/irq/29/smp_affinity_list").read_text().strip() == "0-3"
    assert (nvme["remote"], nvme["host_node"], nvme["source"]) == (False, 0, "kernel")
    assert not [s for s in nvme["skipped"] if s.startswith("remote:")]
    assert all(d["remote"] is False for b, d in devices.items() if b != VF)

    warned = [e for e in log_events if e["event"] == "device_remote"]
    assert warned and {(e["bdf"], e["host_node"], e["vnode"]) for e in warned} == {(VF, 2, 0)}
    assert all(e["log_level"] == "warning" for e in warned)

    text = metrics.render({"jobs": {"devices": {"running": True, **status}}})
    assert "guestagent_devices_remote_devices 1\n" in text
    assert f'guestagent_devices_device_remote{{device="{VF}"}} 1\n' in text
    assert f'guestagent_devices_device_remote{{device="{NVME}"}} 0\n' in text
    assert f'guestagent_devices_device_host_node{{device="{VF}"}} 2\n' in text
    assert f'guestagent_devices_device_host_node{{device="{NVME}"}} 0\n' in text


def test_devices_command_shows_the_remote_device(tmp_path: Path) -> None:
    """``guestagent devices``: the host node and REMOTE in the device's line, the remedy among
    its skipped lines; the same in ``--json``."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    hints = [DeviceHint(VF, vnode=1, host_node=3, vnode_source="nearest"),
             DeviceHint(NVME, vnode=0, host_node=0, vnode_source="pnode")]
    binder = DeviceBinder(HostFS(str(root)), DevicesConfig(), [StaticHintSource(hints)],
                          route_lookup=list, irqbalance_status=IrqbalanceStatus(running=False))
    reports = binder.scan(apply=False)
    table = render_table(reports, binder, applied=False)
    (vf_line,) = [ln for ln in table.splitlines() if ln.startswith(VF)]
    assert "node=1 (dom0)  host_node=3 REMOTE  kernel_numa_node=-1" in vf_line
    (nvme_line,) = [ln for ln in table.splitlines() if ln.startswith(NVME)]
    assert "host_node=0  kernel_numa_node=0" in nvme_line and "REMOTE" not in nvme_line
    assert ("    skipped: remote: the device sits on host node 3, where this guest has no "
            "vnode; vnode 1, the nearest, is used") in table
    shown = {d["bdf"]: d for d in to_json(reports, binder, [])["devices"]}
    assert shown[VF]["remote"] is True and shown[VF]["host_node"] == 3
    assert shown[NVME]["remote"] is False
    # A device no hint names: no host node, not remote.
    assert shown["0000:00:01.0"]["host_node"] is None and shown["0000:00:01.0"]["remote"] is False
