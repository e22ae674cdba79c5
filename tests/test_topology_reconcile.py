"""Reconciling the Linux view with XENMEM_get_vnumainfo (pure); read_topology with fakes."""

from __future__ import annotations

import copy
import errno
import json

import pytest

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.topology.model import LinuxView, Node
from guestagent.topology.reader import read_topology
from guestagent.topology.reconcile import (
    MIN_MEMORY_FRACTION,
    assemble,
    hypercall_status,
    nodes_from_vnuma,
    reconcile,
)
from guestagent.topology.sysfs import read_linux_view
from guestagent.xen.detect import Hypervisor
from guestagent.xen.errors import (
    HypercallError,
    NotOnXen,
    NoVnuma,
    PrivcmdRestricted,
    XenTooOld,
    XenUnavailable,
)
from guestagent.xen.vnuma import VnumaInfo, validate_vnuma
from tests.fixtures.loader import answering, must_not_call, raising, tree, vnumainfo

MIB = 1024 * 1024
HVM = Hypervisor(kind="xen", guest_type="HVM", privcmd="/dev/xen/privcmd")
PV = Hypervisor(kind="xen", guest_type="PV", privcmd="/dev/xen/privcmd")


def linux(name: str) -> LinuxView:
    return read_linux_view(HostFS(str(tree(name))))


def vnuma(
    vcpus: list[int], distances: list[list[int]], sizes_mib: list[int]
) -> VnumaInfo:
    ranges, start = [], 0
    for nid, size in enumerate(sizes_mib):
        ranges.append((start, start + size * MIB, 0, nid))
        start += size * MIB
    flat = [d for row in distances for d in row]
    return validate_vnuma(len(sizes_mib), vcpus, flat, ranges)


def two_nodes(
    distances: list[list[int]], memory_mib: tuple[int, int] = (1000, 1000)
) -> LinuxView:
    nodes = [
        Node(i, cpus, memory_mib[i] * MIB, dict(enumerate(distances[i])), True, memory_mib[i] > 0)
        for i, cpus in enumerate([[0, 1], [2, 3]])
    ]
    return LinuxView(nodes=nodes, online_cpus=[0, 1, 2, 3], present_cpus=[0, 1, 2, 3])


# --- agreement ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hvm-2vnode", "hvm-3vnode"])
def test_real_layouts_agree(name: str) -> None:
    # hvm-3vnode node 2 holds 81 % of its vnode (kernel reservations): not a disagreement
    assert reconcile(linux(name), vnumainfo(name), "HVM") == []


def test_asymmetric_distances_that_agree() -> None:
    d = [[10, 20], [22, 10]]
    assert reconcile(two_nodes(d), vnuma([0, 0, 1, 1], d, [1024, 1024]), "HVM") == []


def test_asymmetric_distances_that_disagree_both_directions() -> None:
    view = two_nodes([[10, 20], [22, 10]])
    info = vnuma([0, 0, 1, 1], [[10, 22], [20, 10]], [1024, 1024])
    assert reconcile(view, info, "HVM") == [
        "distance from node 0 to node 1: Linux says 20, Xen says 22",
        "distance from node 1 to node 0: Linux says 22, Xen says 20",
    ]


def test_unreadable_distance_row_is_not_a_mismatch() -> None:
    view = two_nodes([[10, 20], [20, 10]])
    view.nodes[0].distances = {}
    assert reconcile(view, vnuma([0, 0, 1, 1], [[10, 20], [20, 10]], [1024, 1024]), "HVM") == []


# --- node counts ------------------------------------------------------------------------------


def test_pv_guest_one_node_against_two_vnodes() -> None:
    assert reconcile(linux("pv-guest"), vnumainfo("pv-guest"), "PV") == [
        "Xen reports 2 vnodes but Linux sees 1 node: PV guests get no NUMA view "
        "(Linux disables SRAT for PV)"
    ]


@pytest.mark.parametrize(
    ("guest_type", "reason"),
    [("HVM", "did not take the SRAT/SLIT"), ("PVH", "numa=off"), (None, "a PV guest, numa=off")],
)
def test_one_node_against_two_vnodes_other_guest_types(guest_type: str | None, reason: str) -> None:
    mismatches = reconcile(linux("pv-guest"), vnumainfo("pv-guest"), guest_type)
    assert len(mismatches) == 1
    assert mismatches[0].startswith("Xen reports 2 vnodes but Linux sees 1 node: ")
    assert reason in mismatches[0]


