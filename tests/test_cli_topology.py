"""``guestagent topology [--json]`` on every fixture tree, with fake and real hypercalls."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from guestagent import cli
from guestagent.host import Host
from guestagent.hostfs import ROOT_ENV, HostFS
from guestagent.xen.errors import NotOnXen, NoVnuma, PrivcmdRestricted
from guestagent.xen.vnuma import VnumaInfo
from tests.fixtures.loader import (
    NODE,
    TREES,
    answering,
    copy_tree,
    has_vnumainfo,
    must_not_call,
    raising,
    tree,
    vnumainfo,
)

XEN_TREES = [t for t in TREES if has_vnumainfo(t)]
BARE_TREES = [t for t in TREES if not has_vnumainfo(t)]


@pytest.fixture
def hypercall(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], VnumaInfo]], None]:
    """``hypercall(fake)``: the command's host answers with ``fake`` instead of privcmd."""

    def use(fake: Callable[[], VnumaInfo]) -> None:
        monkeypatch.setattr(sys.modules[__name__], "MAKE_HOST",
                            lambda hostfs: Host(hostfs, open_vnuma=lambda _fs: fake))

    return use


#: How cli.main makes the host handle in these tests (the real one unless a test says).
MAKE_HOST: Callable[[HostFS], Host] | None = None


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv), make_host=MAKE_HOST)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(
    capsys: pytest.CaptureFixture[str], root: Path, expect: int = 0
) -> dict[str, Any]:
    code, out, err = run(capsys, "--root", str(root), "topology", "--json")
    assert code == expect, err
    data: dict[str, Any] = json.loads(out)
    return data


@pytest.mark.parametrize("name", TREES)
def test_every_fixture_json(
    name: str, capsys: pytest.CaptureFixture[str], hypercall: Any
) -> None:
    hypercall(answering(vnumainfo(name)) if has_vnumainfo(name) else must_not_call)
    # The PV fixture's 2 vnodes against Linux's 1 node is a disagreement: exit 4 (EXIT_DISAGREE).
    data = run_json(capsys, tree(name), expect=4 if name == "pv-guest" else 0)
    assert data["sources"] == (["hypercall", "sysfs"] if has_vnumainfo(name) else ["sysfs"])
    assert data["hypervisor"] == ("xen" if has_vnumainfo(name) else "none")
    ids = [n["id"] for n in data["nodes"]]
    assert ids == sorted(ids) and ids
    for node in data["nodes"]:
        assert set(node) >= {"id", "cpus", "memory_bytes", "distances"}
        assert all(isinstance(k, str) for k in node["distances"])
    assert data["errors"] == []
    if name != "pv-guest":
        assert data["mismatches"] == []


@pytest.mark.parametrize("name", TREES)
def test_every_fixture_table(name: str, capsys: pytest.CaptureFixture[str], hypercall: Any) -> None:
    hypercall(answering(vnumainfo(name)) if has_vnumainfo(name) else must_not_call)
    code, out, err = run(capsys, "--root", str(tree(name)), "topology")
    assert code == (4 if name == "pv-guest" else 0) and err == ""
    assert "Linux view (sysfs):" in out and "distances:" in out
    if has_vnumainfo(name):
        assert "hypercall: ok" in out and "Xen view (XENMEM_get_vnumainfo" in out
        assert "mismatches:" in out
    else:
        assert "no hypervisor found: showing the Linux view only" in out


def test_four_node_sparse_json(capsys: pytest.CaptureFixture[str], hypercall: Any) -> None:
    hypercall(must_not_call)
    data = run_json(capsys, tree("four-node-sparse"))
    nodes = {n["id"]: n for n in data["nodes"]}
    assert list(nodes) == [0, 1, 4, 6]
    assert nodes[4]["memory_bytes"] == 0 and nodes[4]["has_memory"] is False
    assert nodes[6]["cpus"] == [] and nodes[6]["has_cpu"] is False
    assert nodes[0]["distances"]["6"] == 22 and nodes[6]["distances"]["0"] == 24
    assert data["hypercall"] is None
    assert data["hypercall_status"] == "not attempted: no hypervisor found"


