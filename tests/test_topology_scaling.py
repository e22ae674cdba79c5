"""The one-pass forms that keep ``topology`` and ``publish`` linear in the host's size
(issue 18, item 5; ``benchmarks/scaling.py`` measures the growth): each must give exactly the
answer of the per-item form it replaced, on irregular input too. Behaviour only, no timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestagent import nodesysfs
from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.topology.model import LinuxView, Node
from guestagent.topology.reconcile import nodes_from_vnuma, reconcile
from guestagent.xen.vnuma import VnumaInfo, validate_vnuma

MIB = 1 << 20


def sparse_view() -> LinuxView:
    """Sparse ids, a CPU-less node, CPU 5 listed twice (node 1 first), CPU 9 in no node."""
    nodes = [
        Node(1, [4, 5], 512 * MIB, {1: 10, 4: 20, 6: 30}, True, True),
        Node(4, [0, 1, 5], 256 * MIB, {1: 20, 4: 10, 6: 20}, True, True),
        Node(6, [], 128 * MIB, {1: 30, 4: 20, 6: 10}, False, True),
    ]
    return LinuxView(nodes=nodes, online_cpus=[0, 1, 4, 5, 9])


def uneven_vnuma() -> VnumaInfo:
    """Three vnodes, vCPUs out of order, vnode 1 with two ranges given out of address order and
    vnode 2 with none."""
    return validate_vnuma(
        3,
        [2, 0, 0, 1, 0, 2],
        [10, 20, 30, 20, 10, 20, 30, 20, 10],
        [(4 * MIB, 6 * MIB, 0, 1), (0, 3 * MIB, 0, 0), (3 * MIB, 4 * MIB, 0, 1)],
    )


def test_cpu_nodes_answers_as_node_of_cpu_for_every_cpu() -> None:
    view = sparse_view()
    where = view.cpu_nodes()
    for cpu in range(12):
        assert where.get(cpu) == view.node_of_cpu(cpu), cpu
    assert where[5] == 1  # the first node listing it, as before
    assert 9 not in where


def test_per_vnode_groupings_equal_the_per_vnode_questions() -> None:
    info = uneven_vnuma()
    assert info.vcpus_by_vnode() == [info.vcpus_of(v) for v in range(3)] == [[1, 2, 4], [3],
                                                                              [0, 5]]
    assert info.memory_by_vnode() == [info.memory_bytes(v) for v in range(3)] == [
        3 * MIB, 3 * MIB, 0]
    assert [[(r.start, r.end) for r in rs] for rs in info.ranges_by_vnode()] == [
        [(0, 3 * MIB)], [(3 * MIB, 4 * MIB), (4 * MIB, 6 * MIB)], []]


def test_reconcile_still_places_each_vcpu_by_its_first_node() -> None:
    # vCPU 5 is on Linux node 1 (its first cpulist) while Xen says vnode 2; vCPU 0 and 1 are on
    # node 4, not vnodes 2 and 0; CPU 9 is online beyond Xen's vCPUs.
    info = validate_vnuma(
        7, [2, 0, 0, 0, 1, 2], [10 if i % 8 == 0 else 20 for i in range(49)],
        [(i * MIB, (i + 1) * MIB, 0, i) for i in range(7)],
    )
    lines = reconcile(sparse_view(), info, "HVM")
    assert "vCPU 5 is on Linux node 1 but Xen places it on vnode 2" in lines
    assert "vCPU 0 is on Linux node 4 but Xen places it on vnode 2" in lines
    assert "vCPU 1 is on Linux node 4 but Xen places it on vnode 0" in lines
    assert "vCPU 2 is offline in Linux; Xen places it on vnode 0" in lines
    assert "Linux CPUs 9 are online but Xen reports only 6 vCPUs" in lines


def test_nodes_from_vnuma_uses_the_groupings() -> None:
    nodes = nodes_from_vnuma(uneven_vnuma())
    assert [(n.id, n.cpus, n.memory_bytes, n.has_memory) for n in nodes] == [
        (0, [1, 2, 4], 3 * MIB, True), (1, [3], 3 * MIB, True), (2, [0, 5], 0, False)]


@pytest.mark.parametrize(
    ("row", "expected"),
    [("10 20 30\n", {0: 10, 2: 20, 5: 30}), ("010 0020 255\n", {0: 10, 2: 20, 5: 255})],
)
def test_distance_row_fast_path_reads_what_parse_int_reads(
    tmp_path: Path, row: str, expected: dict[int, int]
) -> None:
    (tmp_path / "sys/devices/system/node/node2").mkdir(parents=True)
    (tmp_path / "sys/devices/system/node/node2/distance").write_text(row)
    assert nodesysfs.distance_row(HostFS(str(tmp_path)), 2, [0, 2, 5]) == expected


@pytest.mark.parametrize(
    ("row", "message"),
    [("10 0 30\n", "below the minimum 1"), ("10 256 30\n", "above the maximum 255"),
     ("10 2x 30\n", "expected an integer"), ("10 -5 30\n", "below the minimum 1"),
     ("10 1000 30\n", "above the maximum 255")],
)
def test_distance_row_errors_still_name_the_file_and_word(
    tmp_path: Path, row: str, message: str
) -> None:
    (tmp_path / "sys/devices/system/node/node2").mkdir(parents=True)
    (tmp_path / "sys/devices/system/node/node2/distance").write_text(row)
    with pytest.raises(InputError, match=message) as caught:
        nodesysfs.distance_row(HostFS(str(tmp_path)), 2, [0, 2, 5])
    assert "node2/distance" in str(caught.value)
