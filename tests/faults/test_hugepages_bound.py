"""A hugepage reservation bounded by the node's memory (issue 15, item 7).

Seen before the fix: ``hugepages_2m_per_node`` was not checked against the node's memory: the
largest accepted value (1,048,576 pages, 2 TiB) was planned and written on a node of a few GiB,
where the kernel hands over every free page it can find and the node runs out of memory.

Now a reservation above half of the node's MemTotal (from ``nodeN/meminfo``) is not made: one
``failed`` line names the node, the pages asked and the node's size.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from guestagent.devices.apply import DevicesJob
from guestagent.devices.config import MAX_HUGEPAGES, DevicesConfig
from guestagent.hostfs import HostFS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VF = "0000:00:05.0"
NODE_DIR = "sys/devices/system/node"


def root_with_meminfo(tmp_path: Path, total_kb: int) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    for node in (0, 1):
        (root / f"{NODE_DIR}/node{node}/meminfo").write_text(
            f"Node {node} MemTotal:       {total_kb} kB\n"
            f"Node {node} MemFree:        {total_kb // 2} kB\n"
        )
    return root


def scan(root: Path, pages: int) -> list[str]:
    config = DevicesConfig(node_overrides={VF: 1}, hugepages_2m_per_node=pages)
    job = DevicesJob(HostFS(str(root)), config, [], route_lookup=lambda: ["eth0"])
    reports = {r.bdf: r for r in job.scan(apply=True)}
    return reports[VF].failed + reports[VF].applied


def nr(root: Path, node: int) -> str:
    return (root / f"{NODE_DIR}/node{node}/hugepages/hugepages-2048kB/nr_hugepages").read_text()


def test_a_reservation_beyond_half_the_node_is_not_made(tmp_path: Path) -> None:
    root = root_with_meminfo(tmp_path, 2 * 1024 * 1024)  # 2 GiB nodes
    lines = scan(root, MAX_HUGEPAGES)
    assert nr(root, 1).strip() == "0", "2 TiB of hugepages written on a 2 GiB node"
    assert any("more than half" in line and "node 1" in line for line in lines), lines


def test_a_reservation_within_the_bound_is_made(tmp_path: Path) -> None:
    root = root_with_meminfo(tmp_path, 2 * 1024 * 1024)
    lines = scan(root, 512)  # 1 GiB: exactly half
    assert nr(root, 1) == "512", lines