def test_four_node_sparse_table(capsys: pytest.CaptureFixture[str], hypercall: Any) -> None:
    hypercall(must_not_call)
    code, out, _ = run(capsys, "--root", str(tree("four-node-sparse")), "topology")
    assert code == 0
    lines = out.splitlines()
    assert "     4  16-23           0  (no memory)" in lines
    assert "     6      -       64512" in lines
    assert "    node   0   1   4   6" in lines
    assert "       6  24  16  28  10" in lines


def test_pv_guest_table_names_the_mismatch(
    capsys: pytest.CaptureFixture[str], hypercall: Any
) -> None:
    hypercall(answering(vnumainfo("pv-guest")))
    code, out, _ = run(capsys, "--root", str(tree("pv-guest")), "topology")
    assert code == 4  # both views read, and they disagree
    assert "hypervisor: xen (PV guest)" in out
    assert (
        "  - Xen reports 2 vnodes but Linux sees 1 node: PV guests get no NUMA view "
        "(Linux disables SRAT for PV)"
    ) in out.splitlines()


def test_restricted_privcmd_status_line(capsys: pytest.CaptureFixture[str], hypercall: Any) -> None:
    hypercall(raising(PrivcmdRestricted(" (XENMEM_get_vnumainfo answered EPERM)")))
    code, out, err = run(capsys, "--root", str(tree("hvm-3vnode")), "topology")
    assert code == 0 and err == ""
    status = [line for line in out.splitlines() if line.startswith("hypercall: ")]
    assert len(status) == 1
    assert status[0].startswith("hypercall: privcmd restricted: the guest kernel blocks")
    assert "unrestricted=1" in status[0]
    assert "Xen view" not in out and "mismatches" not in out


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NoVnuma("no vNUMA: Xen has no virtual NUMA topology for this domain"),
         "no vNUMA: Xen has no virtual NUMA topology for this domain"),
        (NotOnXen("no /dev/xen/privcmd"), "not on Xen: no /dev/xen/privcmd"),
    ],
)
def test_unavailable_status_in_json(
    error: Exception, status: str, capsys: pytest.CaptureFixture[str], hypercall: Any
) -> None:
    hypercall(raising(error))
    data = run_json(capsys, tree("hvm-2vnode"))
    assert data["hypercall_status"] == status
    assert data["hypercall"] is None and data["sources"] == ["sysfs"]


def test_real_hypercall_on_a_fixture_never_crashes(capsys: pytest.CaptureFixture[str]) -> None:
    # /dev/xen/privcmd in the fixture is a plain empty file: the real path must fail cleanly.
    data = run_json(capsys, tree("hvm-2vnode"))
    assert data["hypercall"] is None
    assert data["hypercall_status"].startswith(
        (
            "hypercall failed: ",
            "C extension not built",
            "privcmd restricted: ",
            "not on Xen: ",
            "Xen unavailable: ",
        )
    )


def test_missing_c_extension_is_a_status_not_a_crash(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "guestagent.xen.privcmd", None)
    data = run_json(capsys, tree("hvm-2vnode"))
    assert data["hypercall_status"].startswith("C extension not built")


def test_guestagent_root_env_is_honoured(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, hypercall: Any
) -> None:
    hypercall(must_not_call)
    monkeypatch.setenv(ROOT_ENV, str(tree("four-node-sparse")))
    code, out, _ = run(capsys, "topology", "--json")
    assert code == 0
    assert [n["id"] for n in json.loads(out)["nodes"]] == [0, 1, 4, 6]
    # --root wins over the environment
    code, out, _ = run(capsys, "--root", str(tree("two-socket")), "topology", "--json")
    assert [n["id"] for n in json.loads(out)["nodes"]] == [0, 1]


def test_the_hypercall_opener_gets_the_hostfs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[HostFS] = []

    def factory(hostfs: HostFS) -> Callable[[], VnumaInfo]:
        seen.append(hostfs)
        return answering(vnumainfo("hvm-2vnode"))

    monkeypatch.setattr(sys.modules[__name__], "MAKE_HOST",
                        lambda hostfs: Host(hostfs, open_vnuma=factory))
    run_json(capsys, tree("hvm-2vnode"))
    assert seen[0].root == tree("hvm-2vnode")


