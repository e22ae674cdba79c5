"""The one NUMA node reader (guestagent.nodesysfs): its fallbacks and failures, on fixture trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guestagent import nodesysfs
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS

TWO = Path(__file__).parent / "fixtures" / "tiering-2node"
NODE = "sys/devices/system/node"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(TWO, tmp_path / "root", symlinks=True)
    return tmp_path / "root"


def test_online_is_read_and_needs_no_fallback(tree: Path) -> None:
    problems: list[str] = []
    assert nodesysfs.online_nodes(HostFS(str(tree)), problems) == [0, 1] and problems == []


@pytest.mark.parametrize(("text", "said"), [(None, False), ("\n", True), ("0-x\n", True)])
def test_online_falls_back_to_the_directories(tree: Path, text: str | None, said: bool) -> None:
    online = tree / NODE / "online"
    if text is None:
        online.unlink()
    else:
        online.write_text(text)
    problems: list[str] = []
    assert nodesysfs.online_nodes(HostFS(str(tree)), problems) == [0, 1]
    assert bool(problems) is said
    assert all(f"/{NODE}/online" in p for p in problems)


def test_no_node_at_all_is_an_error(tmp_path: Path) -> None:
    (tmp_path / NODE).mkdir(parents=True)
    hostfs = HostFS(str(tmp_path))
    assert nodesysfs.has_numa(hostfs)
    with pytest.raises(InputError, match="no online node and no nodeN directory"):
        nodesysfs.online_nodes(hostfs, [])
    assert not nodesysfs.has_numa(HostFS(str(tmp_path / "elsewhere")))


def test_meminfo_in_bytes_and_of_its_own_node(tree: Path) -> None:
    hostfs = HostFS(str(tree))
    assert nodesysfs.node_meminfo(hostfs, 0)["MemTotal"] == 1030612 * 1024
    (tree / NODE / "node1/meminfo").write_text("Node 0 MemTotal: 5 kB\n")
    with pytest.raises(InputError, match="expected node 1"):
        nodesysfs.node_meminfo(hostfs, 1)
    (tree / NODE / "node1/meminfo").write_text("Node 1 MemFree: 5 kB\n")
    with pytest.raises(InputError, match="no MemTotal"):
        nodesysfs.node_meminfo(hostfs, 1)
    (tree / NODE / "node1/meminfo").unlink()
    with pytest.raises(MissingInputError):
        nodesysfs.node_meminfo(hostfs, 1)


def test_distance_row_follows_the_online_order(tree: Path) -> None:
    hostfs = HostFS(str(tree))
    assert nodesysfs.distance_row(hostfs, 1, [0, 1]) == {0: 20, 1: 10}
    (tree / NODE / "node1/distance").write_text("20 256\n")
    with pytest.raises(InputError, match="node1/distance"):
        nodesysfs.distance_row(hostfs, 1, [0, 1])
    (tree / NODE / "node1/distance").write_text("")
    with pytest.raises(InputError, match="empty"):
        nodesysfs.distance_row(hostfs, 1, [0, 1])


def test_cpulist(tree: Path) -> None:
    assert nodesysfs.node_cpus(HostFS(str(tree)), 0) == [0, 1]
