"""``guestagent host topology`` and ``guestagent dom0 publish`` end to end through the CLI, with
the simulated Xen of tests/test_sysctl.py (real buffers, real C doorway) on the fixture host and
the xenstore test server."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent import cli
from guestagent.dom0.schema import base_path
from guestagent.host import Host, real_xenstore
from guestagent.hostfs import HostFS
from guestagent.xen.sysctl import Sysctl
from tests.test_dom0_support import CPUS, DISTANCES, FIXTURE, GIB, PCI_NODES, backend_nodes
from tests.test_sysctl import Host as XenHost
from tests.test_sysctl import SysctlXen
from tests.xenstore_server import XenstoreServer

FIXTURE_HOST = XenHost(
    memory=[(16 * GIB, 12 * GIB), (16 * GIB, 15 * GIB), None],
    distances=[[d if 2 not in (i, j) else None for j, d in enumerate(row)]
               for i, row in enumerate(DISTANCES)],
    cpus=[*[(c, s, n) for c, s, n in CPUS[:4]], None, None],
    pci={k: v if v != 2 else None for k, v in PCI_NODES.items()},
)


class FakeXen(list[SysctlXen]):
    """The Xen of these tests: every simulated Xen it made (one per sysctl opened) and how
    xenstore opens; :meth:`host` is the host handle the command gets (nothing swapped in a
    module)."""

    def __init__(self) -> None:
        super().__init__()
        self.xenstore: Callable[[HostFS], Any] = real_xenstore

    @contextmanager
    def sysctl(self, hostfs: HostFS) -> Iterator[Sysctl]:
        xen = SysctlXen(host=FIXTURE_HOST)
        self.append(xen)
        yield Sysctl(xen)

    def host(self, hostfs: HostFS) -> Host:
        return Host(hostfs, open_sysctl=self.sysctl, open_xenstore=lambda fs: self.xenstore(fs))


#: How cli.main makes the host handle in these tests (fake_xen's).
MAKE_HOST: Callable[[HostFS], Host] | None = None


@pytest.fixture
def fake_xen(monkeypatch: pytest.MonkeyPatch) -> FakeXen:
    xen = FakeXen()
    monkeypatch.setattr(sys.modules[__name__], "MAKE_HOST", xen.host)
    assert "guestagent.dom0.commands" in cli.COMMAND_MODULES
    return xen


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv, make_host=MAKE_HOST)
    out, err = capsys.readouterr()
    return code, out, err


def test_host_topology_table_like_xl_info_n(
    fake_xen: FakeXen, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["--root", str(FIXTURE), "host", "topology"], capsys)
    assert code == 0, err
    assert "host topology (xen 4.17, sysctl interface 0x15)" in out
    assert "node:    memsize    memfree    distances\n" in out
    assert "   0:     16384      12288      10,21,-\n" in out
    assert "   2:    offline          -      -,-,-\n" in out
    assert "cpu:    core    socket     node\n  0:       0        0        0\n" in out
    assert "  4:" not in out  # not present
    assert "device           node\n0000:00:02.0      0\n0000:3b:00.0      1\n" in out
    assert "without a node (2): 0000:00:00.0 0000:5e:00.0" in out
    assert "unknown to Xen (1): 0000:af:00.0" in out
    assert fake_xen[0].calls[-1] == "physinfo"


def test_host_topology_json(
    fake_xen: FakeXen, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["--root", str(FIXTURE), "host", "topology", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["xen"] == "4.17" and doc["sysctl_interface_version"] == 0x15
    assert doc["nodes"][2] == {
        "id": 2, "online": False, "memsize_bytes": None, "memfree_bytes": None,
        "distances": [None, None, None],
    }
    assert doc["nodes"][0]["memfree_bytes"] == 12 * GIB
    assert {"bdf": "0000:3b:00.1", "known_to_xen": True, "node": 1} in doc["devices"]
    assert {"bdf": "0000:af:00.0", "known_to_xen": False, "node": None} in doc["devices"]
    assert [c["id"] for c in doc["cpus"]] == [0, 1, 2, 3]
    assert doc["physinfo"]["nr_cpus"] == 4 and doc["problems"] == []


def test_not_dom0_is_one_line_unless_role_given(
    fake_xen: FakeXen, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "proc/xen").mkdir(parents=True)
    (tmp_path / "proc/xen/capabilities").write_text("\n")
    code, out, err = run(["--root", str(tmp_path), "host", "topology"], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "not Dom0" in err and "Xen guest (domU)" in err
    assert "--role dom0" not in err  # in a domU Xen would refuse the sysctls: no use advising it
    code, out, err = run(["--root", str(tmp_path), "host", "topology", "--role", "dom0"], capsys)
    assert code == 0
    assert "No device topology data available" in out
    assert "/sys/bus/pci/devices: does not exist" in out  # no sysfs there: reported, not fatal


def test_odd_sysfs_entries_are_reported(
    fake_xen: FakeXen, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "proc/xen").mkdir(parents=True)
    (tmp_path / "proc/xen/capabilities").write_text("control_d\n")
    for name in ("0000:3b:00.0", "0000:3b:00.0..", "junk"):
        (tmp_path / "sys/bus/pci/devices" / name).mkdir(parents=True)
    code, out, err = run(["--root", str(tmp_path), "host", "topology", "--json"], capsys)
    assert code == 0
    assert len(json.loads(out)["problems"]) == 2
    assert err.count("warning") == 2


def test_dom0_publish_json(
    fake_xen: FakeXen,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    xs_server: XenstoreServer,
    xs_connect: Callable[[int], Any],
) -> None:
    for path, value in backend_nodes(5, [("0000:3b:00.0", "28", None)]).items():
        xs_server.set_node(path, value, [("n", 0), ("r", 5)])
    xs_server.set_node("/local/domain/5/vm", b"/vm/4d1f6a8e-2b7c-4c3e-9a51-0f6b2d8e7c15")
    fake_xen.xenstore = lambda hostfs: xs_connect(0)
    code, out, err = run(["--root", str(FIXTURE), "dom0", "publish", "--json"], capsys)
    assert code == 0, err
    [result] = json.loads(out)
    assert result["domid"] == 5 and result["changed"] and result["path"] == base_path(5)
    # vnodes of domain 5 (from its libxl-json in the fixture) are on pnodes 0 and 1
    assert result["devices"] == [
        {"host_bdf": "0000:3b:00.0", "guest_bdf": "0000:00:05.0", "host_node": 1, "vnode": 1,
         "vnode_source": "pnode"}
    ]
    node = xs_server.get_node(f"{base_path(5)}/devices/0000-3b-00-0/vnode")
    assert node is not None and node.value == b"1" and node.perms == [("n", 0), ("r", 5)]
    code, out, _ = run(["--root", str(FIXTURE), "dom0", "publish"], capsys)
    assert code == 0
    assert "dom5: /local/domain/5/guestagent-dom0 (unchanged)" in out
    assert "0000:3b:00.0 (guest 0000:00:05.0): host node 1, vnode 1 (pnode)" in out


def test_dom0_run_is_the_daemon_with_the_dom0_job_alone(
    fake_xen: FakeXen,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    xs_server: XenstoreServer,
    xs_connect: Callable[[int], Any],
    tmp_path: Path,
) -> None:
    """``dom0 run --duration`` is the daemon with the Dom0 job alone: it publishes at start,
    serves its status socket, and after the duration shuts down as on SIGTERM (the hints stay:
    they describe the hardware; its watches go with its connection)."""
    from guestagent.daemon.service import read_status

    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root, symlinks=True)
    (tmp_path / "conf.d").mkdir()
    for path, value in backend_nodes(5, [("0000:3b:00.0", "28", None)]).items():
        xs_server.set_node(path, value, [("n", 0), ("r", 5)])
    xs_server.set_node("/local/domain/5/vm", b"/vm/4d1f6a8e-2b7c-4c3e-9a51-0f6b2d8e7c15")
    fake_xen.xenstore = lambda hostfs: xs_connect(0)
    seen: dict[str, Any] = {}

    def look() -> None:  # from another thread while the daemon's loop serves
        seen["status"] = read_status(str(root / "run/guestagent"))
        seen["watched"] = {w.path for c in xs_server.connections for w in c.watches}

    probe = threading.Timer(0.5, look)
    probe.start()
    try:
        code, _, err = run(["--root", str(root), "--log-level", "info", "dom0", "run",
                            "--role", "dom0", "--resync", "30", "--duration", "1.5",
                            "--conf-dir", str(tmp_path / "conf.d")], capsys)
    finally:
        probe.cancel()
    assert code == 0, err
    assert "event=dom0_hints_published" in err and "level=error" not in err, err
    assert 'event=stopping component=daemon reason="--duration 1.5 s elapsed"' in err, err
    status = seen["status"]
    assert status["role"] == "dom0" and list(status["jobs"]) == ["dom0"], status
    assert status["jobs"]["dom0"]["guests"] == [{"domid": 5, "devices": 1,
                                                  "remote_devices": 0, "error": None}]
    assert {"@introduceDomain", "@releaseDomain"} <= seen["watched"]
    node = xs_server.get_node(f"{base_path(5)}/devices/0000-3b-00-0/vnode")
    assert node is not None and node.value == b"1"  # the hints stay
    deadline = time.monotonic() + 10  # the server drops a closed connection in its own thread
    while {w.path for c in xs_server.connections for w in c.watches} & {"@releaseDomain"}:
        assert time.monotonic() < deadline, "the daemon's watches outlived it"
        time.sleep(0.05)
    assert not (root / "run/guestagent/status.sock").exists()


def test_dom0_run_without_xenstore_exits_1_with_the_reason(
    fake_xen: FakeXen, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from guestagent.xen.errors import XenUnavailable

    def no_xenstore(hostfs: HostFS) -> Any:
        raise XenUnavailable("no xenstore here")

    fake_xen.xenstore = no_xenstore
    (tmp_path / "root").mkdir()
    (tmp_path / "conf.d").mkdir()
    code, _, err = run(["--root", str(tmp_path / "root"), "dom0", "run", "--role", "dom0",
                        "--conf-dir", str(tmp_path / "conf.d")], capsys)
    assert code == 1
    assert err.splitlines()[-1] == "guestagent: no xenstore: no xenstore here", err