def test_linux_without_numa_sysfs() -> None:
    view = LinuxView(
        nodes=[Node(0, [0, 1], 500 * MIB, {0: 10}, True, True)], online_cpus=[0, 1], numa=False
    )
    info = vnumainfo("pv-guest")
    assert reconcile(view, info, "HVM") == [
        "Xen reports 2 vnodes but Linux sees 1 node: Linux has no NUMA view "
        "(no /sys/devices/system/node: kernel built without CONFIG_NUMA)"
    ]
    topo = assemble(HVM, view, None, info, "ok")
    assert topo.nodes_from == "hypercall"
    assert [(n.id, n.cpus, n.memory_bytes) for n in topo.nodes] == [
        (0, [0], 256 * MIB),
        (1, [1], 256 * MIB),
    ]
    assert topo.sources == ["hypercall", "sysfs"]


def test_linux_node_without_vnode_and_vnode_without_linux_node() -> None:
    view = two_nodes([[10, 20], [20, 10]])
    view.nodes[1].id = 4
    view.nodes[0].distances = {0: 10, 4: 20}
    view.nodes[1].distances = {0: 20, 4: 10}
    info = vnuma([0, 0, 1, 1], [[10, 20], [20, 10]], [1000, 1000])
    assert reconcile(view, info, "HVM") == [
        "vCPU 2 is on Linux node 4 but Xen places it on vnode 1",
        "vCPU 3 is on Linux node 4 but Xen places it on vnode 1",
        "Linux node 4 has no matching Xen vnode",
        "Xen vnode 1 has no Linux node",
    ]


def test_fewer_linux_nodes_than_vnodes_but_more_than_one() -> None:
    view = two_nodes([[10, 20], [20, 10]], (1000, 1000))
    info = vnuma([0, 0, 1, 1], [[10, 20, 30], [20, 10, 30], [30, 30, 10]], [1000, 1000, 256])
    assert reconcile(view, info, "HVM") == [
        "Xen reports 3 vnodes but Linux sees 2 nodes (0, 1): the kernel did not take the "
        "SRAT/SLIT Xen built (booted with numa=off, or too few nodes in CONFIG_NODES_SHIFT?)",
        "Xen vnode 2 has no Linux node",
    ]


# --- vCPUs -------------------------------------------------------------------------------------


def test_offline_vcpu() -> None:
    view = linux("hvm-2vnode")
    view.online_cpus = [0, 1, 2]
    view.nodes[1].cpus = [2]  # x86 takes an offline CPU out of its node's cpulist
    assert reconcile(view, vnumainfo("hvm-2vnode"), "HVM") == [
        "vCPU 3 is offline in Linux; Xen places it on vnode 1"
    ]


def test_offline_vcpu_in_a_pv_guest_is_still_reported() -> None:
    view = linux("pv-guest")
    view.online_cpus = [0]
    mismatches = reconcile(view, vnumainfo("pv-guest"), "PV")
    assert mismatches[1:] == ["vCPU 1 is offline in Linux; Xen places it on vnode 1"]


def test_vcpu_not_present() -> None:
    view = linux("hvm-2vnode")
    view.online_cpus = [0, 1, 2]
    view.present_cpus = [0, 1, 2]
    view.nodes[1].cpus = [2]
    assert reconcile(view, vnumainfo("hvm-2vnode"), "HVM") == [
        "vCPU 3 is not present in Linux (not plugged in); Xen places it on vnode 1"
    ]


def test_vcpu_on_the_wrong_node_and_in_no_node() -> None:
    view = linux("hvm-2vnode")
    view.nodes[0].cpus = [0, 2]
    view.nodes[1].cpus = [3]
    assert reconcile(view, vnumainfo("hvm-2vnode"), "HVM") == [
        "vCPU 1 is online but in no Linux node's cpulist; Xen places it on vnode 0",
        "vCPU 2 is on Linux node 0 but Xen places it on vnode 1",
    ]


def test_linux_cpus_beyond_xens_vcpus() -> None:
    view = linux("hvm-2vnode")
    view.online_cpus = [0, 1, 2, 3, 4, 5]
    view.nodes[1].cpus = [2, 3, 4, 5]
    assert reconcile(view, vnumainfo("hvm-2vnode"), "HVM") == [
        "Linux CPUs 4-5 are online but Xen reports only 4 vCPUs"
    ]


