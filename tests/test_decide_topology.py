"""The topology job's decide step on plain data: what a pass warns about and publishes."""

from __future__ import annotations

from guestagent.schema import NUMA_SECTION
from guestagent.topology.model import LinuxView, Node
from guestagent.topology.reconcile import STATUS_OK, assemble, decide
from guestagent.xen.detect import Hypervisor
from guestagent.xen.vnuma import MemoryRange, VnumaInfo

MIB = 1 << 20


def _linux(problems: list[str] | None = None) -> LinuxView:
    nodes = [
        Node(0, [0, 1], 512 * MIB, {0: 10, 1: 20}, True, True),
        Node(1, [2, 3], 256 * MIB, {0: 20, 1: 10}, True, True),
    ]
    return LinuxView(nodes, online_cpus=[0, 1, 2, 3], problems=problems or [])


def _vnuma() -> VnumaInfo:
    return VnumaInfo(2, [0, 0, 1, 1], [[10, 20], [20, 10]],
                     [MemoryRange(0, 512 * MIB, 0), MemoryRange(512 * MIB, 768 * MIB, 1)])


def test_both_views_publish_the_whole_tree_and_leave_the_numa_section() -> None:
    topology = assemble(Hypervisor("xen", "HVM"), _linux(), None, _vnuma(), STATUS_OK)
    plan = decide(topology)
    assert plan.warnings == ()
    assert plan.tree is not None
    assert plan.tree["vnuma/sources"] == "hypercall,sysfs"
    assert plan.tree["vnuma/nr-nodes"] == "2"
    assert plan.tree["vnuma/nodes/1/cpus"] == "2-3"
    assert plan.tree["vnuma/vcpu-to-vnode"] == "0,0,1,1"
    assert not any(k.startswith("vnuma/mismatches/") for k in plan.tree)
    assert plan.leave == (NUMA_SECTION,)
    assert not any(k.startswith(NUMA_SECTION + "/") for k in plan.tree)


def test_a_mismatch_is_published_and_an_input_problem_is_a_warning() -> None:
    problem = "/sys/devices/system/node/node1/meminfo: garbage 'x'"
    info = VnumaInfo(2, [0, 1, 1, 1], [[10, 20], [20, 10]],
                     [MemoryRange(0, 512 * MIB, 0), MemoryRange(512 * MIB, 768 * MIB, 1)])
    topology = assemble(Hypervisor("xen", "HVM"), _linux([problem]), None, info, STATUS_OK)
    plan = decide(topology)
    assert plan.warnings == (problem,)
    assert plan.tree is not None
    assert plan.tree["vnuma/mismatches/0"] == topology.mismatches[0]
    assert "vCPU 1" in plan.tree["vnuma/mismatches/0"]


def test_nothing_answered_publishes_nothing_but_still_warns() -> None:
    topology = assemble(Hypervisor("xen", "PV"), None, "/sys/devices/system/cpu/online: absent",
                        None, "Xen unavailable: no privcmd")
    plan = decide(topology)
    assert plan.tree is None
    assert plan.warnings == ("/sys/devices/system/cpu/online: absent",)


def test_sysfs_alone_is_published_without_the_hypercall_keys() -> None:
    topology = assemble(Hypervisor("none"), _linux(), None, None,
                        "not attempted: no hypervisor found")
    plan = decide(topology)
    assert plan.tree is not None
    assert plan.tree["vnuma/sources"] == "sysfs"
    assert "vnuma/vcpu-to-vnode" not in plan.tree
    assert plan.tree["vnuma/hypercall-status"] == "not attempted: no hypervisor found"
