"""Dom0's own devices (issue 16 item 2): the pure decision on plain data, the affinity domctl
through the real C doorway against a simulated Xen, and ``guestagent host devices`` with
``--apply``, ``--reset`` and ``guestagent reset`` on a fixture tree built here."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent import cli
from guestagent.devices.irqbalance import IrqbalanceStatus
from guestagent.devices.plan import IrqRead, Note, SetIrqAffinity
from guestagent.dom0.owndevices import (
    UNPLACED_EVENT,
    Dom0Vcpu,
    OwnDevice,
    OwnDevicesModel,
    decide,
    effective_affinity,
    vcpu_node,
)
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.undo import Change
from guestagent.xen.domctl import Domctl, bitmap_cpus
from guestagent.xen.privcmd import ffi, lib
from guestagent.xen.sysctl import Sysctl
from tests.hostnuma_support import DOMCTL, NumaXen, Vcpu
from tests.test_dom0_support import CPUS, DISTANCES, GIB
from tests.test_sysctl import Host as XenHost

ALL = frozenset(range(6))
#: pCPUs 0-1 node 0, 2-3 node 1, 4-5 node 2 (tests/test_dom0_support.py CPUS).
CPU_NODES = {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2}
NIC, NVME, PASSED, BRIDGE = "0000:3b:00.0", "0000:5e:00.0", "0000:af:00.0", "0000:00:00.0"


def vcpu(n: int, hard: frozenset[int] = ALL, soft: frozenset[int] = ALL,
         online: bool = True) -> Dom0Vcpu:
    return Dom0Vcpu(n, online, min(hard), hard, soft)


def irq_read(irq: int, text: str = "0-5") -> IrqRead:
    return IrqRead(irq, "ok", text=text, cpus=[int(c) for c in range(6)] if text == "0-5"
                   else [int(text)])


def nic(irqs: dict[int, IrqRead] | None = None, node: int | None = 1,
        driver: str | None = "e1000e") -> OwnDevice:
    return OwnDevice(NIC, driver, True, node,
                     irqs if irqs is not None else {40: irq_read(40), 41: irq_read(41)})


#: vCPU 0 pinned to pCPU 0 (node 0), vCPU 1 to pCPU 2 (node 1), vCPU 2 prefers node 1 (soft),
#: vCPU 3 anywhere.
PLACED = [vcpu(0, frozenset({0})), vcpu(1, frozenset({2})), vcpu(2, soft=frozenset({2, 3})),
          vcpu(3)]


def model(devices: list[OwnDevice], vcpus: list[Dom0Vcpu] = PLACED,
          irqbalance: IrqbalanceStatus | None = None) -> OwnDevicesModel:
    return OwnDevicesModel(devices, vcpus, CPU_NODES, irqbalance or IrqbalanceStatus(False))


# --- the decision on plain data -----------------------------------------------------------------


def test_a_vcpu_is_near_a_node_only_when_all_its_effective_pcpus_are_there() -> None:
    assert vcpu_node(vcpu(0, frozenset({0})), CPU_NODES) == 0  # dom0_vcpus_pin
    assert vcpu_node(vcpu(1, soft=frozenset({2, 3})), CPU_NODES) == 1  # dom0_nodes=..,relaxed
    assert vcpu_node(vcpu(2), CPU_NODES) is None  # the default: anywhere
    assert vcpu_node(vcpu(3, frozenset({1, 2})), CPU_NODES) is None  # spans nodes 0 and 1
    # A soft affinity disjoint from the hard one is ignored by Xen: the hard one decides.
    disjoint = vcpu(4, frozenset({4, 5}), frozenset({0}))
    assert effective_affinity(disjoint) == {4, 5} and vcpu_node(disjoint, CPU_NODES) == 2
    assert vcpu_node(vcpu(5, frozenset({0}), online=False), CPU_NODES) is None
    assert vcpu_node(vcpu(6, frozenset({0})), {1: 0}) is None  # pCPU 0 has no node


def test_irqs_go_to_the_dom0_vcpus_on_the_device_node() -> None:
    plan = decide(model([nic()]), {}, apply=True)
    (device,) = plan.devices
    assert (device.bdf, device.node, device.near_vcpus) == (NIC, 1, (1, 2))
    assert device.steps == (SetIrqAffinity(NIC, 40, "1-2", "0-5"),
                            SetIrqAffinity(NIC, 41, "1-2", "0-5"))
    assert dict(plan.vcpu_nodes) == {0: 0, 1: 1, 2: 1, 3: None} and not plan.unplaced
    shown = decide(model([nic()]), {}, apply=False).devices[0].steps
    assert [s.text for s in shown if isinstance(s, Note)] == [
        "IRQ 40: smp_affinity_list 0-5 -> 1-2", "IRQ 41: smp_affinity_list 0-5 -> 1-2"]


def test_unplaced_dom0_vcpus_pin_nothing_and_say_what_to_set() -> None:
    plan = decide(model([nic()], vcpus=[vcpu(0), vcpu(1)]), {}, apply=True)
    assert plan.unplaced
    (note,) = plan.notes
    assert note.event == UNPLACED_EVENT and "dom0_vcpus_pin" in note.text
    assert "dom0_nodes=" in note.text
    (step,) = plan.devices[0].steps
    assert isinstance(step, Note) and UNPLACED_EVENT in step.text


def test_a_node_without_a_dom0_vcpu_and_a_device_without_a_node_are_skipped() -> None:
    far = OwnDevice(NVME, "nvme", True, 2, {50: irq_read(50)})
    nameless = OwnDevice("0000:00:10.0", "ahci", True, None, {60: irq_read(60)})
    unknown = OwnDevice("0000:00:11.0", "ahci", False, None, {61: irq_read(61)})
    plan = decide(model([far, nameless, unknown]), {}, apply=True)
    texts = [[s.text for s in d.steps if isinstance(s, Note)] for d in plan.devices]
    assert texts == [["IRQs: no Dom0 vCPU is kept on node 2"],
                     ["IRQs: Xen has no node for it (no _PXM)"], ["IRQs: unknown to Xen"]]
    assert plan.devices[0].steps[0].event == "dom0_no_vcpu_near"  # type: ignore[union-attr]


def test_pciback_and_unbound_devices_are_not_dom0s() -> None:
    plan = decide(model([nic(driver="pciback"), OwnDevice(BRIDGE, None, True, 0)]), {}, True)
    assert plan.devices == () and dict(plan.others) == {NIC: "pciback", BRIDGE: "unbound"}


def test_irqbalance_in_dom0_keeps_the_irqs_unless_pin_is_asked() -> None:
    running = IrqbalanceStatus(True, pid=77, found_by="process")
    plan = decide(model([nic()], irqbalance=running), {}, apply=True)
    (step,) = plan.devices[0].steps
    assert isinstance(step, Note) and "IRQs left to it" in step.text
    forced = decide(model([nic()], irqbalance=running), {}, apply=True, mode="pin")
    assert all(isinstance(s, SetIrqAffinity) for s in forced.devices[0].steps)
    assert [n.event for n in forced.notes] == ["dom0_irqbalance_running"]
    deferred = decide(model([nic()]), {}, apply=True, mode="defer")
    assert not any(isinstance(s, SetIrqAffinity) for s in deferred.devices[0].steps)


def test_pinned_irqs_stay_and_records_of_gone_irqs_are_dropped() -> None:
    pinned = {40: IrqRead(40, "ok", text="1-2", cpus=[1, 2]), 41: irq_read(41)}
    records = {
        "/proc/irq/40/smp_affinity_list": Change("irq_affinity", "/proc/irq/40/smp_affinity_list",
                                                 NIC, "0-5", "1-2"),
        "/proc/irq/99/smp_affinity_list": Change("irq_affinity", "/proc/irq/99/smp_affinity_list",
                                                 NIC, "0-5", "1-2"),
    }
    plan = decide(model([nic(pinned)]), records, apply=True)
    assert plan.devices[0].steps == (SetIrqAffinity(NIC, 41, "1-2", "0-5"),)
    assert plan.forget == ("/proc/irq/99/smp_affinity_list",)
    assert decide(model([nic(pinned)]), records, apply=False).forget == ()


def test_unusable_irq_reads_are_one_line_each_and_the_rest_continues() -> None:
    irqs = {40: IrqRead(40, "unreadable", error="/proc/irq/40/smp_affinity_list: not a cpu "
                        "list: 'zz'"),
            41: IrqRead(41, "not_requested"), 42: irq_read(42)}
    device = OwnDevice(NIC, "e1000e", True, 1, irqs, ("/sys/bus/pci/devices/0000:3b:00.0/"
                                                       "class: expected a hex number: 'x'",))
    steps = decide(model([device]), {}, apply=True).devices[0].steps
    assert [type(s).__name__ for s in steps] == ["Note", "Note", "Note", "SetIrqAffinity"]
    assert "'zz'" in steps[1].text and "not requested" in steps[2].text  # type: ignore[union-attr]


# --- XEN_DOMCTL_getvcpuaffinity through the C doorway --------------------------------------------


@dataclass
class AffinityXen(NumaXen):
    """NumaXen that also answers ``XEN_DOMCTL_getvcpuaffinity`` as Xen 4.17's
    ``vcpu_affinity_domctl`` does: -EINVAL at ``max_vcpus``, both masks copied into the caller's
    bitmaps (at most ``nr_bits``, the rest zeroed), ``nr_cpu_ids`` bits of Xen's own."""

    affinity: dict[tuple[int, int], tuple[frozenset[int], frozenset[int]]] = field(
        default_factory=dict)
    nr_cpu_ids: int = 16
    flags_seen: list[int] = field(default_factory=list)

    def _invoke(self, op: int, args: list[int]) -> int:
        d: Any = ffi.cast("struct ga_xen_domctl *", args[0]) if op == DOMCTL else None
        if d is None or int(d.cmd) != int(lib.GA_XEN_DOMCTL_getvcpuaffinity):
            return super()._invoke(op, args)
        self.domctl_versions_seen.append(int(d.interface_version))
        if d.interface_version != self.domctl_accepts:
            return -errno.EACCES
        vcpus = self.domains.get(int(d.domain))
        if vcpus is None:
            return -errno.ESRCH
        a = d.u.vcpuaffinity
        self.flags_seen.append(int(a.flags))
        if int(a.vcpu) >= len(vcpus):
            return -errno.EINVAL
        hard, soft = self.affinity.get((int(d.domain), int(a.vcpu)), (None, None))
        for mask, bitmap in ((hard, a.cpumap_hard), (soft, a.cpumap_soft)):
            cpus = range(self.nr_cpu_ids) if mask is None else mask
            raw = bytearray((self.nr_cpu_ids + 7) // 8)
            for cpu in cpus:
                raw[cpu // 8] |= 1 << cpu % 8
            out = ffi.cast("uint8_t *", bitmap.bitmap)
            for i in range(int(bitmap.nr_bits) // 8):
                out[i] = raw[i] if i < len(raw) else 0
        return 0


def dom0_xen() -> AffinityXen:
    """Dom0 with four vCPUs placed like :data:`PLACED`, on the three-node host."""
    host = XenHost(memory=[(16 * GIB, 12 * GIB)] * 3, distances=[list(r) for r in DISTANCES],
                   cpus=list(CPUS), pci={(0, 0x3B, 0x00): 1, (0, 0x5E, 0x00): 2,
                                         (0, 0xAF, 0x00): 1, (0, 0x00, 0x00): None})
    xen = AffinityXen(host=host)
    xen.domains[0] = [Vcpu(cpu=0), Vcpu(cpu=2), Vcpu(cpu=3), Vcpu(cpu=5)]
    xen.affinity[(0, 0)] = (frozenset({0}), frozenset(range(16)))
    xen.affinity[(0, 1)] = (frozenset({2}), frozenset(range(16)))
    xen.affinity[(0, 2)] = (frozenset(range(16)), frozenset({2, 3}))
    return xen


def test_domctl_reads_hard_and_soft_affinity() -> None:
    xen = dom0_xen()
    domctl = Domctl(xen)
    one = domctl.vcpu_affinity(0, 1, 6)
    # bits 6-15 of Xen's "all" are dropped (pCPUs cputopoinfo does not count)
    assert one is not None and (one.hard, one.soft) == (frozenset({2}), ALL)
    two = domctl.vcpu_affinity(0, 2, 6)
    assert two is not None and (two.hard, two.soft) == (ALL, frozenset({2, 3}))
    assert xen.flags_seen == [3, 3]  # XEN_VCPUAFFINITY_HARD | _SOFT
    assert domctl.vcpu_affinity(0, 4, 6) is None  # beyond max_vcpus: EINVAL
    assert domctl.vcpu_affinity(7, 0, 6) is None  # no such domain: ESRCH
    assert bitmap_cpus(b"\x05\x80", 16) == {0, 2, 15} and bitmap_cpus(b"\xff", 3) == {0, 1, 2}


def test_domctl_affinity_bounds_its_arguments() -> None:
    from guestagent.errors import InputError

    domctl = Domctl(dom0_xen())
    with pytest.raises(InputError, match="num_cpus"):
        domctl.vcpu_affinity(0, 0, 0)
    with pytest.raises(InputError, match="domid"):
        domctl.vcpu_affinity(0x7FF0, 0, 6)


# --- the command on a fixture tree ------------------------------------------------------------


def write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def add_device(root: Path, bdf: str, driver: str | None, irqs: list[int],
               pci_class: str = "0x020000") -> None:
    base = f"/sys/bus/pci/devices/{bdf}"
    for name, text in (("vendor", "0x8086\n"), ("device", "0x10d3\n"), ("class", pci_class),
                       ("numa_node", "-1\n"), ("local_cpulist", "0-3\n"), ("irq", "0\n")):
        write(root, f"{base}/{name}", text)
    for irq in irqs:
        write(root, f"{base}/msi_irqs/{irq}", "msix\n")
        write(root, f"/proc/irq/{irq}/smp_affinity_list", "0-3\n")
        write(root, f"/proc/irq/{irq}/effective_affinity_list", "0\n")
    if driver is not None:
        os.symlink(f"../../../bus/pci/drivers/{driver}", root / base.lstrip("/") / "driver")


def dom0_tree(root: Path) -> Path:
    """Dom0 (control_d) with an e1000e on node 1, an nvme on node 2, a device held by pciback
    and an unbound host bridge."""
    write(root, "/proc/xen/capabilities", "control_d\n")
    add_device(root, NIC, "e1000e", [40, 41])
    add_device(root, NVME, "nvme", [50], pci_class="0x010802")
    add_device(root, PASSED, "pciback", [])
    add_device(root, BRIDGE, None, [])
    return root


class Dom0:
    """The host handle the command gets: the simulated Xen's sysctls and domctls."""

    def __init__(self, xen: AffinityXen) -> None:
        self.xen = xen

    @contextmanager
    def controls(self, hostfs: HostFS) -> Iterator[tuple[Any, Any]]:
        yield Sysctl(self.xen), Domctl(self.xen)

    def host(self, hostfs: HostFS) -> Host:
        return Host(hostfs, open_xen_controls=self.controls)


def run(root: Path, args: list[str], capsys: pytest.CaptureFixture[str],
        xen: AffinityXen | None = None) -> tuple[int, str, str]:
    conf = (str(root / "etc/guestagent.toml"), str(root / "etc/conf.d"))
    code = cli.main(["--root", str(root), *args], make_host=Dom0(xen or dom0_xen()).host,
                    config_files=conf)
    out, err = capsys.readouterr()
    return code, out, err


def affinity(root: Path, irq: int) -> str:
    return (root / f"proc/irq/{irq}/smp_affinity_list").read_text().strip()


def test_host_devices_reports_without_writing(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = dom0_tree(tmp_path)
    code, out, err = run(root, ["host", "devices", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert [(d["bdf"], d["driver"], d["node"], d["near_vcpus"]) for d in report["devices"]] == [
        (NIC, "e1000e", 1, [1, 2]), (NVME, "nvme", 2, [])]
    assert report["devices"][0]["planned"] == [
        "IRQ 40: smp_affinity_list 0-3 -> 1-2", "IRQ 41: smp_affinity_list 0-3 -> 1-2"]
    assert report["not_dom0_driven"] == {BRIDGE: "unbound", PASSED: "pciback"}
    assert [(v["vcpu"], v["hard"], v["soft"], v["node"]) for v in report["vcpus"]] == [
        (0, "0", "0-5", 0), (1, "2", "0-5", 1), (2, "0-5", "2-3", 1), (3, "0-5", "0-5", None)]
    assert not report["dom0_vcpus_unplaced"] and affinity(root, 40) == "0-3"
    assert not (root / "run/guestagent/dom0-devices.json").exists()
    code, text, _ = run(root, ["host", "devices"], capsys)
    assert code == 0 and f"{NIC} e1000e: node 1, Dom0 vCPUs near it: 1,2" in text
    assert f"{NVME} nvme: node 2, Dom0 vCPUs near it: none" in text


def test_apply_pins_journals_first_and_both_resets_undo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = dom0_tree(tmp_path)
    code, out, err = run(root, ["host", "devices", "--apply", "--json"], capsys)
    assert code == 0, err
    nic_report = json.loads(out)["devices"][0]
    assert nic_report["applied"] == [
        "/proc/irq/40/smp_affinity_list = 1-2 (was 0-3; effective 0)",
        "/proc/irq/41/smp_affinity_list = 1-2 (was 0-3; effective 0)"]
    assert affinity(root, 40) == affinity(root, 41) == "1-2" and affinity(root, 50) == "0-3"
    journal = json.loads((root / "run/guestagent/dom0-devices.json").read_text())
    assert sorted((c["path"], c["previous"], c["applied"]) for c in journal["changes"]) == [
        ("/proc/irq/40/smp_affinity_list", "0-3", "1-2"),
        ("/proc/irq/41/smp_affinity_list", "0-3", "1-2")]
    # a second pass changes nothing
    code, out, _ = run(root, ["host", "devices", "--apply", "--json"], capsys)
    assert code == 0 and json.loads(out)["devices"][0]["applied"] == []
    code, out, _ = run(root, ["host", "devices", "--reset"], capsys)
    assert code == 0 and out.splitlines() == [
        "/proc/irq/41/smp_affinity_list: restored '0-3'",
        "/proc/irq/40/smp_affinity_list: restored '0-3'"]
    assert affinity(root, 40) == affinity(root, 41) == "0-3"
    assert not (root / "run/guestagent/dom0-devices.json").exists()
    run(root, ["host", "devices", "--apply"], capsys)
    code, out, _ = run(root, ["reset"], capsys)
    assert code == 0 and "dom0_devices: /proc/irq/41/smp_affinity_list: restored '0-3'" in out
    assert affinity(root, 40) == "0-3"


def test_unplaced_dom0_is_reported_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = dom0_tree(tmp_path)
    xen = dom0_xen()
    xen.affinity.clear()  # every vCPU may run anywhere: no dom0_vcpus_pin, no dom0_nodes=
    code, out, err = run(root, ["host", "devices", "--apply", "--json"], capsys, xen)
    report = json.loads(out)
    assert code == 0 and report["dom0_vcpus_unplaced"] and "dom0_vcpus_pin" in report["notes"][0]
    assert affinity(root, 40) == "0-3" and report["devices"][0]["applied"] == []
    assert err.count(f"event={UNPLACED_EVENT}") == 1, err


def test_hostile_sysfs_and_proc_values_are_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = dom0_tree(tmp_path)
    write(root, "/proc/irq/40/smp_affinity_list", "0-3,banana\n")
    write(root, f"/sys/bus/pci/devices/{NIC}/class", "0xZZ\n")
    write(root, f"/sys/bus/pci/devices/{NIC}/msi_irqs/42", "msix\n")  # IRQ 42: no /proc/irq/42
    write(root, f"/sys/bus/pci/devices/{NIC}/msi_irqs/nonsense", "msix\n")
    (root / "sys/bus/pci/devices/not-a-bdf").mkdir()
    code, out, _ = run(root, ["host", "devices", "--apply", "--json"], capsys)
    report = json.loads(out)
    nic_report = report["devices"][0]
    assert code == 1  # IRQ 40's unreadable affinity is a failure line; the others went on
    assert any("smp_affinity_list" in line and "banana" in line for line in nic_report["failed"])
    assert any("class" in line and "0xZZ" in line for line in nic_report["skipped"])
    assert any("nonsense" in line for line in nic_report["skipped"])
    assert any("IRQ 42: not requested" in line for line in nic_report["skipped"])
    assert any("not-a-bdf" in p for p in report["problems"])
    assert affinity(root, 41) == "1-2"


def test_outside_dom0_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = dom0_tree(tmp_path)
    write(root, "/proc/xen/capabilities", "\n")
    code, out, err = run(root, ["host", "devices"], capsys)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1


def test_backend_threads_in_the_report_and_refused_on_a_fixture_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """netback's thread of domain 5 (kept on node 1): planned onto Dom0 vCPUs 1-2 without
    --apply; with it, the tree's pid cannot be moved (not this machine's): one failed line, exit
    1, the IRQs pinned all the same and nothing journalled for the thread."""
    root = dom0_tree(tmp_path)
    write(root, "/proc/300/comm", "vif5.0-q0-guest\n")
    write(root, "/proc/300/status", "Name:\tvif5.0-q0-guest\nCpus_allowed_list:\t0-5\n")
    xen = dom0_xen()
    xen.domains[5] = [Vcpu(cpu=2), Vcpu(cpu=3)]
    for v in (0, 1):
        xen.affinity[(5, v)] = (frozenset(range(16)), frozenset({2, 3}))
    code, out, _ = run(root, ["host", "devices", "--json"], capsys, xen)
    assert out == cli.json_text(json.loads(out)) + "\n"  # the one JSON style
    (thread,) = json.loads(out)["backend_threads"]
    assert (thread["pid"], thread["domid"], thread["node"], thread["near_vcpus"]) == (
        300, 5, 1, [1, 2])
    assert code == 0 and thread["planned"] == ["vif5.0-q0-guest (pid 300): 0-5 -> 1-2"]
    code, out, _ = run(root, ["host", "devices", "--apply", "--json"], capsys, xen)
    (thread,) = json.loads(out)["backend_threads"]
    assert code == 1 and "not the real host" in thread["failed"][0]
    assert affinity(root, 40) == "1-2"
    journal = json.loads((root / "run/guestagent/dom0-devices.json").read_text())
    assert {c["kind"] for c in journal["changes"]} == {"irq_affinity"}
    code, text, _ = run(root, ["host", "devices"], capsys, xen)
    assert "backend thread vif5.0-q0-guest (pid 300, dom5): guest's node 1, Dom0 vCPUs " \
        "near it: 1,2" in text