# --- memory ------------------------------------------------------------------------------------


def test_memory_linux_has_some_xen_none() -> None:
    info = validate_vnuma(2, [0, 0, 1, 1], [10, 20, 20, 10], [(0, 1024 * MIB, 0, 0)])
    mismatches = reconcile(two_nodes([[10, 20], [20, 10]], (900, 900)), info, "HVM")
    assert mismatches == ["Linux node 1 has 900 MiB but Xen gives vnode 1 no memory"]


def test_memory_linux_none_xen_some() -> None:
    view = two_nodes([[10, 20], [20, 10]], (900, 0))
    info = vnuma([0, 0, 1, 1], [[10, 20], [20, 10]], [1024, 256])
    assert reconcile(view, info, "HVM") == [
        "Linux node 1 has no memory but Xen gives vnode 1 256 MiB"
    ]


def test_memory_linux_above_xen() -> None:
    view = two_nodes([[10, 20], [20, 10]], (1025, 1000))
    info = vnuma([0, 0, 1, 1], [[10, 20], [20, 10]], [1024, 1024])
    assert reconcile(view, info, "HVM") == [
        "Linux node 0 has 1025 MiB, more than the 1024 MiB in Xen's ranges for vnode 0 "
        "(memory hot-added beyond the vNUMA layout?)"
    ]


def test_memory_below_the_documented_fraction() -> None:
    low = int(1024 * MIN_MEMORY_FRACTION) - 1
    view = two_nodes([[10, 20], [20, 10]], (1000, low))
    info = vnuma([0, 0, 1, 1], [[10, 20], [20, 10]], [1024, 1024])
    assert reconcile(view, info, "HVM") == [
        f"Linux node 1 has {low} MiB, under 50% of the 1024 MiB Xen gives vnode 1 "
        "(ballooned down, or memory offlined?)"
    ]
    just_enough = two_nodes([[10, 20], [20, 10]], (1000, int(1024 * MIN_MEMORY_FRACTION)))
    assert reconcile(just_enough, info, "HVM") == []


def test_memory_ranges_split_by_the_mmio_hole_are_summed() -> None:
    # an HVM vnode crossing the MMIO hole has two ranges (nr_vmemranges > nr_vnodes)
    gib = 1024 * MIB
    info = validate_vnuma(
        2,
        [0, 0, 1, 1],
        [10, 20, 20, 10],
        [(0, 2 * gib, 0, 0), (2 * gib, 3 * gib, 0, 1), (4 * gib, 5 * gib, 0, 1)],
    )
    view = two_nodes([[10, 20], [20, 10]], (2000, 2000))
    assert reconcile(view, info, "HVM") == []


# --- hypercall status lines ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (NotOnXen("no /dev/xen/privcmd"), "not on Xen: no /dev/xen/privcmd"),
        (NoVnuma("no vNUMA: Xen has none here"), "no vNUMA: Xen has none here"),
        (NoVnuma("the domain has no vnuma= setting"), "no vNUMA: the domain has no vnuma= setting"),
        (XenTooOld("the hypercall is missing"), "Xen too old: the hypercall is missing"),
        (XenUnavailable("strange"), "Xen unavailable: strange"),
        (
            HypercallError("XENMEM_get_vnumainfo", errno.EINVAL),
            "hypercall failed: XENMEM_get_vnumainfo failed: EINVAL (Invalid argument)",
        ),
        (
            InputError("XENMEM_get_vnumainfo", "nr_vnodes out of range 1..64", 65),
            "hypercall answered garbage: XENMEM_get_vnumainfo: nr_vnodes out of range 1..64 "
            "(got '65')",
        ),
        (
            ImportError("No module named 'guestagent.xen._xenc'"),
            "C extension not built (reinstall guestagent to build it): "
            "No module named 'guestagent.xen._xenc'",
        ),
        (
            OSError(errno.ENOTTY, "Inappropriate ioctl"),
            "hypercall failed: [Errno 25] Inappropriate ioctl",
        ),
    ],
)
def test_hypercall_status(error: BaseException, expected: str) -> None:
    assert hypercall_status(error) == expected


def test_privcmd_restricted_status_says_how_to_enable() -> None:
    status = hypercall_status(PrivcmdRestricted(" (XENMEM_get_vnumainfo answered EPERM)"))
    assert status.startswith("privcmd restricted: the guest kernel blocks privcmd hypercalls")
    assert "unrestricted=1" in status
    assert "\n" not in status


