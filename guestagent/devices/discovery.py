"""Readers: PCI devices from ``/sys/bus/pci/devices``, the guest's nodes and their online CPUs.

A device can vanish at any moment (hot-unplug, a driver unbinding it): every read that finds the
device's directory gone raises :class:`DeviceGoneError`, which callers turn into one log line and a
skip. Garbage in a single attribute (``numa_node = abc``, a junk name under ``msi_irqs/``) does not
stop the read: it becomes one line in :attr:`PciDevice.problems` and the attribute's safe default.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import os
import re

from guestagent import nodesysfs
from guestagent.devices.model import NodeInfo, PciDevice, is_bdf
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import MAX_NODE_ID, HostFS, parse_cpulist, parse_int

PCI_DEVICES = "/sys/bus/pci/devices"
PCI_DRIVERS = "/sys/bus/pci/drivers"
CPU_ONLINE = "/sys/devices/system/cpu/online"

_HEX = re.compile(r"^0x[0-9a-fA-F]{1,8}$")


class DeviceGoneError(MissingInputError):
    """The device's sysfs directory disappeared (unplugged or removed) while we worked on it."""

    def __init__(self, bdf: str, during: str) -> None:
        super().__init__(f"{PCI_DEVICES}/{bdf}", f"device vanished during {during}")
        self.bdf = bdf


def device_path(bdf: str, attr: str = "") -> str:
    return f"{PCI_DEVICES}/{bdf}/{attr}" if attr else f"{PCI_DEVICES}/{bdf}"


def device_exists(hostfs: HostFS, bdf: str) -> bool:
    return hostfs.exists(device_path(bdf))


def list_devices(hostfs: HostFS) -> tuple[list[str], list[str]]:
    """The PCI addresses under ``/sys/bus/pci/devices`` and one line per entry that is not one."""
    try:
        names = hostfs.listdir(PCI_DEVICES)
    except MissingInputError:
        return [], []
    good = [n for n in names if is_bdf(n)]
    bad = [f"{PCI_DEVICES}/{n}: not a PCI address, ignored" for n in names if not is_bdf(n)]
    return good, bad


def _gone_or(hostfs: HostFS, bdf: str, during: str, error: InputError) -> InputError:
    """The error to raise for a failed read: DeviceGoneError when the whole device is gone."""
    if not device_exists(hostfs, bdf):
        return DeviceGoneError(bdf, during)
    return error


def _read(hostfs: HostFS, bdf: str, attr: str) -> str | None:
    """An attribute's text; None when just this attribute is absent; raises when the device is."""
    try:
        return hostfs.read_text(device_path(bdf, attr))
    except MissingInputError as e:
        err = _gone_or(hostfs, bdf, f"read of {attr}", e)
        if isinstance(err, DeviceGoneError):
            raise err from None
        return None


def _hex(text: str | None, source: str, problems: list[str]) -> int:
    if text is None:
        problems.append(f"{source}: does not exist")
        return -1
    if not _HEX.match(text.strip()):
        problems.append(str(InputError(source, "expected a hex number like 0x8086", text.strip())))
        return -1
    return int(text.strip(), 16)


def driver_name(hostfs: HostFS, bdf: str) -> str | None:
    """The name of the bound driver (the ``driver`` link's target), None when unbound."""
    link = hostfs.path(device_path(bdf, "driver"))
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        if not device_exists(hostfs, bdf):
            raise DeviceGoneError(bdf, "read of driver") from None
        return None
    except OSError:
        return None
    name = os.path.basename(target.rstrip("/"))
    return name or None


def read_numa_node(hostfs: HostFS, bdf: str, problems: list[str]) -> int:
    """``numa_node``; -1 when absent (CONFIG_NUMA off) or garbage (one line in ``problems``)."""
    source = device_path(bdf, "numa_node")
    text = _read(hostfs, bdf, "numa_node")
    if text is None:
        return -1
    try:
        return parse_int(text.strip(), source, minimum=-1, maximum=MAX_NODE_ID)
    except InputError as e:
        problems.append(f"{e}; treated as -1 (no node)")
        return -1


