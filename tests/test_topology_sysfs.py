"""The sysfs reader on the fixture trees and on broken copies of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.topology.model import LinuxView
from guestagent.topology.sysfs import read_linux_view
from tests.fixtures.loader import NODE, copy_tree, tree

KIB = 1024


def _view(name: str) -> LinuxView:
    return read_linux_view(HostFS(str(tree(name))))


def _memtotal_kb(root: Path, node: int) -> int:
    first = (root / NODE / f"node{node}/meminfo").read_text().splitlines()[0]
    return int(first.split()[3])


def test_laptop_is_this_machines_single_node() -> None:
    view = _view("laptop")
    assert view.numa and view.problems == []
    assert view.node_ids() == [0]
    node = view.nodes[0]
    assert node.cpus == view.online_cpus
    assert node.memory_bytes == _memtotal_kb(tree("laptop"), 0) * KIB
    assert node.distances == {0: 10}
    assert node.has_cpu and node.has_memory


def test_two_socket() -> None:
    view = _view("two-socket")
    assert view.node_ids() == [0, 1]
    assert view.nodes[0].cpus == [*range(16), *range(32, 48)]
    assert view.nodes[1].cpus == [*range(16, 32), *range(48, 64)]
    assert view.nodes[0].memory_bytes == 196984784 * KIB
    assert view.nodes[0].distances == {0: 10, 1: 21}
    assert view.nodes[1].distances == {0: 21, 1: 10}
    assert view.online_cpus == list(range(64))
    assert view.possible_nodes == [0, 1]
    assert view.problems == []


def test_four_node_sparse_ids_memoryless_cpuless_asymmetric() -> None:
    view = _view("four-node-sparse")
    assert view.node_ids() == [0, 1, 4, 6]
    by_id = {n.id: n for n in view.nodes}
    memoryless, cpuless = by_id[4], by_id[6]
    assert memoryless.cpus == list(range(16, 24))
    assert memoryless.memory_bytes == 0 and not memoryless.has_memory and memoryless.has_cpu
    assert cpuless.cpus == [] and not cpuless.has_cpu and cpuless.has_memory
    assert cpuless.memory_bytes == 66060288 * KIB
    # distance rows are keyed by the online node ids, not by position
    assert by_id[0].distances == {0: 10, 1: 16, 4: 16, 6: 22}
    assert by_id[6].distances == {0: 24, 1: 16, 4: 28, 6: 10}
    assert by_id[0].distances[6] != by_id[6].distances[0]
    assert view.possible_nodes == list(range(8))
    assert view.possible_cpus == list(range(32))
    assert view.problems == []


def test_hvm_3vnode_matches_reference_section_12() -> None:
    view = _view("hvm-3vnode")
    assert [(n.id, n.cpus, n.memory_bytes // KIB) for n in view.nodes] == [
        (0, [0, 1], 514388),
        (1, [2], 257624),
        (2, [3], 212292),
    ]
    assert [[n.distances[j] for j in (0, 1, 2)] for n in view.nodes] == [
        [10, 21, 31],
        [21, 10, 17],
        [31, 17, 10],
    ]


@pytest.mark.parametrize(("name", "nodes"), [("hvm-2vnode", 2), ("pv-guest", 1)])
def test_xen_guest_fixtures(name: str, nodes: int) -> None:
    view = _view(name)
    assert len(view.nodes) == nodes and view.problems == []


def test_no_numa_sysfs_gives_one_node_from_proc_meminfo(tmp_path: Path) -> None:
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-3\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal:        2048000 kB\nMemFree: 1 kB\n")
    view = read_linux_view(HostFS(str(tmp_path)))
    assert not view.numa
    assert len(view.nodes) == 1
    node = view.nodes[0]
    assert (node.id, node.cpus, node.memory_bytes) == (0, [0, 1, 2, 3], 2048000 * KIB)
    assert node.distances == {0: 10}


def test_missing_online_falls_back_to_node_directories(tmp_path: Path) -> None:
    root = copy_tree("four-node-sparse", tmp_path)
    (root / NODE / "online").unlink()
    view = read_linux_view(HostFS(str(root)))
    assert view.node_ids() == [0, 1, 4, 6] and view.problems == []


def test_missing_has_cpu_and_has_memory_are_derived(tmp_path: Path) -> None:
    root = copy_tree("four-node-sparse", tmp_path)
    (root / NODE / "has_cpu").unlink()
    (root / NODE / "has_memory").unlink()
    view = read_linux_view(HostFS(str(root)))
    assert [(n.id, n.has_cpu, n.has_memory) for n in view.nodes] == [
        (0, True, True),
        (1, True, True),
        (4, True, False),
        (6, False, True),
    ]
    assert view.problems == []


# --- broken inputs: fatal ones raise one line naming the file and value -----------------------


def _break(tmp_path: Path, name: str, rel: str, data: bytes | None) -> HostFS:
    root = copy_tree(name, tmp_path)
    path = root / rel
    if data is None:
        path.unlink()
    else:
        path.write_bytes(data)
    return HostFS(str(root))


FATAL = [
    # (tree, file, content, expected start of the message, expected text in it)
    ("hvm-2vnode", "node1/cpulist", b"", "node1/cpulist: is empty", "(got '')"),
    ("hvm-2vnode", "node1/cpulist", b"0-\n", "node1/cpulist: expected a CPU list", "'0-"),
    ("hvm-2vnode", "node1/cpulist", b"2-3\x00\n", "node1/cpulist: contains a NUL byte", "x00"),
    ("hvm-2vnode", "node1/cpulist", None, "node1/cpulist: does not exist", ""),
    ("hvm-2vnode", "node1/meminfo", b"Node 1 MemTotal:   2576",
     "node1/meminfo line 1: MemTotal has no unit", "2576"),
    ("hvm-2vnode", "node1/meminfo", b"Node 1 MemTot", "node1/meminfo line 1:", "MemTot"),
    ("hvm-2vnode", "node1/meminfo", b"Node 1 MemFree: 1 kB\n", "node1/meminfo: has no MemTot", ""),
    ("hvm-2vnode", "node1/meminfo", b"Node 0 MemTotal: 1 kB\n", "node1/meminfo: has lines for", ""),
    ("hvm-2vnode", "node1/meminfo", bytes(range(256)), "node1/meminfo: not ASCII text", "x00"),
    ("hvm-2vnode", "node1/meminfo", b"", "node1/meminfo: is empty", ""),
]


@pytest.mark.parametrize(("name", "rel", "data", "start", "contains"), FATAL)
def test_fatal_garbage(
    tmp_path: Path, name: str, rel: str, data: bytes | None, start: str, contains: str
) -> None:
    fs = _break(tmp_path, name, f"{NODE}/{rel}", data)
    with pytest.raises(InputError) as info:
        read_linux_view(fs)
    message = str(info.value)
    where = f"{fs.root}/{NODE}" if "does not exist" in start else f"/{NODE}"  # the path tried
    assert message.startswith(f"{where}/{start}"), message
    assert contains in message
    assert "\n" not in message


def test_missing_node_directory_is_fatal(tmp_path: Path) -> None:
    root = copy_tree("hvm-3vnode", tmp_path)
    for f in (root / NODE / "node2").iterdir():
        f.unlink()
    (root / NODE / "node2").rmdir()
    with pytest.raises(InputError, match=r"^/sys/devices/system/node/node2: listed in .*online"):
        read_linux_view(HostFS(str(root)))


def test_no_node_at_all_is_fatal(tmp_path: Path) -> None:
    (tmp_path / NODE).mkdir(parents=True)
    (tmp_path / NODE / "online").write_text("\n")
    with pytest.raises(InputError, match="no online node and no nodeN directory"):
        read_linux_view(HostFS(str(tmp_path)))


def test_no_numa_and_no_cpu_online_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        read_linux_view(HostFS(str(tmp_path)))
    assert str(e.value) == f"{tmp_path}/sys/devices/system/cpu/online: does not exist"


def test_no_numa_with_truncated_proc_meminfo_is_fatal(tmp_path: Path) -> None:
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal:        20")
    with pytest.raises(InputError, match=r"^/proc/meminfo line 1: MemTotal has no unit"):
        read_linux_view(HostFS(str(tmp_path)))


# --- broken inputs that degrade: the answer stands, the problem is reported --------------------


DEGRADED = [
    ("node0/distance", b"10 x\n", "node0/distance: expected an integer (got 'x'); distances of"),
    ("node0/distance", b"10\n", "node0/distance: expected 2 distances (one per online node)"),
    ("node0/distance", b"10 0\n", "node0/distance: below the minimum 1"),
    ("node0/distance", b"\x89PNG\r\n", "node0/distance: not ASCII text"),
    ("node0/distance", b"", "node0/distance: is empty"),
    ("node0/distance", None, "node0/distance: does not exist"),
]


@pytest.mark.parametrize(("rel", "data", "expected"), DEGRADED)
def test_garbage_distance_loses_only_that_row(
    tmp_path: Path, rel: str, data: bytes | None, expected: str
) -> None:
    fs = _break(tmp_path, "hvm-2vnode", f"{NODE}/{rel}", data)
    view = read_linux_view(fs)
    assert view.nodes[0].distances == {}
    assert view.nodes[1].distances == {0: 20, 1: 10}
    assert len(view.problems) == 1
    where = f"{fs.root}/{NODE}" if data is None else f"/{NODE}"  # a missing one: the path tried
    assert view.problems[0].startswith(f"{where}/{expected}"), view.problems[0]


def test_empty_cpulist_for_a_node_has_cpu_lists(tmp_path: Path) -> None:
    view = read_linux_view(_break(tmp_path, "hvm-2vnode", f"{NODE}/node1/cpulist", b"\n"))
    assert view.nodes[1].cpus == [] and not view.nodes[1].has_cpu
    assert view.problems == [
        "/sys/devices/system/node/has_cpu lists node 1 but "
        "/sys/devices/system/node/node1/cpulist has no CPUs; going by the cpulist"
    ]


def test_garbage_has_memory_falls_back_to_meminfo(tmp_path: Path) -> None:
    view = read_linux_view(_break(tmp_path, "four-node-sparse", f"{NODE}/has_memory", b"0-1,6-\n"))
    assert [n.has_memory for n in view.nodes] == [True, True, False, True]
    assert view.problems == [
        "/sys/devices/system/node/has_memory: expected a CPU list like 0-3,8 (got '0-1,6-\\n')"
    ]


def test_garbage_online_falls_back_to_directories(tmp_path: Path) -> None:
    view = read_linux_view(_break(tmp_path, "four-node-sparse", f"{NODE}/online", b"zero\n"))
    assert view.node_ids() == [0, 1, 4, 6]
    assert view.problems[0].startswith("/sys/devices/system/node/online: expected a CPU list")


def test_garbage_cpu_online_falls_back_to_node_cpulists(tmp_path: Path) -> None:
    fs = _break(tmp_path, "hvm-3vnode", "sys/devices/system/cpu/online", b"0-3-\n")
    view = read_linux_view(fs)
    assert view.online_cpus == [0, 1, 2, 3]
    assert view.problems[0].startswith("/sys/devices/system/cpu/online: expected a CPU list")
    assert "taking the CPUs of the node cpulists as online" in view.problems[1]


def test_oversized_cpulist_is_fatal(tmp_path: Path) -> None:
    fs = _break(tmp_path, "laptop", f"{NODE}/node0/cpulist", b"0," * (1 << 20))
    with pytest.raises(InputError, match="larger than"):
        read_linux_view(fs)
