"""A guest's passthrough devices, from the PCI backend entries in xenstore.

What writes them (verified in Xen's ``tools/libs/light/libxl_pci.c`` and Linux's
``drivers/xen/xen-pciback/xenbus.c``):

* libxl, in a transaction, under ``/local/domain/0/backend/pci/<domid>/0`` (perms ``n0 r<domid>``:
  the guest can read, not write): ``frontend-id``, ``num_devs`` (decimal), and per device N
  ``dev-N`` and ``key-N`` = the host BDF ``%04x:%02x:%02x.%01x``, ``vdevfn-N`` = the guest's
  devfn on bus 0 in ``%x`` (HVM: from QEMU's ``query-pci``; only when non-zero), ``opts-N``,
  ``state-N`` (XenbusState; Closing (5) while libxl removes the device), and ``name-N``.
  Removal deletes the device's keys and renumbers the later ones.
* Dom0's xen-pciback, once a PV guest's pcifront connected, writes ``vdev-N`` =
  ``%04x:%02x:%02x.%02x`` (the function in two digits, "the PV protocol uses %02x"), the
  device's address on the guest's virtual bus, plus ``root-N``/``root_num``.
* The frontend side ``/local/domain/<domid>/device/pci/0`` belongs to the guest and is hostile; it
  is never read here.

Even the Dom0-written values are parsed strictly (size, character set, ranges): a value that
does not parse makes the whole domain's entry an InputError, and no path is ever built from a
value read here.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Protocol

from guestagent.dom0.schema import DOMID_MAX, DOMID_MIN
from guestagent.errors import InputError
from guestagent.xen.sysctl import PciAddress

BACKEND_ROOT = "/local/domain/0/backend/pci"
#: No value in a backend entry is longer than this ("msitranslate=..." options are the longest).
MAX_VALUE_BYTES = 256
#: pciback's virtual bus: 32 slots of 8 functions.
MAX_BACKEND_DEVICES = 256
#: A domain count far above any host's (xenstored's entry quota bounds it anyway).
MAX_DOMAINS = 4096
XENBUS_CLOSING = 5
XENBUS_CLOSED = 6

_DOMID_RE = re.compile(r"[1-9][0-9]{0,4}")
_COUNT_RE = re.compile(r"0|[1-9][0-9]{0,2}")
_VDEVFN_RE = re.compile(r"[0-9a-f]{1,2}")
_VDEV_RE = re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-9a-f]{1,2})")


class XsReads(Protocol):
    """The reads this module needs (a XenstoreClient or a Transaction)."""

    def directory(self, path: str) -> list[str]: ...
    def read(self, path: str) -> bytes: ...


@dataclass(frozen=True)
class BackendDevice:
    """One ``dev-N`` of a guest's PCI backend."""

    index: int
    host: PciAddress
    vdev: PciAddress | None  # pciback's view (PV guests with pcifront)
    vdevfn: int | None  # libxl's vdevfn (HVM guests: devfn on 0000:00)
    state: int | None

    @property
    def vdevfn_address(self) -> PciAddress | None:
        if self.vdevfn is None:
            return None
        return PciAddress(0, 0, self.vdevfn >> 3, self.vdevfn & 7)


def backend_path(domid: int) -> str:
    return f"{BACKEND_ROOT}/{domid}/0"


def parse_domid(text: str, source: str) -> int:
    """A domain id as xenstore spells it: decimal, no sign or leading zero, 1..0x7FEF."""
    if len(text) > 5 or not _DOMID_RE.fullmatch(text) or not DOMID_MIN <= int(text) <= DOMID_MAX:
        raise InputError(source, f"not a guest domain id ({DOMID_MIN}..{DOMID_MAX})", text)
    return int(text)


def parse_value(raw: bytes, source: str) -> str:
    """A short printable-ASCII value (one trailing NUL tolerated)."""
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    if len(raw) > MAX_VALUE_BYTES:
        raise InputError(source, f"value longer than {MAX_VALUE_BYTES} bytes", raw[:40])
    if not all(0x20 <= b < 0x7F for b in raw):
        raise InputError(source, "value is not printable ASCII", raw)
    return raw.decode("ascii")


