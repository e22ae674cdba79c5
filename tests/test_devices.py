"""I/O NUMA in the guest: discovery, node resolution, appliers with undo, hotplug, irqbalance.

Fixture trees (copied to tmp_path before anything writes):

* ``devices-2node``: 2 vnodes (CPUs 0-1, 2-3); 0000:00:03.0 virtio-net carrying the default route
  (eth0), 0000:00:04.0 virtio-blk holding ``/`` (254:1), 0000:00:05.0 a passthrough VF with MSI-X
  29-31 and ``numa_node`` -1, 0000:00:06.0 NVMe on node 0 (MSI-X 32-33), 0000:00:07.0 legacy INTx 5
  on node 1, 0000:00:01.0 INTx 9 with no node anywhere, 0000:00:00.0 a host bridge without IRQs.
* ``devices-garbage``: ``numa_node = abc``, junk names under ``msi_irqs/``, a junk ``vendor``, a
  non-PCI name in ``/sys/bus/pci/devices``.
"""

# House rule (docs/DEVELOPING.md): Optional/Union, not X | Y, for Python 3.9.
# ruff: noqa: UP007, UP045

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional, Union

import pytest

from guestagent.devices.apply import DevicesJob, irq_affinity_path
from guestagent.devices.config import DevicesConfig
from guestagent.devices.discovery import list_devices, read_device, read_node_info
from guestagent.devices.hints import (
    ConfigHintSource,
    StaticHintSource,
    XenstoreHintSource,
    validate_hints,
)
from guestagent.devices.hotplug import dispatch, event_key
from guestagent.devices.irqbalance import IrqbalanceStatus, decide, detect, policy_lines
from guestagent.devices.model import DeviceHint, NodeInfo, PciDevice
from guestagent.devices.protect import protected_devices, root_device_functions
from guestagent.devices.resolve import resolve_node
from guestagent.devices.state import STATE_FILE, StateStore
from guestagent.errors import InputError
from guestagent.hostfs import HostFS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VF = "0000:00:05.0"
NVME = "0000:00:06.0"
NET = "0000:00:03.0"
BLK = "0000:00:04.0"
NOT_RUNNING = IrqbalanceStatus(running=False)
Logs = list[MutableMapping[str, Any]]


def eth0() -> list[str]:
    return ["eth0"]


@pytest.fixture(autouse=True)
def logs(log_events: Logs) -> Logs:
    """Every log event of the test, as dicts (conftest's ``log_events``, for every test here)."""
    return log_events


