"""The one versioned schema of the device hints Dom0 publishes into a guest's xenstore tree.

Where: ``/local/domain/<domid>/guestagent-dom0``. The guest's home node is owned by dom0 and
read-only for the guest (libxl's ``roperm``, reference 3.3), so the guest cannot create, change or
remove anything there; Dom0 sets the permissions of every node it writes explicitly to
``n0 r<domid>``: owner dom0, no access for other domains, read access for the guest. A guest must
not trust a node whose permissions say otherwise (``check_perms``). Nothing is ever written under
the guest-owned ``data/``.

Version 1 (keys relative to the base)::

    version                              "1"
    devices                              ""
    devices/<key>                        ""    one per passthrough device of the guest;
                                               <key> = the host BDF with ':' and '.' as '-'
                                               (libxl's PCI_BDF_XSPATH form): 0000-3b-00-0
    devices/<key>/host-bdf               "0000:3b:00.0"  the physical PCI function
    devices/<key>/guest-bdf              "0000:00:05.0"  where the guest sees it; absent while
                                               unknown (PV: pciback's vdev-N once pcifront
                                               connected; HVM: libxl's vdevfn-N on 0000:00)
    devices/<key>/host-node              "1"   Xen's node for the device (XEN_SYSCTL_pcitopoinfo);
                                               "-1" when Xen knows no node for it
    devices/<key>/vnode                  "0"   the guest's vnode for the device; "-1" if none
    devices/<key>/vnode-source           how the vnode was chosen:
                                         "pnode"   a vnode whose pnode is the device's node
                                         "nearest" no vnode sits on that node: the vnode whose
                                                   pnode is nearest by the host distance matrix
                                         "single"  the guest has no vNUMA: its only node, 0
                                         "none"    no vnode could be chosen (vnode is "-1")

Readers check ``version`` first and ignore keys they do not know; a change that is not purely
additive bumps the version. The tree is rewritten in one transaction, so a reader never sees half
of it, and removed as a whole when the guest has no passthrough device left.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from guestagent.errors import InputError
from guestagent.xen.hostids import MAX_NODES, PciAddress
from guestagent.xen.xs_wire import Permission

SCHEMA_VERSION = 1
BASE_NAME = "guestagent-dom0"
DOMID_MIN = 1
DOMID_MAX = 0x7FEF  # DOMID_FIRST_RESERVED - 1
VNODE_SOURCES = ("pnode", "nearest", "single", "none")
#: Most devices published for one guest: 7 nodes each stay inside xs_sync's 400-key bound (real
#: guests have a handful; pciback's bus could hold 256).
MAX_DEVICES = 48

_KEY_RE = re.compile(r"[0-9a-f]{4}-[0-9a-f]{2}-[0-9a-f]{2}-[0-7]")


def base_path(domid: int) -> str:
    check_domid(domid, "domid")
    return f"/local/domain/{domid}/{BASE_NAME}"


def check_domid(domid: int, source: str) -> int:
    if not DOMID_MIN <= domid <= DOMID_MAX:
        raise InputError(source, f"domain id outside {DOMID_MIN}..{DOMID_MAX}", domid)
    return domid


def perms(domid: int) -> list[Permission]:
    """Owner dom0 (no access for others), read for the guest."""
    return [Permission("n", 0), Permission("r", check_domid(domid, "domid"))]


def device_key(address: PciAddress) -> str:
    return f"{address.seg:04x}-{address.bus:02x}-{address.dev:02x}-{address.func:x}"


@dataclass(frozen=True)
class DeviceHint:
    """What Dom0 tells a guest about one of its passthrough devices."""

    host: PciAddress
    guest: PciAddress | None
    host_node: int | None
    vnode: int | None
    vnode_source: str

    def __post_init__(self) -> None:
        if self.vnode_source not in VNODE_SOURCES:
            raise ValueError(f"vnode source {self.vnode_source!r} not one of {VNODE_SOURCES}")
        if (self.vnode is None) != (self.vnode_source == "none"):
            raise ValueError("vnode is None exactly when the source is 'none'")


def desired_tree(hints: list[DeviceHint]) -> dict[str, str]:
    """The relative keys and values for one guest; empty when it has no device (tree removed)."""
    if not hints:
        return {}
    if len(hints) > MAX_DEVICES:
        raise InputError("device hints", f"more than {MAX_DEVICES} devices", len(hints))
    tree = {"version": str(SCHEMA_VERSION), "devices": ""}
    for hint in hints:
        key = f"devices/{device_key(hint.host)}"
        tree[key] = ""
        tree[f"{key}/host-bdf"] = str(hint.host)
        if hint.guest is not None:
            tree[f"{key}/guest-bdf"] = str(hint.guest)
        tree[f"{key}/host-node"] = "-1" if hint.host_node is None else str(hint.host_node)
        tree[f"{key}/vnode"] = "-1" if hint.vnode is None else str(hint.vnode)
        tree[f"{key}/vnode-source"] = hint.vnode_source
    return tree


# --- the reader's side (a guest, or the tests) -------------------------------------------------


def check_perms(path: str, node_perms: list[Permission], domid: int) -> None:
    """A published node must be owned by dom0 and grant the guest nothing but read."""
    if node_perms[:1] != [Permission("n", 0)] or Permission("r", domid) not in node_perms:
        shown = " ".join(p.to_wire() for p in node_perms)
        raise InputError(path, "not owned by dom0 with read access for this guest only", shown)


def _node_id(text: str, source: str) -> int | None:
    if text == "-1":
        return None
    if not re.fullmatch(r"0|[1-9][0-9]{0,2}", text) or int(text) >= MAX_NODES:
        raise InputError(source, f"expected -1 or a node id 0..{MAX_NODES - 1}", text)
    return int(text)


def _guest_address(text: str, source: str) -> PciAddress:
    return PciAddress.parse(text, source)


def _field(
    values: Mapping[str, bytes], key: str, name: str, where: str, required: bool = True
) -> str:
    raw = values.get(f"devices/{key}/{name}")
    if raw is None:
        if required:
            raise InputError(f"{where}/{name}", "missing")
        return ""
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"{where}/{name}", "not ASCII", raw) from None


def parse_tree(values: Mapping[str, bytes], source: str = BASE_NAME) -> list[DeviceHint]:
    """Read a published tree back (``{relative key: value}``, e.g. from ``xs_sync.read_tree``).

    Strict: an unknown version, a malformed value or a key that does not match its host BDF is an
    InputError; unknown extra keys are ignored (additive changes keep the version).
    """
    if not values:
        return []
    version = values.get("version")
    if version != str(SCHEMA_VERSION).encode():
        raise InputError(f"{source}/version", f"expected schema version {SCHEMA_VERSION}", version)
    keys = sorted({k.split("/")[1] for k in values if k.startswith("devices/")})
    if len(keys) > MAX_DEVICES:
        raise InputError(f"{source}/devices", f"more than {MAX_DEVICES} devices", len(keys))
    hints: list[DeviceHint] = []
    for key in keys:
        where = f"{source}/devices/{key}"
        if not _KEY_RE.fullmatch(key):
            raise InputError(where, "device key is not a BDF in DDDD-BB-DD-F form", key)

        host = PciAddress.parse(_field(values, key, "host-bdf", where), f"{where}/host-bdf")
        if device_key(host) != key:
            raise InputError(f"{where}/host-bdf", "does not match the device key", str(host))
        guest_text = _field(values, key, "guest-bdf", where, required=False)
        guest = None if not guest_text else _guest_address(guest_text, f"{where}/guest-bdf")
        host_node = _node_id(_field(values, key, "host-node", where), f"{where}/host-node")
        vnode = _node_id(_field(values, key, "vnode", where), f"{where}/vnode")
        source_text = _field(values, key, "vnode-source", where)
        if source_text not in VNODE_SOURCES or (vnode is None) != (source_text == "none"):
            raise InputError(f"{where}/vnode-source", "unknown, or contradicts vnode", source_text)
        hints.append(DeviceHint(host, guest, host_node, vnode, source_text))
    return hints