def parse_vdev(text: str, source: str) -> PciAddress:
    """pciback's ``vdev-N``: ``DDDD:BB:DD.FF`` (function in one or two hex digits)."""
    match = _VDEV_RE.fullmatch(text)
    if match is None:
        raise InputError(source, "expected a PCI address DDDD:BB:DD.F(F)", text)
    seg, bus, dev, func = (int(g, 16) for g in match.groups())
    if dev > 0x1F or func > 7:
        raise InputError(source, "PCI device above 0x1f or function above 7", text)
    return PciAddress(seg, bus, dev, func)


def parse_vdevfn(text: str, source: str) -> int:
    if not _VDEVFN_RE.fullmatch(text):
        raise InputError(source, "expected a devfn in hex (00..ff)", text)
    return int(text, 16)


def list_domids(xs: XsReads, path: str, problems: list[str]) -> list[int]:
    """The children of ``path`` that are guest domain ids; other names are reported, skipped."""
    from guestagent.xen.xenstore import XenstoreError

    try:
        names = xs.directory(path)
    except XenstoreError as e:
        if e.errno == errno.ENOENT:
            return []
        raise
    if len(names) > MAX_DOMAINS:
        raise InputError(path, f"more than {MAX_DOMAINS} entries", len(names))
    domids: list[int] = []
    for name in names:
        if name == "0":
            continue
        try:
            domids.append(parse_domid(name, f"{path}/{name}"))
        except InputError as e:
            problems.append(str(e))
    return sorted(domids)


def _read(xs: XsReads, path: str) -> str | None:
    """The parsed value, or None when the node does not exist (mid-removal)."""
    from guestagent.xen.xenstore import XenstoreError

    try:
        raw = xs.read(path)
    except XenstoreError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return parse_value(raw, path)


def read_backend(xs: XsReads, domid: int) -> list[BackendDevice]:
    """The guest's devices (those not being removed); [] when it has no PCI backend.

    InputError names the first key that does not parse.
    """
    base = backend_path(domid)
    num_text = _read(xs, f"{base}/num_devs")
    if num_text is None:
        return []
    if not _COUNT_RE.fullmatch(num_text) or int(num_text) > MAX_BACKEND_DEVICES:
        raise InputError(f"{base}/num_devs", f"expected a count 0..{MAX_BACKEND_DEVICES}", num_text)
    frontend_id = _read(xs, f"{base}/frontend-id")
    if frontend_id is not None and frontend_id != str(domid):
        raise InputError(f"{base}/frontend-id", f"does not name domain {domid}", frontend_id)
    devices: list[BackendDevice] = []
    seen: set[PciAddress] = set()
    for index in range(int(num_text)):
        dev_text = _read(xs, f"{base}/dev-{index}")
        if dev_text is None:
            continue  # removed under us; the watch brings the next state
        host = PciAddress.parse(dev_text, f"{base}/dev-{index}")
        state_text = _read(xs, f"{base}/state-{index}")
        state: int | None = None
        if state_text is not None:
            if not re.fullmatch(r"[0-9]", state_text):
                raise InputError(f"{base}/state-{index}", "expected a XenbusState 0..9", state_text)
            state = int(state_text)
            if state in (XENBUS_CLOSING, XENBUS_CLOSED):
                continue
        vdev_text = _read(xs, f"{base}/vdev-{index}")
        vdevfn_text = _read(xs, f"{base}/vdevfn-{index}")
        device = BackendDevice(
            index,
            host,
            None if vdev_text is None else parse_vdev(vdev_text, f"{base}/vdev-{index}"),
            None if vdevfn_text is None else parse_vdevfn(vdevfn_text, f"{base}/vdevfn-{index}"),
            state,
        )
        if host in seen:
            raise InputError(f"{base}/dev-{index}", "device listed twice", dev_text)
        seen.add(host)
        devices.append(device)
    return devices