# --- read_topology with injected hypercalls ------------------------------------------------------


def test_not_on_xen_never_calls_the_hypercall() -> None:
    topo = read_topology(HostFS(str(tree("laptop"))), must_not_call)
    assert topo.hypercall_status == "not attempted: no hypervisor found"
    assert topo.sources == ["sysfs"] and topo.mismatches == [] and topo.hypercall is None


@pytest.mark.parametrize(
    ("error", "status_start"),
    [
        (NotOnXen("no /dev/xen/privcmd"), "not on Xen: "),
        (PrivcmdRestricted(""), "privcmd restricted: "),
        (NoVnuma("no vNUMA: none"), "no vNUMA: "),
        (XenTooOld("ENOSYS"), "Xen too old: "),
        (HypercallError("XENMEM_get_vnumainfo", errno.EFAULT), "hypercall failed: "),
        (ImportError("no _xenc"), "C extension not built"),
    ],
)
def test_each_unavailable_case_keeps_the_linux_view(
    error: BaseException, status_start: str
) -> None:
    topo = read_topology(HostFS(str(tree("hvm-2vnode"))), raising(error))
    assert topo.hypercall_status.startswith(status_start)
    assert topo.sources == ["sysfs"] and topo.nodes_from == "sysfs"
    assert [n.id for n in topo.nodes] == [0, 1]
    assert topo.mismatches == [] and topo.errors == []


def test_garbage_hypercall_answer_is_an_error_line() -> None:
    error = InputError("XENMEM_get_vnumainfo", "nr_vcpus out of range 1..4096", 0)
    topo = read_topology(HostFS(str(tree("hvm-2vnode"))), raising(error))
    assert topo.errors == [f"hypercall answered garbage: {error}"]


def test_sysfs_unreadable_but_hypercall_answers(tmp_path: object) -> None:
    info = vnumainfo("hvm-3vnode")
    topo = assemble(HVM, None, "/sys/devices/system/cpu/online: does not exist", info, "ok")
    assert topo.sources == ["hypercall"] and topo.nodes_from == "hypercall"
    assert topo.errors == ["/sys/devices/system/cpu/online: does not exist"]
    assert [(n.id, n.cpus) for n in topo.nodes] == [(0, [0, 1]), (1, [2]), (2, [3])]
    assert topo.answered


def test_nodes_from_vnuma() -> None:
    nodes = nodes_from_vnuma(vnumainfo("hvm-3vnode"))
    assert [(n.id, n.cpus, n.memory_bytes // MIB, n.distances) for n in nodes] == [
        (0, [0, 1], 504, {0: 10, 1: 21, 2: 31}),
        (1, [2], 256, {0: 21, 1: 10, 2: 17}),
        (2, [3], 256, {0: 31, 1: 17, 2: 10}),
    ]


# --- JSON shape -------------------------------------------------------------------------------


def test_json_shape_matches_the_issue() -> None:
    topo = read_topology(HostFS(str(tree("pv-guest"))), answering(vnumainfo("pv-guest")), PV)
    data = json.loads(json.dumps(topo.to_json()))
    assert {"hypervisor", "sources", "nodes", "hypercall", "mismatches"} <= set(data)
    assert data["hypervisor"] == "xen"
    assert data["sources"] == ["hypercall", "sysfs"]
    assert data["nodes"] == [
        {
            "id": 0,
            "cpus": [0, 1],
            "memory_bytes": 466720 * 1024,
            "distances": {"0": 10},
            "has_cpu": True,
            "has_memory": True,
        }
    ]
    assert data["hypercall"] == {
        "vnodes": 2,
        "vcpu_to_vnode": [0, 1],
        "distances": [[10, 20], [20, 10]],
        "memory_ranges": [
            {"start": 0, "end": 256 * MIB, "node": 0},
            {"start": 256 * MIB, "end": 512 * MIB, "node": 1},
        ],
    }
    assert data["hypercall_status"] == "ok"
    assert data["guest_type"] == "PV"
    assert len(data["mismatches"]) == 1


def test_reconcile_is_pure() -> None:
    view, info = linux("hvm-3vnode"), vnumainfo("hvm-3vnode")
    before = (copy.deepcopy(view), copy.deepcopy(info))
    reconcile(view, info, "HVM")
    assemble(HVM, view, None, info, "ok")
    assert (view, info) == before
