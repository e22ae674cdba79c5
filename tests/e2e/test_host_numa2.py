"""The second host layout: 2 host NUMA nodes, an IOMMU, and a NIC on node 1."""

from __future__ import annotations

import re

import pytest

from tests.e2e.bed import XenBed

# Cold caches build everything inside the first test's setup (debootstrap, pip): generous bounds.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]


def test_xl_info_shows_two_nodes_and_device_on_node1(bed_numa2: XenBed) -> None:
    out = bed_numa2.dom0_ok("xl info -n")
    numa = out[out.index("numa_info") :]
    nodes = re.findall(r"^\s+(\d+):\s+(\d+)\s+(\d+)\s+([\d,]+)$", numa, re.M)
    assert [n[0] for n in nodes] == ["0", "1"], out
    assert [n[3] for n in nodes] == ["10,20", "20,10"], out
    cpu_nodes = re.findall(r"^\s+(\d+):\s+\d+\s+\d+\s+(\d+)$", out, re.M)
    assert {node for _cpu, node in cpu_nodes} == {"0", "1"}, out
    # The e1000e sits behind pxb-pcie bus_nr=0x80 (numa_node=1) and its root port: bus 0x81.
    dev = bed_numa2.dom0_ok(
        "for d in /sys/bus/pci/devices/*; do echo ${d##*/} $(cat $d/vendor) $(cat $d/device); done"
    )
    e1000e = [ln.split()[0] for ln in dev.splitlines() if "0x8086 0x10d3" in ln]
    assert e1000e, dev
    bdf = r"^([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\s+(\d+)$"
    devices = dict(re.findall(bdf, out, re.M))
    assert devices.get(e1000e[0]) == "1", (e1000e, out)
    caps = bed_numa2.dom0_ok("xl info | grep virt_caps")
    assert "iommu" in caps or "directio" in caps, caps
