"""``guestagent publish`` publishes what the topology job's decide step decides
(:func:`guestagent.topology.reconcile.decide`): one place builds the tree and names the sections
another publisher owns, for the daemon's job and for the one-shot command alike."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from guestagent import cli
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.schema import BASE
from guestagent.topology.reader import read_topology
from guestagent.topology.reconcile import decide
from tests.test_publish import FIXTURES, HOME, three_vnodes, values_under
from tests.xenstore_server import XenstoreServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def as_guest(xs_connect: Callable[[int], Any]) -> Callable[[HostFS], Host]:
    """Guest domid 5 on the test xenstored, the hypercall answering three vnodes."""
    return lambda hostfs: Host(hostfs, open_vnuma=lambda _fs: three_vnodes,
                               open_xenstore=lambda _fs: xs_connect(5))


def called_names(path: Path) -> set[str]:
    """The names a module's code calls (``f(...)`` and ``m.f(...)``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                names.add(func.attr)
    return names


def test_publish_builds_no_tree_of_its_own() -> None:
    """The tree (schema.guest_tree) and the sections left (schema.others) are decide's."""
    calls = called_names(REPO / "guestagent" / "publish.py")
    assert "decide" in calls
    assert not calls & {"guest_tree", "others"}, calls & {"guest_tree", "others"}


def test_publish_writes_exactly_the_decided_tree_and_leaves_the_decided_sections(
    xs_server: XenstoreServer, as_guest: Callable[[HostFS], Host],
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = FIXTURES / "hvm-3vnode"
    plan = decide(read_topology(HostFS(str(root)), three_vnodes))
    assert plan.tree is not None and plan.leave
    left = f"{HOME}/{BASE}/{plan.leave[0]}/by"
    xs_server.set_node(left, b"another publisher")
    assert cli.main(["--root", str(root), "publish", "--json"], make_host=as_guest) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["keys"] == {f"{BASE}/{k}": v for k, v in plan.tree.items()}
    tree = values_under(xs_server, f"{HOME}/{BASE}")
    leaves = {k: v for k, v in tree.items()
              if not any(other.startswith(k + "/") for other in tree)}  # not a directory node
    assert {k: v for k, v in leaves.items() if not k.startswith(f"{plan.leave[0]}/")} == {
        k: v.encode() for k, v in plan.tree.items()}
    assert xs_server.nodes[left].value == b"another publisher"
