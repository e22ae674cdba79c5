"""``guestagent topology --json`` in real Xen guests equals their xl configuration."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.bed import GuestSpec, XenBed
from tests.e2e.vnuma import VNode, xl_vnuma

# Cold caches build everything inside the first test's setup (debootstrap, pip): generous bounds.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

MIB = 1 << 20

# A vCPU on each vnode. The 3-vnode guest is issue 13's realistic shape (`boots.SHAPES`
# "hvm-3n4"): 4 vCPUs, two on the big vnode 0.
TWO_NODES = [
    VNode(size_mb=512, vcpus=[0], distances=[10, 20]),
    VNode(size_mb=512, vcpus=[1], distances=[20, 10]),
]
# Unequal sizes and asymmetric distances, as in reference section 12.
THREE_NODES = [
    VNode(size_mb=512, vcpus=[0, 1], distances=[10, 21, 31]),
    VNode(size_mb=256, vcpus=[2], distances=[21, 10, 17]),
    VNode(size_mb=256, vcpus=[3], distances=[31, 17, 10]),
]


def topology_json(out: str) -> dict[str, Any]:
    start = out.find("{")
    assert start >= 0, f"no JSON in the agent's output:\n{out}"
    return json.loads(out[start:])  # type: ignore[no-any-return]


def check_vnuma_topology(j: dict[str, Any], spec: list[VNode]) -> None:
    n = len(spec)
    assert j["hypervisor"] == "xen", j
    assert j["hypercall_status"] == "ok", j["hypercall_status"]
    assert j["mismatches"] == [], j["mismatches"]
    assert j["errors"] == [], j["errors"]
    assert "hypercall" in j["sources"] and "sysfs" in j["sources"], j["sources"]

    # The hypercall: vnodes, vCPU map, distances, memory ranges.
    h = j["hypercall"]
    assert h is not None
    assert h["vnodes"] == n
    vcpu_map = [0] * sum(len(v.vcpus) for v in spec)
    for i, v in enumerate(spec):
        for cpu in v.vcpus:
            vcpu_map[cpu] = i
    assert h["vcpu_to_vnode"] == vcpu_map
    assert h["distances"] == [v.distances for v in spec]
    range_bytes = [0] * n
    for r in h["memory_ranges"]:
        assert r["end"] > r["start"]
        range_bytes[r["node"]] += r["end"] - r["start"]
    for i, v in enumerate(spec):
        # libxl charges vnode 0 with the video RAM (vga="none": none), and splits a vnode that
        # crosses the MMIO hole; the ranges add up to at most the configured size.
        assert v.size_mb * MIB - 16 * MIB <= range_bytes[i] <= v.size_mb * MIB, (i, range_bytes)

    # Linux (sysfs): nodes, CPUs, distances, memory within the node's ranges.
    nodes = j["nodes"]
    assert [nd["id"] for nd in nodes] == list(range(n))
    for nd, v in zip(nodes, spec):
        assert nd["cpus"] == v.vcpus, nd
        assert nd["distances"] == {str(k): d for k, d in enumerate(v.distances)}, nd
        assert nd["has_cpu"] and nd["has_memory"], nd
        # The kernel's own reservations are charged to the nodes (reference section 12): the
        # node's MemTotal is below its ranges' size, but not far below.
        assert 0.7 * range_bytes[nd["id"]] <= nd["memory_bytes"] <= range_bytes[nd["id"]], nd
    assert sorted(j["online_cpus"]) == list(range(len(vcpu_map)))


@pytest.mark.hvm
@pytest.mark.parametrize(
    "spec", [TWO_NODES, THREE_NODES], ids=["2vnodes", "3vnodes-asymmetric"]
)
def test_topology_hvm_vnuma(bed: XenBed, spec: list[VNode]) -> None:
    memory = sum(v.size_mb for v in spec)
    vcpus = sum(len(v.vcpus) for v in spec)
    with bed.guest(GuestSpec.hvm(memory=memory, vcpus=vcpus, vnuma=xl_vnuma(spec))) as g:
        out, rc = g.run("guestagent topology --json", timeout=180)
        assert rc == 0, out
        j = topology_json(out)
        check_vnuma_topology(j, spec)
        assert j["guest_type"].lower() == "hvm", j
        # Cross-check with plain sysfs, independent of the agent.
        cpulists = g.run_ok("cat /sys/devices/system/node/node*/cpulist").split()
        assert cpulists == [
            f"{v.vcpus[0]}-{v.vcpus[-1]}" if len(v.vcpus) > 1 else str(v.vcpus[0]) for v in spec
        ]


def test_topology_pv_without_vnuma(bed: XenBed) -> None:
    with bed.guest(GuestSpec.pv(memory=512, vcpus=2)) as g:
        out, rc = g.run("guestagent topology --json", timeout=180)
        assert rc == 0, out
        j = topology_json(out)
        assert j["hypervisor"] == "xen", j
        assert j["guest_type"].lower() == "pv", j
        assert j["hypercall"] is None, j
        # XENMEM_get_vnumainfo answers -EOPNOTSUPP for a domain built without vnuma=.
        assert j["hypercall_status"].startswith("no vNUMA"), j["hypercall_status"]
        assert [nd["id"] for nd in j["nodes"]] == [0], j["nodes"]
        assert j["nodes"][0]["cpus"] == [0, 1], j["nodes"]
