"""Dom0 hints, pure parts: vnode choice, libxl JSON, backend parsing, schema, reconciliation.

Every hostile-input case is a value a xenstore node or a file could hold: overlong, path
separators, ``..``, non-ASCII, huge counts.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from guestagent.dom0.backend import BackendDevice, parse_domid, parse_vdev, read_backend
from guestagent.dom0.hints import choose_vnode, compute_hints
from guestagent.dom0.reconcile import plan_domain
from guestagent.dom0.schema import (
    DeviceHint,
    base_path,
    desired_tree,
    device_key,
    parse_tree,
    perms,
)
from guestagent.dom0.toolstack import (
    GuestConfig,
    find_userdata,
    parse_domain_config,
    read_guest_config,
)
from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.xen.sysctl import PciAddress
from guestagent.xen.xs_wire import Permission
from tests.test_dom0_support import FIXTURE, backend_nodes, fixture_topology

A = PciAddress.parse
U5 = "4d1f6a8e-2b7c-4c3e-9a51-0f6b2d8e7c15"


class FakeXs:
    """Reads from a dict of absolute paths, answering ENOENT like xenstored."""

    def __init__(self, nodes: dict[str, bytes]) -> None:
        self.nodes = nodes

    def read(self, path: str) -> bytes:
        from guestagent.xen.xenstore import XenstoreError

        if path not in self.nodes:
            raise XenstoreError(errno.ENOENT, path, "XS_READ")
        return self.nodes[path]

    def directory(self, path: str) -> list[str]:
        from guestagent.xen.xenstore import XenstoreError

        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix) :].split("/")[0] for p in self.nodes if p.startswith(prefix)}
        if not names and path not in self.nodes:
            raise XenstoreError(errno.ENOENT, path, "XS_DIRECTORY")
        return sorted(names)


# --- vnode choice ------------------------------------------------------------------------------


def test_choose_vnode_sources() -> None:
    topo = fixture_topology()
    assert choose_vnode(1, [0, 1], topo) == (1, "pnode")
    assert choose_vnode(1, [0, 2], topo) == (1, "nearest")  # 21 to node 0, 17 to node 2
    assert choose_vnode(0, [2, 1], topo) == (1, "nearest")  # 31 vs 21
    assert choose_vnode(2, [], topo) == (0, "single")
    assert choose_vnode(None, [], topo) == (0, "single")
    assert choose_vnode(None, [0, 1], topo) == (None, "none")
    assert choose_vnode(1, [0, 0], topo) == (0, "nearest")  # tie: the lower vnode
    assert choose_vnode(1, [1, 1], topo) == (0, "pnode")


def test_compute_hints_from_fixture_configs() -> None:
    topo = fixture_topology()
    hostfs = HostFS(str(FIXTURE))
    config5 = read_guest_config(hostfs, 5, U5)
    assert config5 == GuestConfig(5, "hvm", [0, 1], config5.source if config5 else "")
    devices = [
        BackendDevice(0, A("0000:3b:00.0"), None, 0x28, 4),
        BackendDevice(1, A("0000:5e:00.0"), None, 0x30, 4),
        BackendDevice(2, A("0000:00:00.0"), None, 0x38, 4),
        BackendDevice(3, A("0000:af:00.0"), None, None, 4),
    ]
    hints = compute_hints(devices, config5, topo)
    assert hints == [
        DeviceHint(A("0000:3b:00.0"), A("0000:00:05.0"), 1, 1, "pnode"),
        DeviceHint(A("0000:5e:00.0"), A("0000:00:06.0"), 2, 1, "nearest"),
        DeviceHint(A("0000:00:00.0"), A("0000:00:07.0"), None, None, "none"),
        DeviceHint(A("0000:af:00.0"), None, None, None, "none"),
    ]


def test_pv_guest_uses_pciback_vdev_and_no_vnuma_is_vnode_0() -> None:
    xl_output = (FIXTURE / "xl-list-l-7.json").read_bytes()
    config = read_guest_config(HostFS(str(FIXTURE)), 7, None, xl=lambda domid: xl_output)
    assert config is not None and config.type == "pv" and config.vnode_pnodes == []
    device = BackendDevice(0, A("0000:00:02.0"), A("0000:00:00.0"), None, 4)
    assert compute_hints([device], config, fixture_topology()) == [
        DeviceHint(A("0000:00:02.0"), A("0000:00:00.0"), 0, 0, "single")
    ]


def test_unknown_toolstack_view_means_single_node() -> None:
    device = BackendDevice(0, A("0000:3b:00.1"), None, 0x28, None)
    [hint] = compute_hints([device], None, fixture_topology())
    assert (hint.host_node, hint.vnode, hint.vnode_source) == (1, 0, "single")
    assert hint.guest == A("0000:00:05.0")  # type unknown: vdev if any, else vdevfn


def test_vnode_on_a_node_the_host_lacks_is_refused() -> None:
    config = GuestConfig(5, "hvm", [0, 3], "test")
    with pytest.raises(InputError, match="vnode 1 is placed on pnode 3; the host has 3 nodes"):
        compute_hints([BackendDevice(0, A("0000:3b:00.0"), None, 8, 4)], config, fixture_topology())


# --- libxl JSON --------------------------------------------------------------------------------


def test_userdata_file_found_by_uuid_or_alone(tmp_path: Path) -> None:
    hostfs = HostFS(str(FIXTURE))
    assert find_userdata(hostfs, 5, U5) == f"/var/lib/xen/userdata-d.5.{U5}.libxl-json"
    assert find_userdata(hostfs, 5, None) == f"/var/lib/xen/userdata-d.5.{U5}.libxl-json"
    assert find_userdata(hostfs, 5, "00000000-0000-0000-0000-000000000000") is None
    assert find_userdata(hostfs, 7, None) is None
    assert read_guest_config(hostfs, 7, None) is None  # fixture root: no xl fallback
    # two files for one domid (a crash left one behind) are an error, not a guess
    d = tmp_path / "var/lib/xen"
    d.mkdir(parents=True)
    for uuid in (U5, "11111111-2222-4333-8444-555555555555"):
        (d / f"userdata-d.5.{uuid}.libxl-json").write_text("{}")
    (d / "userdata-d.55.x.libxl-json").write_text("{}")
    with pytest.raises(InputError, match="several libxl-json files"):
        find_userdata(HostFS(str(tmp_path)), 5, None)


@pytest.mark.parametrize(
    ("doc", "text"),
    [
        (b"not json", "not JSON"),
        (b"[" * 100000 + b"]" * 100000, "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'"a string"', "not a JSON object"),
        (b'{"b_info": []}', "c_info or b_info is not an object"),
        (b'{"c_info": {"type": "hvm/../x"}}', "c_info.type"),
        (b'{"b_info": {"vnuma_nodes": {"pnode": 1}}}', "vnuma_nodes"),
        (b'{"b_info": {"vnuma_nodes": [{"pnode": -1}]}}', r"vnuma_nodes\[0\].pnode"),
        (b'{"b_info": {"vnuma_nodes": [{"pnode": "1"}]}}', r"vnuma_nodes\[0\].pnode"),
        (b'{"b_info": {"vnuma_nodes": [{"pnode": true}]}}', r"vnuma_nodes\[0\].pnode"),
        (b'{"b_info": {"vnuma_nodes": [{"pnode": 99999}]}}', r"vnuma_nodes\[0\].pnode"),
        (b'{"b_info": {"vnuma_nodes": [{"pnode": 1.5}]}}', r"vnuma_nodes\[0\].pnode"),
        (b'{"b_info": {"vnuma_nodes": [7]}}', r"vnuma_nodes\[0\].pnode"),
        (json.dumps({"b_info": {"vnuma_nodes": [{}] * 65}}).encode(), "at most 64"),
        (b"[]", "exactly one entry for domain 5"),
        (b'[{"domid": 5, "config": {}}, {"domid": 5, "config": {}}]', "exactly one entry"),
        (b" " * (5 << 20), "larger than"),
    ],
)
def test_hostile_domain_config(doc: bytes, text: str) -> None:
    with pytest.raises(InputError, match=text) as caught:
        parse_domain_config(doc, 5, "cfg")
    assert "\n" not in str(caught.value)


def test_domain_config_shapes() -> None:
    assert parse_domain_config(b"{}\0", 5, "x") == GuestConfig(5, None, [], "x")
    xl = b'[{"domid": 4, "config": {}}, {"domid": 5, "config": {"c_info": {"type": "pvh"}}}]'
    assert parse_domain_config(xl, 5, "x").type == "pvh"
    missing_pnode = b'{"b_info": {"vnuma_nodes": [{"memkb": 1}, {"pnode": 2}]}}'
    assert parse_domain_config(missing_pnode, 5, "x").vnode_pnodes == [0, 2]


# --- backend entries ---------------------------------------------------------------------------


def test_backend_as_libxl_and_pciback_write_it() -> None:
    nodes = backend_nodes(
        5, [("0000:3b:00.0", "28", None), ("0000:5e:00.0", None, "0000:00:01.00")]
    )
    devices = read_backend(FakeXs(nodes), 5)
    assert devices == [
        BackendDevice(0, A("0000:3b:00.0"), None, 0x28, 4),
        BackendDevice(1, A("0000:5e:00.0"), A("0000:00:01.0"), None, 4),
    ]
    assert devices[0].vdevfn_address == A("0000:00:05.0")
    assert read_backend(FakeXs({}), 5) == []


def test_backend_skips_devices_being_removed_and_vanished_keys() -> None:
    nodes = backend_nodes(5, [("0000:3b:00.0", "28", None), ("0000:3b:00.1", "29", None)])
    nodes["/local/domain/0/backend/pci/5/0/state-0"] = b"5"  # libxl: Closing, then removes it
    del nodes["/local/domain/0/backend/pci/5/0/dev-1"]  # gone between num_devs and dev-1
    assert read_backend(FakeXs(nodes), 5) == []


BASE5 = "/local/domain/0/backend/pci/5/0"


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("num_devs", b"100000", "expected a count 0..256"),
        ("num_devs", b"-1", "expected a count"),
        ("num_devs", b"01", "expected a count"),
        ("num_devs", b"1 ", "expected a count"),
        ("num_devs", b"\xd9\xa1", "not printable ASCII"),  # Arabic-Indic digit one
        ("dev-0", b"../../../local/domain/0", "expected a PCI address"),
        ("dev-0", b"0000:3b:00.0/../x", "expected a PCI address"),
        ("dev-0", b"0000:3B:00.0", "expected a PCI address"),
        ("dev-0", b"0000:3b:00.0" + b"0" * 5000, "longer than 256 bytes"),
        ("dev-0", b"0000:3b:00.\xc3\xa9", "not printable ASCII"),
        ("dev-0", b"0000:3b:00.0\n", "not printable ASCII"),
        ("vdev-0", b"0000:00:01.08", "function above 7"),
        ("vdev-0", b"0000:00:20.0", "device above 0x1f"),
        ("vdev-0", b"..", "expected a PCI address"),
        ("vdevfn-0", b"100", "expected a devfn"),
        ("vdevfn-0", b"0x28", "expected a devfn"),
        ("state-0", b"44", "XenbusState"),
        ("frontend-id", b"6", "does not name domain 5"),
    ],
)
def test_hostile_backend_values(key: str, value: bytes, text: str) -> None:
    nodes = backend_nodes(5, [("0000:3b:00.0", "28", "0000:00:00.00")])
    nodes[f"{BASE5}/{key}"] = value
    with pytest.raises(InputError, match=text) as caught:
        read_backend(FakeXs(nodes), 5)
    assert "\n" not in str(caught.value)


def test_duplicate_device_refused() -> None:
    nodes = backend_nodes(5, [("0000:3b:00.0", "28", None), ("0000:3b:00.0", "30", None)])
    with pytest.raises(InputError, match="listed twice"):
        read_backend(FakeXs(nodes), 5)


@pytest.mark.parametrize(
    "text", ["0", "00", "007", "-1", "32752", "99999", "123456", "1/..", "..", "", "\u0661", "5 "]
)
def test_domid_parsing_is_strict(text: str) -> None:
    with pytest.raises(InputError):
        parse_domid(text, "x")


def test_domid_range() -> None:
    assert parse_domid("1", "x") == 1
    assert parse_domid("32751", "x") == 0x7FEF
    assert parse_vdev("0000:00:1f.07", "x") == A("0000:00:1f.7")


# --- schema ------------------------------------------------------------------------------------

HINTS = [
    DeviceHint(A("0000:3b:00.0"), A("0000:00:05.0"), 1, 1, "pnode"),
    DeviceHint(A("0000:af:00.0"), None, None, None, "none"),
]


def test_schema_tree_and_round_trip() -> None:
    tree = desired_tree(HINTS)
    assert tree == {
        "version": "1",
        "devices": "",
        "devices/0000-3b-00-0": "",
        "devices/0000-3b-00-0/host-bdf": "0000:3b:00.0",
        "devices/0000-3b-00-0/guest-bdf": "0000:00:05.0",
        "devices/0000-3b-00-0/host-node": "1",
        "devices/0000-3b-00-0/vnode": "1",
        "devices/0000-3b-00-0/vnode-source": "pnode",
        "devices/0000-af-00-0": "",
        "devices/0000-af-00-0/host-bdf": "0000:af:00.0",
        "devices/0000-af-00-0/host-node": "-1",
        "devices/0000-af-00-0/vnode": "-1",
        "devices/0000-af-00-0/vnode-source": "none",
    }
    assert parse_tree({k: v.encode() for k, v in tree.items()}) == HINTS
    assert desired_tree([]) == {} and parse_tree({}) == []
    assert base_path(5) == "/local/domain/5/guestagent-dom0"
    assert perms(5) == [Permission("n", 0), Permission("r", 5)]
    assert device_key(A("0001:ff:1f.7")) == "0001-ff-1f-7"


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"version": b"2"}, "expected schema version 1"),
        ({"devices/..": b""}, "not a BDF"),
        ({"devices/0000-3b-00-0/host-bdf": b"0000:3b:00.1"}, "does not match the device key"),
        ({"devices/0000-3b-00-0/host-node": b"1\xc2\xa0"}, "not ASCII"),
        ({"devices/0000-3b-00-0/vnode": b"007"}, "expected -1 or a node id"),
        ({"devices/0000-3b-00-0/vnode": b"-1"}, "contradicts vnode"),
        ({"devices/0000-3b-00-0/vnode-source": b"guess"}, "unknown"),
        ({"devices/0000-3b-00-0/guest-bdf": b"0000:00:05.0/.."}, "expected a PCI address"),
    ],
)
def test_schema_reader_is_strict(change: dict[str, bytes], text: str) -> None:
    tree = {k: v.encode() for k, v in desired_tree(HINTS).items()}
    tree.update(change)
    with pytest.raises(InputError, match=text):
        parse_tree(tree)


def test_schema_refuses_bad_domids() -> None:
    for domid in (0, -1, 0x7FF0, 0x7FF4):
        with pytest.raises(InputError):
            base_path(domid)


# --- reconciliation ----------------------------------------------------------------------------


def test_plan_domain() -> None:
    desired = desired_tree(HINTS[:1])
    good = perms(5)
    # nothing wanted, nothing there
    assert plan_domain(5, {}, None, None).empty
    # nothing wanted, a tree there: it goes
    assert plan_domain(5, {}, {"version": b"1"}, good).remove_base
    # first publication
    plan = plan_domain(5, desired, None, None)
    assert plan.create_base and not plan.remove_base and plan.changes.writes == desired
    # up to date
    present = {k: v.encode() for k, v in desired.items()}
    assert plan_domain(5, desired, present, good).empty
    # a device went away, another changed node
    present["devices/0000-af-00-0"] = b""
    present["devices/0000-af-00-0/vnode"] = b"0"
    present["devices/0000-3b-00-0/vnode"] = b"0"
    plan = plan_domain(5, desired, present, good)
    assert plan.changes.removes == ["devices/0000-af-00-0"]
    assert plan.changes.writes == {"devices/0000-3b-00-0/vnode": "1"}
    # a base the guest owns (or that others may write) is not trusted: rebuilt from scratch
    for wrong in ([Permission("n", 5)], [Permission("n", 0), Permission("b", 5)], []):
        plan = plan_domain(5, desired, present, wrong)
        assert plan.remove_base and plan.create_base and plan.changes.writes == desired