def read_msi_irqs(
    hostfs: HostFS, bdf: str, problems: list[str]
) -> tuple[list[int], dict[int, str]]:
    """The IRQ numbers named under ``msi_irqs/`` and their mode (``msi``/``msix``)."""
    directory = device_path(bdf, "msi_irqs")
    try:
        names = hostfs.listdir(directory)
    except MissingInputError:
        if not device_exists(hostfs, bdf):
            raise DeviceGoneError(bdf, "read of msi_irqs") from None
        return [], {}
    except InputError as e:
        problems.append(str(e))
        return [], {}
    irqs: list[int] = []
    modes: dict[int, str] = {}
    for name in names:
        if not re.fullmatch(r"\d{1,7}", name):
            problems.append(str(InputError(directory, "entry is not an IRQ number, ignored", name)))
            continue
        irq = int(name)
        irqs.append(irq)
        try:
            mode = hostfs.read_text(f"{directory}/{name}").strip()
        except InputError:
            continue
        if mode in ("msi", "msix"):
            modes[irq] = mode
    return sorted(irqs), modes


def read_device(hostfs: HostFS, bdf: str) -> PciDevice:
    """One device; raises :class:`DeviceGoneError` if it is not (or no longer) there."""
    if not device_exists(hostfs, bdf):
        raise DeviceGoneError(bdf, "discovery")
    problems: list[str] = []
    vendor = _hex(_read(hostfs, bdf, "vendor"), device_path(bdf, "vendor"), problems)
    dev_id = _hex(_read(hostfs, bdf, "device"), device_path(bdf, "device"), problems)
    pci_class = _hex(_read(hostfs, bdf, "class"), device_path(bdf, "class"), problems)
    numa_node = read_numa_node(hostfs, bdf, problems)
    local_cpus: list[int] = []
    text = _read(hostfs, bdf, "local_cpulist")
    if text is not None:
        try:
            local_cpus = parse_cpulist(text, device_path(bdf, "local_cpulist"))
        except InputError as e:
            problems.append(str(e))
    msi_irqs, msi_modes = read_msi_irqs(hostfs, bdf, problems)
    legacy = 0
    text = _read(hostfs, bdf, "irq")
    if text is not None:
        try:
            legacy = parse_int(text.strip(), device_path(bdf, "irq"), minimum=0, maximum=1 << 24)
        except InputError as e:
            problems.append(str(e))
    return PciDevice(
        bdf=bdf,
        vendor=vendor,
        device=dev_id,
        pci_class=pci_class,
        driver=driver_name(hostfs, bdf),
        numa_node=numa_node,
        local_cpus=local_cpus,
        msi_irqs=msi_irqs,
        msi_modes=msi_modes,
        legacy_irq=legacy,
        problems=problems,
    )


def read_node_info(hostfs: HostFS, problems: list[str]) -> NodeInfo:
    """Online nodes and their online CPUs (:mod:`guestagent.nodesysfs`'s rules); a kernel
    without NUMA, or a node set that cannot be read, gives no nodes."""
    online_cpus: list[int] = []
    try:
        online_cpus = hostfs.read_cpulist(CPU_ONLINE)
    except InputError as e:
        problems.append(str(e))
    if not nodesysfs.has_numa(hostfs):
        return NodeInfo(online=[], cpus={}, online_cpus=online_cpus)
    try:
        online = nodesysfs.online_nodes(hostfs, problems)
    except InputError as e:
        problems.append(str(e))
        return NodeInfo(online=[], cpus={}, online_cpus=online_cpus)
    cpus: dict[int, list[int]] = {}
    online_set = set(online_cpus)
    for node in online:
        try:
            node_cpus = nodesysfs.node_cpus(hostfs, node)
        except InputError as e:
            problems.append(str(e))
            continue
        # An unreadable cpu/online leaves the node's own list as the best answer.
        cpus[node] = [c for c in node_cpus if not online_set or c in online_set]
    return NodeInfo(online=online, cpus=cpus, online_cpus=online_cpus)
