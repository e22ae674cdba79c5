"""The Dom0 publisher against the wire-protocol xenstore server (tests/xenstore_server.py).

Dom0 connects as domain 0; the backend entries are laid out as libxl and pciback write them
(perms ``n0 r<domid>``). Checked: keys, values and permissions of the published tree, that the
guest can read and not write it, removal when a device or the domain goes away, and hostile
values. Following the watches is the daemon's Dom0 job: tests/test_dom0_job.py.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent.dom0.publisher import Publisher, domid_of_backend_path
from guestagent.dom0.schema import base_path, parse_tree
from guestagent.dom0.toolstack import GuestConfig
from guestagent.dom0.topology import HostTopology
from guestagent.hostfs import HostFS
from guestagent.xen.sysctl import PciAddress
from guestagent.xen.xenstore import XenstoreError
from guestagent.xen.xs_sync import read_tree
from tests.test_dom0_support import FIXTURE, backend_nodes, fixture_topology
from tests.xenstore_server import XenstoreServer

A = PciAddress.parse
BASE5 = base_path(5)
CONFIGS = {
    5: GuestConfig(5, "hvm", [0, 1], "test"),
    6: GuestConfig(6, "pv", [], "test"),
}


def add_backend(server: XenstoreServer, domid: int, devices: list[Any]) -> None:
    ro = [("n", 0), ("r", domid)]
    for path, value in backend_nodes(domid, devices).items():
        server.set_node(path, value, ro)


def remove_node(server: XenstoreServer, path: str) -> None:
    """As dom0 would (xs_rm): the node and its subtree go, watches fire."""
    with server.lock:
        for key in [k for k in server.nodes if k == path or k.startswith(path + "/")]:
            del server.nodes[key]
        parent = server.nodes[path.rsplit("/", 1)[0]]
        parent.children.remove(path.rsplit("/", 1)[1])
        server._commit_change([(path, True)])


class Calls:
    def __init__(self) -> None:
        self.topology = 0

    def read_topology(self, extra: Any) -> HostTopology:
        self.topology += 1
        return fixture_topology()


def make_publisher(client: Any, calls: Calls | None = None) -> Publisher:
    calls = calls or Calls()
    return Publisher(client, HostFS(str(FIXTURE)), calls.read_topology, CONFIGS.get)


def values(server: XenstoreServer, base: str) -> dict[str, bytes]:
    with server.lock:
        return {
            k[len(base) + 1 :]: n.value for k, n in server.nodes.items() if k.startswith(base + "/")
        }


@pytest.fixture
def host(xs_server: XenstoreServer) -> XenstoreServer:
    """Guest 5 (HVM, vnodes on pnodes 0 and 1) with two devices; guest 6 (PV) with one."""
    xs_server.populate_guest(6)
    add_backend(xs_server, 5, [("0000:3b:00.0", "28", None), ("0000:5e:00.0", "30", None)])
    add_backend(xs_server, 6, [("0000:00:02.0", None, "0000:00:00.00")])
    return xs_server


def test_publish_writes_schema_with_guest_read_only_perms(
    host: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    results = make_publisher(xs_connect(0)).publish_all()
    assert [(r.domid, r.error, len(r.hints)) for r in results] == [(5, None, 2), (6, None, 1)]
    tree5 = values(host, BASE5)
    assert tree5["version"] == b"1"
    assert tree5["devices/0000-3b-00-0/host-bdf"] == b"0000:3b:00.0"
    assert tree5["devices/0000-3b-00-0/guest-bdf"] == b"0000:00:05.0"
    assert tree5["devices/0000-3b-00-0/host-node"] == b"1"
    assert tree5["devices/0000-3b-00-0/vnode"] == b"1"
    assert tree5["devices/0000-5e-00-0/vnode-source"] == b"nearest"
    assert [h.vnode for h in parse_tree(tree5)] == [1, 1]
    tree6 = values(host, base_path(6))
    assert tree6["devices/0000-00-02-0/guest-bdf"] == b"0000:00:00.0"
    assert tree6["devices/0000-00-02-0/vnode-source"] == b"single"
    with host.lock:
        for path, node in host.nodes.items():
            if path == BASE5 or path.startswith(BASE5 + "/"):
                assert node.perms == [("n", 0), ("r", 5)], path
            if path.startswith(base_path(6)):
                assert node.perms == [("n", 0), ("r", 6)], path
    # a second pass changes nothing
    again = make_publisher(xs_connect(0)).publish_all()
    assert all(r.plan is not None and r.plan.empty for r in again)


def test_guest_reads_but_cannot_write_or_remove(
    host: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    make_publisher(xs_connect(0)).publish_all()
    guest = xs_connect(5)
    assert parse_tree(read_tree(guest, "guestagent-dom0"))[0].host == A("0000:3b:00.0")
    for attempt in (
        lambda: guest.write("guestagent-dom0/devices/0000-3b-00-0/vnode", "0"),
        lambda: guest.write("guestagent-dom0/devices/0000-3b-00-0/extra", "x"),
        lambda: guest.rm("guestagent-dom0"),
        lambda: guest.write("guestagent-dom0/version", "2"),
    ):
        with pytest.raises(XenstoreError) as caught:
            attempt()
        assert caught.value.name == "EACCES"
    # another guest sees nothing of guest 5's hints
    other = xs_connect(6)
    with pytest.raises(XenstoreError, match="EACCES"):
        other.read(f"{BASE5}/version")


def test_device_removed_then_domain_released(
    host: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    publisher = make_publisher(xs_connect(0))
    publisher.publish_all()
    # libxl removes dev-1 (state-1 Closing, keys removed, num_devs decremented)
    be = "/local/domain/0/backend/pci/5/0"
    for key in ("state-1", "key-1", "dev-1", "opts-1", "vdevfn-1"):
        remove_node(host, f"{be}/{key}")
    host.set_node(f"{be}/num_devs", b"1")
    [result] = [r for r in publisher.publish_all() if r.domid == 5]
    assert result.plan is not None and result.plan.changes.removes == ["devices/0000-5e-00-0"]
    assert "devices/0000-5e-00-0/host-bdf" not in values(host, BASE5)
    # the last device goes: libxl destroys the backend, the whole tree goes
    remove_node(host, "/local/domain/0/backend/pci/5")
    publisher.publish_all()
    assert host.get_node(BASE5) is None
    assert host.get_node("/local/domain/5/name") is not None  # nothing else touched
    # the domain is gone: its home is removed and nothing re-creates it
    remove_node(host, "/local/domain/5")
    add_backend(host, 5, [("0000:3b:00.0", "28", None)])  # a stale backend left behind
    assert all(r.domid != 5 for r in publisher.publish_all())
    assert publisher.publish_domain(5).plan is None
    assert host.get_node("/local/domain/5") is None


def test_hostile_base_owned_by_the_guest_is_replaced(
    host: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    # Somehow the guest owns a node at our path (an old toolstack bug, say), with its own keys.
    host.set_node(BASE5, b"", [("b", 5)])
    host.set_node(f"{BASE5}/devices/0000-3b-00-0/vnode", b"0", [("b", 5)])
    host.set_node(f"{BASE5}/planted", b"x", [("b", 5)])
    make_publisher(xs_connect(0)).publish_all()
    tree = values(host, BASE5)
    assert "planted" not in tree and tree["devices/0000-3b-00-0/vnode"] == b"1"
    with host.lock:
        assert all(
            n.perms == [("n", 0), ("r", 5)] for k, n in host.nodes.items() if k.startswith(BASE5)
        )


def test_hostile_backend_gets_no_hints_and_spares_other_guests(
    host: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    publisher = make_publisher(xs_connect(0))
    publisher.publish_all()
    host.set_node("/local/domain/0/backend/pci/5/0/num_devs", b"4294967296")
    host.set_node("/local/domain/0/backend/pci/not-a-domid", b"x")
    host.set_node("/local/domain/0/backend/pci/0123", b"x")
    results = {r.domid: r for r in publisher.publish_all()}
    assert results[5].error is not None and "num_devs" in results[5].error
    assert host.get_node(BASE5) is None  # wrong hints are worse than none
    assert results[6].error is None and values(host, base_path(6))["version"] == b"1"
    assert any("0123" in p for p in publisher.problems)


def test_backend_event_paths() -> None:
    assert domid_of_backend_path("/local/domain/0/backend/pci/5/0/num_devs") == 5
    assert domid_of_backend_path("/local/domain/0/backend/pci") is None
    assert domid_of_backend_path("/local/domain/0/backend/pci/0") is None
    assert domid_of_backend_path("/local/domain/0/backend/pci/05/0") is None
    assert domid_of_backend_path("/local/domain/0/backend/vif/5/0") is None