# --- bad input: one line, never a traceback ---------------------------------------------------


FATAL = [
    (f"{NODE}/node1/cpulist", b"", "node1/cpulist: is empty"),
    (
        f"{NODE}/node1/cpulist",
        b"0-\n",
        "node1/cpulist: expected a CPU list like 0-3,8 (got '0-\\n')",
    ),
    (
        f"{NODE}/node1/meminfo",
        b"Node 1 MemTotal:       25",
        "node1/meminfo line 1: MemTotal has no unit",
    ),
    (f"{NODE}/node1/meminfo", b"\x7fELF\x02\x01\x01\xff\x00", "node1/meminfo: not ASCII text"),
]


@pytest.mark.parametrize(("rel", "data", "expected"), FATAL)
def test_fatal_garbage_one_line_exit_1(
    rel: str, data: bytes, expected: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], hypercall: Any,
) -> None:
    root = copy_tree("hvm-2vnode", tmp_path)
    (root / rel).write_bytes(data)
    hypercall(raising(PrivcmdRestricted("")))
    code, out, err = run(capsys, "--root", str(root), "topology", "--json")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("guestagent: topology: cannot be read: /sys/devices/system/node/")
    assert expected in err
    assert "hypercall: privcmd restricted" in err


def test_missing_node_directory_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hypercall: Any
) -> None:
    root = copy_tree("two-socket", tmp_path)
    for f in (root / NODE / "node1").iterdir():
        f.unlink()
    (root / NODE / "node1").rmdir()
    hypercall(must_not_call)
    code, out, err = run(capsys, "--root", str(root), "topology")
    assert code == 1 and out == ""
    assert err == (
        "guestagent: topology: cannot be read: /sys/devices/system/node/node1: listed in "
        "/sys/devices/system/node/online but the directory is missing; hypercall: not "
        "attempted: no hypervisor found\n"
    )


def test_empty_root_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--root", str(tmp_path), "topology", "--json")
    assert code == 1 and out == ""
    assert err == (
        f"guestagent: topology: cannot be read: {tmp_path}/sys/devices/system/cpu/online: does "
        "not exist; "
        "hypercall: not attempted: no hypervisor found\n"
    )


def test_garbage_distance_answers_with_an_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hypercall: Any
) -> None:
    root = copy_tree("hvm-2vnode", tmp_path)
    (root / NODE / "node1/distance").write_text("20 ten\n")
    hypercall(answering(vnumainfo("hvm-2vnode")))
    code, out, err = run(capsys, "--root", str(root), "topology", "--json")
    assert code == 0
    data = json.loads(out)
    line = (
        "/sys/devices/system/node/node1/distance: expected an integer (got 'ten'); "
        "distances of node 1 unknown"
    )
    assert data["errors"] == [line]
    assert data["nodes"][1]["distances"] == {}
    assert data["mismatches"] == []
    assert err == f"guestagent: warning: {line}\n"
    # the table shows the unknown row as '?' and lists the error
    code, out, err = run(capsys, "--root", str(root), "topology")
    assert code == 0 and err == ""
    assert "       1   ?   ?" in out.splitlines()
    assert f"  - {line}" in out.splitlines()


def test_sysfs_unreadable_hypercall_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hypercall: Any
) -> None:
    root = copy_tree("hvm-3vnode", tmp_path)
    (root / NODE / "node2/cpulist").write_bytes(b"3-\n")
    hypercall(answering(vnumainfo("hvm-3vnode")))
    code, out, err = run(capsys, "--root", str(root), "topology", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["sources"] == ["hypercall"] and data["nodes_from"] == "hypercall"
    assert [n["cpus"] for n in data["nodes"]] == [[0, 1], [2], [3]]
    assert err.startswith("guestagent: warning: /sys/devices/system/node/node2/cpulist:")
    code, out, _ = run(capsys, "--root", str(root), "topology")
    assert "Nodes (from the hypercall: sysfs unreadable):" in out


def test_no_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2 and "topology" in err
