"""The passthrough HVM guest of the 2-node host layout, shared by the test that checks it
(test_dom0_devices.py) and the boots tool's ``hvm-pt`` shape (boots.py).

The 2-node layout (``BedConfig(host_numa2=True)``) puts an e1000e behind a ``pxb-pcie`` with
``numa_node=1``. Before a guest gets it, Dom0 makes it assignable (pciback); the guest's xl config
then names it in ``pci = [...]``, and in the guest the function shows under /sys/bus/pci/devices
at an address of the guest's own bus, found by its ``vendor:device``.
"""

from __future__ import annotations

from typing import Callable

from tests.e2e.util import BedError
from tests.e2e.vnuma import VNode

#: The e1000e of the 2-node layout (``vendor:device`` as sysfs writes them).
E1000E = "0x8086:0x10d3"
#: vnode 0 on host node 0, vnode 1 on host node 1 (the e1000e's), one vCPU each.
PNODE_MAPPED = (
    VNode(size_mb=512, vcpus=[0], distances=[10, 20], pnode=0),
    VNode(size_mb=512, vcpus=[1], distances=[20, 10], pnode=1),
)
#: One line per PCI function: ``<BDF> <vendor>:<device>`` (no lspci: neither image has it).
PCI_LISTING = ('for d in /sys/bus/pci/devices/*; do '
               'echo "${d##*/} $(cat $d/vendor):$(cat $d/device)"; done')


def functions_with_id(listing: str, vendor_device: str) -> list[str]:
    """The BDFs in ``PCI_LISTING``'s output whose ``vendor:device`` is ``vendor_device``."""
    return [ln.split()[0] for ln in listing.splitlines()
            if ln.strip().endswith(" " + vendor_device)]


def pci_by_id(run: Callable[[str], str], vendor_device: str) -> list[str]:
    """BDFs of the PCI functions with this ``vendor:device`` (in Dom0 or a guest: ``run`` is its
    ``dom0_ok`` or ``run_ok``)."""
    return functions_with_id(run(PCI_LISTING), vendor_device)


def host_bdf(run: Callable[[str], str], vendor_device: str) -> str:
    """The one host function with this ``vendor:device`` in Dom0; BedError when there is none or
    more than one."""
    found = pci_by_id(run, vendor_device)
    if len(found) != 1:
        raise BedError(f"Dom0's /sys/bus/pci/devices: {len(found)} functions {vendor_device} "
                       f"({', '.join(found) or 'none'}), the 2-node layout has one")
    return found[0]


def assignable_script(bdf: str) -> str:
    """Dom0 script making ``bdf`` assignable to guests (pciback); nothing when it already is."""
    return f"xl pci-assignable-list | grep -q {bdf} || xl pci-assignable-add {bdf}"


def xl_pci(bdf: str) -> str:
    """The xl.cfg line passing ``bdf`` through."""
    return f'pci = [ "{bdf}" ]'
