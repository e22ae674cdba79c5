"""The passthrough HVM guest of the 2-node host layout, shared by the test that checks it
(test_dom0_devices.py), the boots tool's ``hvm-pt`` shape (boots.py) and the checks written for
hotplug and a remote device (io_hotplug.py, io_remote.py: the guest spec variants, the guest's
udevd and daemon, and the readers of its log and metrics).

The 2-node layout (``BedConfig(host_numa2=True)``) puts an e1000e behind a ``pxb-pcie`` with
``numa_node=1``. Before a guest gets it, Dom0 makes it assignable (pciback); the guest's xl config
then names it in ``pci = [...]``, and in the guest the function shows under /sys/bus/pci/devices
at an address of the guest's own bus, found by its ``vendor:device``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Callable

from tests.e2e.bed import GuestSpec
from tests.e2e.util import BedError
from tests.e2e.vnuma import VNode, xl_vnuma

#: The e1000e of the 2-node layout (``vendor:device`` as sysfs writes them).
E1000E = "0x8086:0x10d3"
#: vnode 0 on host node 0, vnode 1 on host node 1 (the e1000e's), one vCPU each.
PNODE_MAPPED = (
    VNode(size_mb=512, vcpus=[0], distances=[10, 20], pnode=0),
    VNode(size_mb=512, vcpus=[1], distances=[20, 10], pnode=1),
)
#: Both vnodes on host node 0, one vCPU each: the e1000e (host node 1) is on a host node where the
#: guest has no vnode (issue 16 item 6); Dom0 picks the nearest vnode, vnode 0 (a tie: the lower).
BOTH_ON_NODE0 = (
    VNode(size_mb=512, vcpus=[0], distances=[10, 20], pnode=0),
    VNode(size_mb=512, vcpus=[1], distances=[20, 10], pnode=0),
)
#: libxl turns passthrough on only for a guest created with a device (``pci=``: the IOMMU context
#: is set up at creation); a guest that gets its device by ``xl pci-attach`` later asks for it.
XL_PASSTHROUGH_ENABLED = 'passthrough = "enabled"'
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


def passthrough_guest(name: str, vnodes: Sequence[VNode], host_bdf: str | None) -> GuestSpec:
    """The HVM passthrough guest: the vnodes' memory and vCPUs, and ``host_bdf`` passed through
    from its boot, or, with None, no device but passthrough enabled for an ``xl pci-attach``."""
    spec = GuestSpec.hvm(memory=sum(v.size_mb for v in vnodes),
                         vcpus=sum(len(v.vcpus) for v in vnodes), vnuma=xl_vnuma(list(vnodes)),
                         name=name)
    spec.extra.append(xl_pci(host_bdf) if host_bdf is not None else XL_PASSTHROUGH_ENABLED)
    return spec


def hint_path(domid: int, host_bdf: str) -> str:
    """The xenstore directory of the Dom0 agent's hint for one device of guest ``domid``."""
    key = host_bdf.replace(":", "-").replace(".", "-")
    return f"/local/domain/{domid}/guestagent-dom0/devices/{key}"


# --- the guest's udevd, daemon and metrics ----------------------------------------------------

#: udevd in the guest (the e2e init starts none): the agent's hotplug monitor listens to udev's
#: netlink group, which only udevd sends to (the kernel's own events go to group 1). Returns once
#: udevd answers (``udevadm control --ping``); its own output in /tmp/udevd.log.
UDEVD_START = ("$(command -v systemd-udevd || echo /lib/systemd/systemd-udevd) --daemon "
               ">/tmp/udevd.log 2>&1 </dev/null && udevadm control --ping")
#: ``guestagent run`` in the guest's background, as test_dom0_devices.py starts it (log in
#: /tmp/daemon.log, PID in /tmp/daemon.pid), from a shell that waits for it and writes its exit
#: status to /tmp/daemon.rc. Returns once the PID is written.
DAEMON_START = (
    "rm -f /tmp/daemon.pid /tmp/daemon.rc; "
    "( guestagent --log-level info run >/tmp/daemon.log 2>&1 </dev/null & "
    "echo $! >/tmp/daemon.pid; wait $!; echo $? >/tmp/daemon.rc ) >/dev/null 2>&1 </dev/null & "
    "while [ ! -s /tmp/daemon.pid ]; do sleep 0.2; done"
)
#: The daemon's log so far.
DAEMON_LOG = "cat /tmp/daemon.log"
#: The exit status DAEMON_START's shell wrote, once it has (waits up to 30 s for it).
DAEMON_RC = ("for i in $(seq 60); do [ -s /tmp/daemon.rc ] && break; sleep 0.5; done; "
             "cat /tmp/daemon.rc")
#: A conf.d file turning on the daemon's metrics server (``[metrics] listen``'s default address);
#: the e2e guest's init leaves ``lo`` down (a scrape of 127.0.0.1 said "Network is unreachable").
METRICS_CONF = "/etc/guestagent/conf.d/50-e2e-metrics.toml"
METRICS_ON = (f"ip link set lo up; mkdir -p {METRICS_CONF.rpartition('/')[0]}; "
              f"printf '[metrics]\\nenabled = true\\n' >{METRICS_CONF}")
#: One scrape of the daemon's metrics (no curl in the image: Python's urllib).
METRICS_GET = ("python3 -c 'import urllib.request; print(urllib.request.urlopen("
               "\"http://127.0.0.1:9731/metrics\", timeout=30).read().decode())'")


# --- reading the daemon's log and metrics -----------------------------------------------------

#: One ``key=value`` of a logfmt line; a quoted value has JSON's escapes (guestagent/log.py).
LOGFMT_FIELD = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^ "]*)')


def logfmt_fields(line: str) -> dict[str, str]:
    """The fields of one logfmt line, quoted values unquoted (a line that is not logfmt, e.g. a
    traceback's, gives what it happens to hold of ``key=value``: nothing, usually)."""
    fields: dict[str, str] = {}
    for key, raw in LOGFMT_FIELD.findall(line):
        fields[key] = _unquoted(raw)
    return fields


def _unquoted(raw: str) -> str:
    """A logfmt value as written: a quoted one through JSON's escapes (kept as written, quotes
    and all, when they are not JSON's)."""
    if not raw.startswith('"'):
        return raw
    try:
        return str(json.loads(raw))
    except ValueError:
        return raw


def log_events(log: str, event: str, **fields: str) -> list[dict[str, str]]:
    """The log's lines of ``event`` whose fields include ``fields`` (each line's fields)."""
    found = []
    for line in log.splitlines():
        got = logfmt_fields(line)
        if got.get("event") == event and all(got.get(k) == v for k, v in fields.items()):
            found.append(got)
    return found


def error_lines(log: str) -> list[str]:
    """The log's lines at level error or above, and any traceback's first line."""
    return [line for line in log.splitlines()
            if logfmt_fields(line).get("level") in ("error", "critical")
            or line.startswith("Traceback")]


#: One sample of the Prometheus text format: name, optional ``{labels}``, value.
METRIC_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")


def metric_samples(text: str, name: str) -> dict[str, float]:
    """The samples of metric ``name`` in a scrape: {its labels as written (``device="..."``; ""
    without labels): value}."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        m = METRIC_SAMPLE.match(line.strip())
        if m and m[1] == name:
            samples[m[2] or ""] = float(m[3])
    return samples
