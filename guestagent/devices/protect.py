"""The devices a driver rebind must never touch: the root file system's and the default route's.

Unbinding the disk that holds ``/`` or the NIC that carries the default route can take the guest
down (or cut the operator off), so :func:`protected_devices` finds both sets of PCI functions:

* root: ``/proc/self/mountinfo`` -> the ``/`` mount's MAJ:MIN -> ``/sys/dev/block/MAJ:MIN``
  -> its real sysfs path; every PCI function on that path (the device and the bridges above it)
  is protected. Device-mapper and md devices are followed through ``slaves/``.
* default route: the interface(s) of the IPv4 and IPv6 default routes (pyroute2, netlink) ->
  ``/sys/class/net/<if>/device``, following bridges (``brif/``), bonds and VLANs (``lower_*``).

When either cannot be determined the answer says so, and the caller refuses every rebind: "never"
has to hold even when the check itself fails.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from guestagent.devices.model import is_bdf
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS

MOUNTINFO = "/proc/self/mountinfo"
_MAX_DEPTH = 4

#: Returns the names of the interfaces that carry a default route; raises OSError/ImportError.
RouteLookup = Callable[[], list[str]]


@dataclass
class Protected:
    """PCI functions a rebind must leave alone, and why; ``unknown`` lines mean "refuse all"."""

    reasons: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def refusal(self, bdf: str) -> str | None:
        if bdf in self.reasons:
            return self.reasons[bdf]
        if self.unknown:
            return "; ".join(self.unknown)
        return None


def pci_functions_on_path(real_path: str) -> list[str]:
    """Every PCI address among the components of a resolved sysfs path, outermost first."""
    return [part for part in real_path.split("/") if is_bdf(part)]


def _realpath(hostfs: HostFS, host_path: str) -> str:
    """The resolved path with the HostFS root taken off again (``/sys/devices/...``)."""
    root = os.path.realpath(hostfs.root)
    real = os.path.realpath(hostfs.path(host_path))
    if real.startswith(root.rstrip("/") + "/"):
        real = "/" + real[len(root.rstrip("/")) + 1 :]
    return real


def root_mount(hostfs: HostFS) -> tuple[str, str]:
    """The ``/`` mount's ``MAJ:MIN`` and its mount source, from mountinfo (last ``/`` wins)."""
    text = hostfs.read_text(MOUNTINFO)
    found: tuple[str, str] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 7 or "-" not in fields[6:]:
            raise InputError(f"{MOUNTINFO} line {lineno}", "expected a mountinfo line", line)
        if fields[4] != "/":
            continue
        sep = fields.index("-", 6)
        source = fields[sep + 2] if len(fields) > sep + 2 else ""
        if not re.fullmatch(r"\d{1,10}:\d{1,10}", fields[2]):
            raise InputError(f"{MOUNTINFO} line {lineno}", "expected MAJ:MIN", fields[2])
        found = (fields[2], source)
    if found is None:
        raise InputError(MOUNTINFO, "no mount of /")
    return found


def _block_pci(hostfs: HostFS, host_path: str, depth: int = 0) -> list[str]:
    """PCI functions under a block device, through device-mapper/md ``slaves/``."""
    if not hostfs.exists(host_path):
        raise MissingInputError(host_path)
    found = pci_functions_on_path(_realpath(hostfs, host_path))
    if found or depth >= _MAX_DEPTH:
        return found
    slaves = f"{host_path}/slaves"
    if hostfs.exists(slaves):
        for name in hostfs.listdir(slaves):
            found += _block_pci(hostfs, f"/sys/class/block/{name}", depth + 1)
    return found


def root_device_functions(hostfs: HostFS) -> list[str]:
    """PCI functions holding ``/``; empty when ``/`` is not on a block device (tmpfs, nfs)."""
    majmin, source = root_mount(hostfs)
    if not majmin.startswith("0:"):
        return _block_pci(hostfs, f"/sys/dev/block/{majmin}")
    # Anonymous device (btrfs, overlay, network file systems): try the mount source's name.
    if source.startswith("/dev/"):
        name = os.path.basename(source)
        usable = re.fullmatch(r"[A-Za-z0-9_.!-]{1,64}", name) is not None
        if usable and hostfs.exists(f"/sys/class/block/{name}"):
            return _block_pci(hostfs, f"/sys/class/block/{name}")
    return []


def _net_pci(hostfs: HostFS, ifname: str, depth: int = 0) -> list[str]:
    base = f"/sys/class/net/{ifname}"
    if not hostfs.exists(base):
        raise MissingInputError(base)
    if hostfs.exists(f"{base}/device"):
        return pci_functions_on_path(_realpath(hostfs, f"{base}/device"))
    found: list[str] = []
    if depth >= _MAX_DEPTH:
        return found
    lowers = [n[len("lower_") :] for n in hostfs.listdir(base) if n.startswith("lower_")]
    if hostfs.exists(f"{base}/brif"):
        lowers += hostfs.listdir(f"{base}/brif")
    for lower in lowers:
        found += _net_pci(hostfs, lower, depth + 1)
    return found


def pyroute2_default_interfaces() -> list[str]:
    """Interfaces of the main table's IPv4/IPv6 default routes, through pyroute2 (netlink)."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        raise ImportError(
            "pyroute2 is not installed (pip install pyroute2): "
            "cannot find the device that carries the default route"
        ) from None
    names: set[str] = set()
    ipr: Any = IPRoute()
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family):
                if route.get("dst_len") != 0:
                    continue
                table = route.get_attr("RTA_TABLE") or route.get("table")
                if table not in (254, None):
                    continue
                oifs: list[int] = []
                oif = route.get_attr("RTA_OIF")
                if oif:
                    oifs.append(int(oif))
                for hop in route.get_attr("RTA_MULTIPATH") or []:
                    hop_oif = hop.get("oif")
                    if hop_oif:
                        oifs.append(int(hop_oif))
                for index in oifs:
                    try:
                        names.add(socket.if_indextoname(index))
                    except OSError:
                        continue
    finally:
        ipr.close()
    return sorted(names)


def protected_devices(hostfs: HostFS, route_lookup: RouteLookup) -> Protected:
    """The root file system's and the default route's PCI functions (see the module text)."""
    result = Protected()
    try:
        for bdf in root_device_functions(hostfs):
            result.reasons.setdefault(bdf, "holds the root file system")
    except InputError as e:
        result.unknown.append(f"cannot tell which device holds the root file system ({e})")
    try:
        interfaces = route_lookup()
    except (ImportError, OSError) as e:
        result.unknown.append(f"cannot tell which device carries the default route ({e})")
        return result
    for ifname in interfaces:
        if not re.fullmatch(r"[A-Za-z0-9_.@:-]{1,15}", ifname):
            result.unknown.append(f"default route interface name {ifname!r} is unusable")
            continue
        try:
            for bdf in _net_pci(hostfs, ifname):
                result.reasons.setdefault(bdf, f"carries the default route ({ifname})")
        except InputError as e:
            result.unknown.append(f"cannot find the device of {ifname} ({e})")
    return result