def copy_tree(tmp_path: Path, name: str = "devices-2node") -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / name, root, symlinks=True)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every regular file's text below root, except the agent's own run directory."""
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel.startswith("run/"):
                continue
            out[rel] = p.read_text()
    return out


def job_for(root: Union[Path, HostFS], config: Optional[DevicesConfig] = None,
            hints: Optional[list[DeviceHint]] = None,
            irqbalance: Optional[IrqbalanceStatus] = NOT_RUNNING,
            route_lookup: Callable[[], list[str]] = eth0) -> DevicesJob:
    hostfs = root if isinstance(root, HostFS) else HostFS(str(root))
    sources = [StaticHintSource(hints, name="dom0")] if hints else []
    return DevicesJob(hostfs, config or DevicesConfig(), sources, route_lookup=route_lookup,
                      irqbalance_status=irqbalance)


def irq_text(root: Path, irq: int) -> str:
    return (root / "proc/irq" / str(irq) / "smp_affinity_list").read_text()


def events(logs: Logs, name: str) -> Logs:
    return [e for e in logs if e["event"] == name]


# ---------------------------------------------------------------- discovery


def test_discovery_reads_every_device_and_the_nodes() -> None:
    hostfs = HostFS(str(FIXTURES / "devices-2node"))
    names, bad = list_devices(hostfs)
    assert names == ["0000:00:00.0", "0000:00:01.0", NET, BLK, VF, NVME, "0000:00:07.0"]
    assert bad == []
    vf = read_device(hostfs, VF)
    assert (vf.vendor, vf.device, vf.pci_class) == (0x8086, 0x10ED, 0x020000)
    assert vf.driver == "ixgbevf" and vf.numa_node == -1 and vf.class_name == "network"
    assert vf.msi_irqs == [29, 30, 31] and vf.msi_modes == {29: "msix", 30: "msix", 31: "msix"}
    assert vf.irqs == [29, 30, 31] and vf.local_cpus == [0, 1, 2, 3] and vf.problems == []
    legacy = read_device(hostfs, "0000:00:07.0")
    assert legacy.msi_irqs == [] and legacy.irqs == [5] and legacy.numa_node == 1
    assert legacy.driver is None
    bridge = read_device(hostfs, "0000:00:00.0")
    assert bridge.irqs == []
    problems: list[str] = []
    nodes = read_node_info(hostfs, problems)
    assert nodes.online == [0, 1] and nodes.cpus == {0: [0, 1], 1: [2, 3]} and problems == []


def test_offline_cpus_are_left_out_of_a_node(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    (root / "sys/devices/system/cpu/online").write_text("0-2\n")
    nodes = read_node_info(HostFS(str(root)), [])
    assert nodes.cpus == {0: [0, 1], 1: [2]}


# ---------------------------------------------------------------- node resolution (pure)


def _dev(bdf: str = VF, numa_node: int = -1) -> PciDevice:
    return PciDevice(bdf=bdf, vendor=0x8086, device=0x10ED, pci_class=0x020000, driver="x",
                     numa_node=numa_node, local_cpus=[], msi_irqs=[29], msi_modes={},
                     legacy_irq=0)


NODES = NodeInfo(online=[0, 1], cpus={0: [0, 1], 1: [2, 3]}, online_cpus=[0, 1, 2, 3])


def test_resolution_order_kernel_then_dom0_then_config_then_unknown() -> None:
    dom0 = {VF: DeviceHint(VF, vnode=1, host_node=3)}
    config = {VF: DeviceHint(VF, vnode=0)}
    assert resolve_node(_dev(numa_node=0), NODES, dom0, config).source == "kernel"
    r = resolve_node(_dev(), NODES, dom0, config)
    assert (r.node, r.source) == (1, "dom0")
    r = resolve_node(_dev(), NODES, {}, config)
    assert (r.node, r.source) == (0, "config")
    r = resolve_node(_dev(), NODES, {}, {})
    assert (r.node, r.source) == (None, "unknown")


def test_kernel_node_that_is_not_online_falls_back_to_the_hint() -> None:
    r = resolve_node(_dev(numa_node=3), NODES, {VF: DeviceHint(VF, vnode=1)}, {})
    assert (r.node, r.source) == (1, "dom0")
    assert "not an online node" in r.notes[0]


def test_hint_naming_a_node_the_guest_does_not_have_is_one_line_and_ignored(
        tmp_path: Path, logs: Logs) -> None:
    good, bad = validate_hints([DeviceHint(VF, vnode=5, host_node=1)], NODES, "dom0")
    assert good == {} and len(bad) == 1
    assert "node 5" in bad[0] and "does not have" in bad[0] and VF in bad[0]

    root = copy_tree(tmp_path)
    job = job_for(root, hints=[DeviceHint(VF, vnode=5, host_node=1)])
    job.refresh()
    report = job.evaluate(VF, apply=False)
    assert report is not None and report.source == "unknown" and report.node is None
    lines = events(logs, "devices_input_ignored")
    assert len(lines) == 1 and "node 5" in lines[0]["problem"]
    # Nothing was written for it.
    job.scan(apply=True)
    assert (root / f"sys/devices/pci0000:00/{VF}/numa_node").read_text() == "-1\n"
    assert irq_text(root, 29) == "0-3\n"


def test_config_override_source_validates_its_entries(logs: Logs) -> None:
    hints = ConfigHintSource({VF: 1, "eth0": 0, NVME: "one"}).hints()
    assert hints == [DeviceHint(VF, vnode=1)]
    assert len(events(logs, "hint_ignored")) == 2


class FakeXenstore:
    """Just enough of the xenstore client: read, directory, get_perms on a flat tree."""

    def __init__(self, tree: dict[str, str], perms: Optional[list[Any]] = None) -> None:
        self.tree = tree
        self.perms = perms

    def read(self, path: str) -> bytes:
        from guestagent.xen.xenstore import XenstoreError

        if path not in self.tree:
            raise XenstoreError(errno.ENOENT, path, "read")
        return self.tree[path].encode()

    def directory(self, path: str) -> list[str]:
        from guestagent.xen.xenstore import XenstoreError

        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/")[0] for p in self.tree if p.startswith(prefix)}
        if not names and path not in self.tree:
            raise XenstoreError(errno.ENOENT, path, "directory")
        return sorted(names)

    def get_perms(self, path: str) -> list[Any]:
        from guestagent.xen.xs_wire import Permission

        return self.perms if self.perms is not None else [Permission("n", 0), Permission("r", 7)]


def published(domid: int, hints: list[Any]) -> dict[str, str]:
    """The tree the Dom0 agent writes for these hints (its own schema code)."""
    from guestagent.dom0.schema import base_path, desired_tree

    base = base_path(domid)
    return {f"{base}/{k}": v for k, v in desired_tree(hints).items()}


def test_xenstore_hint_source_reads_what_the_dom0_agent_publishes(logs: Logs) -> None:
    from guestagent.dom0.schema import DeviceHint as Dom0Hint
    from guestagent.xen.sysctl import PciAddress
    from guestagent.xen.xs_wire import Permission

    host = PciAddress.parse("0000:3b:00.0")
    tree = published(7, [
        Dom0Hint(host, PciAddress.parse(VF), host_node=1, vnode=1, vnode_source="pnode"),
        Dom0Hint(PciAddress.parse("0000:3b:00.1"), None, 1, 1, "pnode"),
        Dom0Hint(PciAddress.parse("0000:5e:00.0"), PciAddress.parse(NVME), None, None, "none"),
    ])
    source = XenstoreHintSource(FakeXenstore(tree), domid=7)
    assert source.hints() == [DeviceHint(VF, vnode=1, host_node=1, vnode_source="pnode")]
    assert len(events(logs, "dom0_hint_incomplete")) == 2
    # Nothing published: no hints, no warning.
    assert XenstoreHintSource(FakeXenstore({}), domid=7).hints() == []
    assert events(logs, "dom0_hints_ignored") == []
    # A tree the guest itself could have written is not Dom0's word.
    forged = FakeXenstore(tree, perms=[Permission("b", 7)])
    assert XenstoreHintSource(forged, domid=7).hints() == []
    # An unknown schema version: one line, no hints.
    tree["/local/domain/7/guestagent-dom0/version"] = "2"
    assert XenstoreHintSource(FakeXenstore(tree), domid=7).hints() == []
    ignored = events(logs, "dom0_hints_ignored")
    assert len(ignored) == 2 and "dom0" in ignored[0]["reason"]
    assert "version" in ignored[1]["reason"]


# ---------------------------------------------------------------- apply and undo


def test_msix_irqs_and_numa_node_are_applied_then_undone_exactly(
        tmp_path: Path, logs: Logs) -> None:
    root = copy_tree(tmp_path)
    before = snapshot(root)
    job = job_for(root, hints=[DeviceHint(VF, vnode=1, host_node=1)])
    reports = {r.bdf: r for r in job.scan(apply=True)}
    vf = reports[VF]
    assert (vf.node, vf.source) == (1, "dom0")
    assert (root / f"sys/devices/pci0000:00/{VF}/numa_node").read_text() == "1"
    for irq in (29, 30, 31):
        assert irq_text(root, irq) == "2-3"
    assert any("numa_node = 1" in a for a in vf.applied)
    assert sum("smp_affinity_list = 2-3" in a for a in vf.applied) == 3
    # One log line says the write taints the kernel.
    taint = events(logs, "numa_node_written")
    assert len(taint) == 1 and "taints the kernel" in taint[0]["note"]
    # The kernel-known NVMe and the legacy INTx device are pinned too; unknown ones are not.
    assert irq_text(root, 32) == "0-1" and irq_text(root, 5) == "2-3"
    assert irq_text(root, 24) == "0-3\n" and irq_text(root, 9) == "0-3\n"
    assert reports["0000:00:01.0"].source == "unknown"
    # The state file records the previous values before anything else happens.
    state = json.loads((root / STATE_FILE.lstrip("/")).read_text())
    recorded = {c["path"]: c["previous"] for c in state["changes"]}
    assert recorded[irq_affinity_path(29)] == "0-3"
    assert recorded[f"/sys/bus/pci/devices/{VF}/numa_node"] == "-1"

    # A second apply changes nothing and keeps the first previous values.
    job_for(root, hints=[DeviceHint(VF, vnode=1)]).scan(apply=True)
    again = json.loads((root / STATE_FILE.lstrip("/")).read_text())
    assert {c["path"]: c["previous"] for c in again["changes"]} == recorded

    # After a "crash", a fresh job undoes everything from the state file alone.
    lines = job_for(root).reset()
    assert len(lines) == len(recorded)
    for rel, text in before.items():
        assert (root / rel).read_text().strip() == text.strip(), rel
    assert not (root / STATE_FILE.lstrip("/")).exists()


def test_undo_leaves_alone_what_someone_else_changed_since(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    job_for(root, config=DevicesConfig(node_overrides={VF: 1})).scan(apply=True)
    (root / "proc/irq/30/smp_affinity_list").write_text("1\n")
    lines = job_for(root).reset()
    assert any("/proc/irq/30/" in line and "someone else" in line for line in lines)
    assert irq_text(root, 30) == "1\n" and irq_text(root, 29) == "0-3"


class FaultyHostFS(HostFS):
    """A HostFS whose writes to chosen paths fail or run a callback first."""

    def __init__(self, root: str, errors: Optional[dict[str, int]] = None,
                 before: Optional[dict[str, Callable[[], None]]] = None) -> None:
        super().__init__(root)
        self.errors = errors or {}
        self.before = before or {}
        self.writes: list[tuple[str, str]] = []

    def write_text(self, host_path: str, value: str) -> None:
        if host_path in self.before:
            self.before[host_path]()
        if host_path in self.errors:
            code = self.errors[host_path]
            raise OSError(code, os.strerror(code), host_path)
        self.writes.append((host_path, value))
        super().write_text(host_path, value)


def test_managed_irq_refusing_writes_is_left_alone(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    hostfs = FaultyHostFS(str(root), errors={irq_affinity_path(33): errno.EIO})
    report = job_for(hostfs).evaluate(NVME, apply=True)
    assert report is not None
    assert "IRQ 33: kernel-managed, left alone" in report.skipped
    assert irq_text(root, 32) == "0-1" and irq_text(root, 33) == "0-3\n"
    store = StateStore(hostfs).load()
    assert irq_affinity_path(33) not in store.changes and irq_affinity_path(32) in store.changes


def test_vector_not_requested_yet_is_a_skip_then_pinned_once_it_is(tmp_path: Path) -> None:
    """Seen on real Xen: a NIC's MSI-X vectors exist from probe on, their /proc/irq entries only
    once the interface is up. Before that: a skip with the reason, not a failure; after: pinned."""
    root = copy_tree(tmp_path)
    saved = tmp_path / "irq30"
    shutil.move(str(root / "proc/irq/30"), str(saved))
    report = job_for(root, hints=[DeviceHint(VF, vnode=1)]).evaluate(VF, apply=True)
    assert report is not None and report.failed == [], report
    assert any(s.startswith("IRQ 30: not requested by the driver yet") for s in report.skipped)
    assert report.pending_irqs == [30] and report.to_dict()["pending_irqs"] == [30]
    assert irq_text(root, 29) == "2-3" and irq_text(root, 31) == "2-3"
    assert irq_affinity_path(30) not in StateStore(HostFS(str(root))).load().changes
    # The interface comes up: the next pass pins it and records it.
    shutil.move(str(saved), str(root / "proc/irq/30"))
    report = job_for(root, hints=[DeviceHint(VF, vnode=1)]).evaluate(VF, apply=True)
    assert report is not None and report.failed == [], report
    assert irq_text(root, 30) == "2-3" and report.pending_irqs == []
    assert StateStore(HostFS(str(root))).load().changes[irq_affinity_path(30)].previous == "0-3"
    # A vector whose directory is there but whose affinity file is not is still a failure.
    (root / "proc/irq/31/smp_affinity_list").unlink()
    report = job_for(root, hints=[DeviceHint(VF, vnode=1)]).evaluate(VF, apply=True)
    assert report is not None
    assert any("IRQ 31:" in f and "does not exist" in f for f in report.failed), report


def test_numa_node_write_refused_by_the_kernel_is_reported(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    hostfs = FaultyHostFS(str(root), errors={f"/sys/bus/pci/devices/{VF}/numa_node": errno.EINVAL})
    job = job_for(hostfs, config=DevicesConfig(node_overrides={VF: 1}))
    job.refresh()
    report = job.evaluate(VF, apply=True)
    assert report is not None and any("EINVAL" in f for f in report.failed)
    assert f"/sys/bus/pci/devices/{VF}/numa_node" not in StateStore(hostfs).load().changes
    # The IRQs still go to the node the override names.
    assert irq_text(root, 29) == "2-3"


def test_numa_node_write_off_by_configuration(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    job = job_for(root, config=DevicesConfig(node_overrides={VF: 1}, write_numa_node=False))
    report = {r.bdf: r for r in job.scan(apply=True)}[VF]
    assert (report.node, report.source) == (1, "config")
    assert any("off by configuration" in s for s in report.skipped)
    assert (root / f"sys/devices/pci0000:00/{VF}/numa_node").read_text() == "-1\n"
    assert irq_text(root, 29) == "2-3"


def test_hugepages_reserved_on_the_device_node_and_restored(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    path = root / "sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"
    job_for(root, config=DevicesConfig(node_overrides={VF: 1}, hugepages_2m_per_node=64)).scan(
        apply=True)
    assert path.read_text() == "64"
    assert (root / "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
            ).read_text() == "64", "node 0 hosts the NVMe"
    job_for(root).reset()
    assert path.read_text() == "0"


# ---------------------------------------------------------------- rebind and protection


def test_root_fs_and_default_route_devices_are_found() -> None:
    hostfs = HostFS(str(FIXTURES / "devices-2node"))
    assert root_device_functions(hostfs) == [BLK]
    protected = protected_devices(hostfs, eth0)
    assert protected.reasons == {BLK: "holds the root file system",
                                 NET: "carries the default route (eth0)"}
    assert protected.refusal(VF) is None


def test_rebind_refused_for_root_fs_and_default_route_devices(
        tmp_path: Path, logs: Logs) -> None:
    root = copy_tree(tmp_path)
    config = DevicesConfig(node_overrides={BLK: 0, NET: 1, VF: 1}, rebind=True)
    reports = {r.bdf: r for r in job_for(root, config=config).scan(apply=True)}
    assert "rebind refused: holds the root file system" in reports[BLK].skipped
    assert "rebind refused: carries the default route (eth0)" in reports[NET].skipped
    assert (root / "sys/bus/pci/drivers/virtio-pci/unbind").read_text() == ""
    # The VF is not protected: unbound and bound again.
    assert (root / "sys/bus/pci/drivers/ixgbevf/unbind").read_text() == VF
    assert (root / "sys/bus/pci/drivers/ixgbevf/bind").read_text() == VF
    assert any("driver ixgbevf rebound" in a for a in reports[VF].applied)
    assert len(events(logs, "rebind_refused")) == 2


def test_rebind_refused_everywhere_when_the_default_route_cannot_be_found(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)

    def no_pyroute2() -> list[str]:
        raise ImportError("pyroute2 is not installed")

    config = DevicesConfig(node_overrides={VF: 1}, rebind=True)
    report = job_for(root, config=config, route_lookup=no_pyroute2).evaluate(VF, apply=True)
    assert report is not None
    assert any("rebind refused: cannot tell which device carries the default route" in s
               for s in report.skipped)
    assert (root / "sys/bus/pci/drivers/ixgbevf/unbind").read_text() == ""


def test_device_vanishing_mid_bind_is_one_line_and_a_skip(
        tmp_path: Path, logs: Logs) -> None:
    root = copy_tree(tmp_path)

    def unplug() -> None:
        shutil.rmtree(root / f"sys/devices/pci0000:00/{VF}")
        (root / f"sys/bus/pci/devices/{VF}").unlink()

    hostfs = FaultyHostFS(str(root), before={"/sys/bus/pci/drivers/ixgbevf/bind": unplug})
    job = job_for(hostfs, config=DevicesConfig(node_overrides={VF: 1}, rebind=True))
    job.refresh()
    report = job.evaluate(VF, apply=True)
    assert report is not None and any("vanished" in f for f in report.failed)
    assert len(events(logs, "device_vanished")) == 1
    assert StateStore(hostfs).load().for_device(VF) == []
    # The rest of a scan goes on.
    assert {r.bdf for r in job.scan(apply=True)} >= {NVME, "0000:00:07.0"}


def test_device_vanishing_between_irq_writes(tmp_path: Path, logs: Logs) -> None:
    root = copy_tree(tmp_path)

    def unplug() -> None:
        shutil.rmtree(root / f"sys/devices/pci0000:00/{VF}")
        (root / f"sys/bus/pci/devices/{VF}").unlink()
        shutil.rmtree(root / "proc/irq/30")

    hostfs = FaultyHostFS(str(root), before={irq_affinity_path(30): unplug})
    job = job_for(hostfs, config=DevicesConfig(node_overrides={VF: 1}))
    job.refresh()
    report = job.evaluate(VF, apply=True)
    assert report is not None and any("vanished" in f for f in report.failed)
    assert len(events(logs, "device_vanished")) == 1
    assert StateStore(hostfs).load().for_device(VF) == []


def test_device_gone_before_discovery_gives_no_report(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    job = job_for(root)
    assert job.evaluate("0000:00:1f.0", apply=True) is None


# ---------------------------------------------------------------- hotplug


def ev(action: str, bdf: str, subsystem: str = "pci") -> SimpleNamespace:
    return SimpleNamespace(action=action, subsystem=subsystem, sys_name=bdf,
                           device_path=f"/devices/pci0000:00/{bdf}")


def test_hotplug_events_reevaluate_one_device(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    new = "0000:00:09.0"
    saved = tmp_path / "saved"
    shutil.copytree(root / f"sys/devices/pci0000:00/{VF}", saved, symlinks=True)
    job = job_for(root, config=DevicesConfig(node_overrides={new: 1}))
    job.scan(apply=True)
    # A new device appears: its directory (IRQs 29-31 reused), then the udev "add" event.
    shutil.copytree(saved, root / f"sys/devices/pci0000:00/{new}", symlinks=True)
    os.symlink(f"../../../devices/pci0000:00/{new}", root / f"sys/bus/pci/devices/{new}")
    report = dispatch(job, ev("add", new))
    assert report is not None and (report.node, report.source) == (1, "config")
    assert irq_text(root, 29) == "2-3"
    assert len(job.state.for_device(new)) == 4  # numa_node + 3 IRQs
    # "unbind" frees the vectors: their records go, the numa_node record stays.
    (root / f"sys/devices/pci0000:00/{new}/driver").unlink()
    shutil.rmtree(root / f"sys/devices/pci0000:00/{new}/msi_irqs")
    dispatch(job, ev("unbind", new))
    assert [c.kind for c in job.state.for_device(new)] == ["numa_node"]
    # "remove": the device and every record of it go.
    shutil.rmtree(root / f"sys/devices/pci0000:00/{new}")
    (root / f"sys/bus/pci/devices/{new}").unlink()
    assert dispatch(job, ev("remove", new)) is None
    assert job.state.for_device(new) == []


def test_hotplug_ignores_events_that_are_not_pci_functions(logs: Logs) -> None:
    assert event_key(ev("change", VF)) is None
    assert event_key(ev("add", "eth0", subsystem="net")) is None
    assert event_key(ev("add", "pci0000:00")) is None
    assert event_key(SimpleNamespace(action="bind", device_path=f"/devices/pci0000:00/{VF}")) == (
        "bind", VF)


def test_hotplug_add_of_a_device_gone_again_is_one_line(tmp_path: Path,
                                                         logs: Logs) -> None:
    root = copy_tree(tmp_path)
    job = job_for(root)
    assert dispatch(job, ev("add", "0000:00:0a.0")) is None
    assert len(events(logs, "device_vanished")) == 1


# ---------------------------------------------------------------- irqbalance


def test_irqbalance_found_as_a_process(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    assert detect(HostFS(str(root))).running is False
    (root / "proc/4242").mkdir()
    (root / "proc/4242/comm").write_text("irqbalance\n")
    (root / "proc/4242/cmdline").write_bytes(b"/usr/sbin/irqbalance\0--foreground\0")
    status = detect(HostFS(str(root)))
    assert (status.running, status.pid, status.found_by) == (True, 4242, "process")
    assert status.policyscript is None


def test_irqbalance_found_as_an_active_systemd_unit(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    (root / "run/systemd/units").mkdir(parents=True)
    os.symlink("3f2a", root / "run/systemd/units/invocation:irqbalance.service")
    status = detect(HostFS(str(root)))
    assert (status.running, status.found_by) == (True, "systemd unit")


def test_irqbalance_running_means_irqs_are_left_to_it_by_default(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    running = IrqbalanceStatus(running=True, pid=4242, found_by="process",
                               cmdline=["/usr/sbin/irqbalance", "--foreground"])
    job = job_for(root, config=DevicesConfig(node_overrides={VF: 1}), irqbalance=running)
    report = {r.bdf: r for r in job.scan(apply=True)}[VF]
    assert irq_text(root, 29) == "0-3\n"
    assert any("irqbalance is running (pid 4242)" in s and "numa_node" in s
               for s in report.skipped)
    # numa_node is still written: irqbalance reads it for the device's IRQs.
    assert (root / f"sys/devices/pci0000:00/{VF}/numa_node").read_text() == "1"


def test_irqbalance_decisions() -> None:
    plain = IrqbalanceStatus(running=True, pid=1, found_by="process", cmdline=["irqbalance"])
    ours = IrqbalanceStatus(running=True, pid=1, found_by="process", cmdline=[
        "irqbalance", "--policyscript=/usr/lib/guestagent/irqbalance-policy"])
    assert decide("auto", NOT_RUNNING).touch is True
    assert decide("auto", plain).touch is False
    assert decide("defer", NOT_RUNNING).touch is False
    assert decide("auto", ours).touch is True and ours.uses_our_policy
    forced = decide("pin", plain)
    assert forced.touch is True and forced.warning is not None
    assert policy_lines(29, {29, 30}, 1) == ["ban=true"]
    assert policy_lines(40, {29}, 1) == ["numa_node=1"]
    assert policy_lines(40, set(), None) == []


# ---------------------------------------------------------------- garbage


def test_garbage_sysfs_contents_each_give_one_clear_line(
        tmp_path: Path, logs: Logs) -> None:
    root = copy_tree(tmp_path, "devices-garbage")
    job = job_for(root, config=DevicesConfig(node_overrides={VF: 1}))
    reports = {r.bdf: r for r in job.scan(apply=True)}
    vf = reports[VF]
    numa = [f for f in vf.failed if "numa_node" in f]
    assert len(numa) == 1 and "'abc'" in numa[0] and "expected an integer" in numa[0]
    junk = [f for f in vf.failed if "msi_irqs" in f]
    assert len(junk) == 2 and any("'foo'" in f for f in junk) and any("'31x'" in f for f in junk)
    # Garbage numa_node counts as -1: the override still places it, and the good IRQs follow.
    assert (vf.node, vf.source) == (1, "config") and vf.irqs == [29, 30]
    assert irq_text(root, 29) == "2-3" and irq_text(root, 30) == "2-3"
    virtio = reports["0000:00:08.0"]
    assert len(virtio.failed) == 1
    assert "vendor" in virtio.failed[0] and "'virtio'" in virtio.failed[0]
    assert any("not-a-bdf" in p for p in job.problems)
    unusable = events(logs, "device_input_unusable")
    assert len(unusable) == 4
    assert all("\n" not in e["problem"] for e in unusable)


def test_garbage_state_file_is_one_line(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    (root / "run/guestagent").mkdir(parents=True)
    (root / "run/guestagent/devices.json").write_text("{not json")
    with pytest.raises(InputError, match=r"devices\.json: not JSON"):
        job_for(root)
    # A malformed entry is skipped on its own, one line each (issue 15); the rest is kept.
    (root / "run/guestagent/devices.json").write_text(
        json.dumps({"version": 1, "changes": [{"kind": "rm -rf", "path": "/"}]}))
    job = job_for(root)
    assert job.state.changes == {}
    (line,) = job.state.problems
    assert "changes[0]: unknown change kind" in line


# ---------------------------------------------------------------- protection edge cases


def _mountinfo(root: Path, line: str) -> None:
    (root / "proc/self/mountinfo").write_text(line + "\n")


def test_root_on_device_mapper_is_followed_through_slaves(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    dm = root / "sys/devices/virtual/block/dm-0"
    (dm / "slaves").mkdir(parents=True)
    os.symlink("../../../../pci0000:00/0000:00:04.0/virtio1/block/vda/vda1", dm / "slaves/vda1")
    os.symlink("../../devices/virtual/block/dm-0", root / "sys/dev/block/253:0")
    os.symlink("../../devices/virtual/block/dm-0", root / "sys/class/block/dm-0")
    _mountinfo(root, "28 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw")
    assert root_device_functions(HostFS(str(root))) == [BLK]


def test_root_on_btrfs_uses_the_mount_source(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    # Field 4 is the subvolume (/@), field 5 the mount point; 0:31 is an anonymous device.
    _mountinfo(root, "28 1 0:31 /@ / rw,relatime shared:1 - btrfs /dev/vda1 rw,subvol=/@")
    assert root_device_functions(HostFS(str(root))) == [BLK]


def test_root_on_tmpfs_protects_no_disk(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    _mountinfo(root, "1 0 0:2 / / rw shared:1 - rootfs rootfs rw")
    protected = protected_devices(HostFS(str(root)), eth0)
    assert protected.reasons == {NET: "carries the default route (eth0)"}
    assert protected.unknown == []


def test_unreadable_mountinfo_refuses_every_rebind(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    _mountinfo(root, "garbage")
    protected = protected_devices(HostFS(str(root)), eth0)
    refusal = protected.refusal(VF)
    assert refusal is not None and "root file system" in refusal and "mountinfo" in refusal


def test_default_route_through_a_bond_finds_the_slave_device(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    bond = root / "sys/devices/virtual/net/bond0"
    bond.mkdir(parents=True)
    os.symlink("../../../pci0000:00/0000:00:03.0/virtio0/net/eth0", bond / "lower_eth0")
    os.symlink("../../devices/virtual/net/bond0", root / "sys/class/net/bond0")
    protected = protected_devices(HostFS(str(root)), lambda: ["bond0"])
    assert protected.reasons[NET] == "carries the default route (bond0)"


def test_missing_pyroute2_is_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from guestagent.devices.protect import pyroute2_default_interfaces

    monkeypatch.setitem(sys.modules, "pyroute2", None)
    with pytest.raises(ImportError, match="pyroute2 is not installed"):
        pyroute2_default_interfaces()


# ---------------------------------------------------------------- the udev monitor


def test_missing_pyudev_is_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from guestagent.devices.hotplug import HotplugMonitor, HotplugUnavailableError

    monkeypatch.setitem(sys.modules, "pyudev", None)
    with pytest.raises(HotplugUnavailableError, match="pyudev is not installed"):
        HotplugMonitor.open()


def test_monitor_drains_queued_events_into_the_job(tmp_path: Path) -> None:
    from guestagent.devices.hotplug import HotplugMonitor

    class FakeMonitor:
        def __init__(self, queued: list[Any]) -> None:
            self.queued = queued

        def fileno(self) -> int:
            return 42

        def poll(self, timeout: float) -> Any:
            return self.queued.pop(0) if self.queued else None

    root = copy_tree(tmp_path)
    job = job_for(root, config=DevicesConfig(node_overrides={VF: 1}))
    job.scan(apply=True)
    monitor = HotplugMonitor(FakeMonitor([ev("bind", VF), ev("change", VF),
                                          ev("add", "eth0", subsystem="net")]))
    assert monitor.fileno() == 42
    reports = monitor.pump(job)
    assert [r.bdf for r in reports] == [VF] and reports[0].source == "config"


# ---------------------------------------------------------------- changes over time


def test_a_moved_dom0_hint_rewrites_numa_node_and_undo_still_restores_minus_one(
        tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    numa = root / f"sys/devices/pci0000:00/{VF}/numa_node"
    job_for(root, hints=[DeviceHint(VF, vnode=1)]).scan(apply=True)
    assert numa.read_text() == "1" and irq_text(root, 29) == "2-3"
    report = job_for(root, hints=[DeviceHint(VF, vnode=0)]).evaluate(VF, apply=True)
    assert report is not None and (report.node, report.source) == (0, "dom0")
    assert numa.read_text() == "0" and irq_text(root, 29) == "0-1"
    job_for(root).reset()
    assert numa.read_text() == "-1" and irq_text(root, 29) == "0-3"


def test_a_node_the_kernel_found_itself_is_never_overwritten(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    report = job_for(root, hints=[DeviceHint(NVME, vnode=1)]).evaluate(NVME, apply=True)
    assert report is not None and (report.node, report.source) == (0, "kernel")
    assert (root / f"sys/devices/pci0000:00/{NVME}/numa_node").read_text() == "0\n"


def test_records_of_vectors_the_device_lost_are_dropped(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    job_for(root, hints=[DeviceHint(VF, vnode=1)]).scan(apply=True)
    (root / f"sys/devices/pci0000:00/{VF}/msi_irqs/31").unlink()
    job = job_for(root, hints=[DeviceHint(VF, vnode=1)])
    job.evaluate(VF, apply=True)
    assert irq_affinity_path(31) not in job.state.changes
    assert irq_affinity_path(30) in job.state.changes


def test_udev_unbind_after_our_own_rebind_keeps_the_new_records(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    hostfs = FaultyHostFS(str(root))
    job = job_for(hostfs, config=DevicesConfig(node_overrides={VF: 1}, rebind=True))
    job.scan(apply=True)
    assert len([c for c in job.state.for_device(VF) if c.kind == "irq_affinity"]) == 3
    # udev reports the unbind and bind our rebind caused; the driver is bound again by then.
    dispatch(job, ev("unbind", VF))
    dispatch(job, ev("bind", VF))
    assert len([c for c in job.state.for_device(VF) if c.kind == "irq_affinity"]) == 3
    unbinds = [w for w in hostfs.writes if w[0] == "/sys/bus/pci/drivers/ixgbevf/unbind"]
    assert unbinds == [("/sys/bus/pci/drivers/ixgbevf/unbind", VF)], "rebound once only"
