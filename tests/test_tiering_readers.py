"""sysfs/procfs into the tiering inputs (guestagent.tiering.readers), on fixture trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.tiering import readers
from guestagent.tiering.model import PolicyState, TieringConfig
from guestagent.tiering.policy import decide

FIXTURES = Path(__file__).parent / "fixtures"
TWO = FIXTURES / "tiering-2node"
GIB = 1 << 30


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(TWO, tmp_path / "root", symlinks=True)
    return tmp_path / "root"


def test_snapshot_of_the_two_vnode_guest() -> None:
    snap = readers.read_snapshot(HostFS(str(TWO)))
    assert sorted(snap.nodes) == [0, 1]
    n0 = snap.nodes[0]
    assert n0.total == 1030612 * 1024
    assert n0.free == 61836 * 1024
    assert n0.inactive == 213491 * 1024
    assert n0.inactive_file == 210501 * 1024
    assert snap.distance(0, 1) == 20 and snap.distance(1, 1) == 10
    d = decide(snap, TieringConfig(), PolicyState())
    assert [(m.source, m.target) for m in d.plan.moves] == [(0, 1)]


def test_node_ranges_merge_blocks_and_skip_offline_ones() -> None:
    h = HostFS(str(TWO))
    assert readers.block_size(h) == 128 << 20
    assert readers.node_ranges(h, 0) == [(0, GIB)]
    assert readers.node_ranges(h, 1) == [(GIB, 2 * GIB)]  # memory16 is offline


def test_node_ranges_with_a_hole(tree: Path) -> None:
    (tree / "sys/devices/system/node/node0/memory3").unlink()
    assert readers.node_ranges(HostFS(str(tree)), 0) == [(0, 3 << 27), (4 << 27, GIB)]


def test_distance_columns_follow_the_online_list(tree: Path) -> None:
    node = tree / "sys/devices/system/node"
    (node / "node0").rename(node / "node2")
    meminfo = node / "node2/meminfo"
    meminfo.write_text(meminfo.read_text().replace("Node 0 ", "Node 2 "))
    (node / "online").write_text("1-2\n")
    (node / "node1/distance").write_text("10 30\n")  # columns: nodes 1, 2
    (node / "node2/distance").write_text("30 10\n")
    snap = readers.read_snapshot(HostFS(str(tree)))
    assert snap.distance(1, 2) == 30 and snap.distance(2, 1) == 30
    assert snap.distance(1, 1) == 10 and snap.distance(2, 2) == 10


@pytest.mark.parametrize(
    ("rel", "text", "message"),
    [
        ("sys/devices/system/node/node1/meminfo", "Node 0 MemTotal: 5 kB\n", "expected node 1"),
        ("sys/devices/system/node/node1/meminfo", "Node 1 MemTotal: 5 kB\n", "lacks MemFree"),
        ("sys/devices/system/node/node1/meminfo", "Node 1 MemTotal: 5 kB\nNode 1 MemFree: 9 kB\n",
         "MemFree exceeds MemTotal"),
        ("sys/devices/system/memory/block_size_bytes", "zz\n", "hexadecimal"),
        ("sys/devices/system/memory/block_size_bytes", "3000\n", "power of two"),
        ("proc/vmstat", "numa_pages_migrated lots\n", "expected 'name number'"),
        ("proc/sys/kernel/osrelease", "linux\n", "release like"),
        ("sys/kernel/mm/lru_gen/enabled", "y\n", "hexadecimal mask"),
    ],
)
def test_garbage_is_one_line_naming_the_file(tree: Path, rel: str, text: str, message: str) -> None:
    (tree / rel).parent.mkdir(parents=True, exist_ok=True)
    (tree / rel).write_text(text)
    h = HostFS(str(tree))
    with pytest.raises(InputError, match=message) as caught:
        readers.read_snapshot(h)
        readers.node_ranges(h, 1)
        readers.returned_pages(h)
        readers.kernel_version(h)
    assert "\n" not in str(caught.value)
    assert f"/{rel}" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("20 10 30\n", "expected 2 distances"), ("20 x\n", "expected an integer"), ("", "empty")],
)
def test_an_unreadable_distance_row_is_one_problem_and_unknown(
    tree: Path, text: str, message: str
) -> None:
    """The shared node reader's rule (guestagent.nodesysfs): a distance row is not needed to
    serve; the node's distances become unknown and the snapshot says why, naming the file."""
    (tree / "sys/devices/system/node/node1/distance").write_text(text)
    snap = readers.read_snapshot(HostFS(str(tree)))
    assert len(snap.problems) == 1 and message in snap.problems[0]
    assert "/sys/devices/system/node/node1/distance" in snap.problems[0]
    assert snap.distance(0, 1) == 20  # node 0's row still read
    assert (1, 0) not in snap.distances


def test_online_garbage_falls_back_to_the_node_directories(tree: Path) -> None:
    (tree / "sys/devices/system/node/online").write_text("zero-one\n")
    snap = readers.read_snapshot(HostFS(str(tree)))
    assert sorted(snap.nodes) == [0, 1]
    assert any("/sys/devices/system/node/online" in p for p in snap.problems)


def test_lru_gen_switch(tree: Path) -> None:
    assert readers.read_snapshot(HostFS(str(tree))).lru_gen is False  # no lru_gen directory
    f = tree / "sys/kernel/mm/lru_gen/enabled"
    f.parent.mkdir(parents=True)
    for text, on in (("0x0007\n", True), ("0x0001\n", True), ("0x0000\n", False)):
        f.write_text(text)
        assert readers.read_snapshot(HostFS(str(tree))).lru_gen is on, text


def test_vmstat_and_kernel_version() -> None:
    h = HostFS(str(TWO))
    assert readers.returned_pages(h) == 5120
    assert readers.kernel_version(h) == (6, 12)
    assert readers.kernel_version(HostFS("/nonexistent")) is None


def test_the_runner_logs_input_problems_once_until_they_change(
    tree: Path, log_events: list[dict[str, object]]
) -> None:
    from guestagent.tiering.runner import Runner

    (tree / "sys/devices/system/node/node1/distance").write_text("20 x\n")
    runner = Runner(HostFS(str(tree)), object(), TieringConfig())  # type: ignore[arg-type]
    runner._apply = lambda plan: None  # type: ignore[method-assign]  # no backend: decide only
    runner.tick()
    runner.tick()
    problems = [e for e in log_events if e["event"] == "tiering_input_problem"]
    assert len(problems) == 1 and "node1/distance" in str(problems[0]["problem"])
    (tree / "sys/devices/system/node/node1/distance").write_text("20 10\n")
    runner.tick()
    assert len([e for e in log_events if e["event"] == "tiering_input_problem"]) == 1
