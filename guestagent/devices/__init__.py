"""I/O NUMA in the guest: PCI devices bound to their NUMA node.

Data flows the house way (``docs/DEVELOPING.md``):

* :mod:`~guestagent.devices.discovery` reads ``/sys/bus/pci/devices/*`` into :class:`PciDevice`;
* :mod:`~guestagent.devices.hints` gives the Dom0 and configuration hints (:class:`DeviceHint`,
  :class:`HintSource`);
* :mod:`~guestagent.devices.read` reads the model one device at a time (its vectors' affinity, the
  hugepage pools) and the nodes and hints once per pass;
* :mod:`~guestagent.devices.resolve` decides each device's node and
  :mod:`~guestagent.devices.plan` everything else (pure: a plan of steps);
* :mod:`~guestagent.devices.execute` carries a plan out (IRQ affinity, ``numa_node``, driver
  rebinds, hugepage reservations), recording the previous state first in
  :mod:`~guestagent.devices.state`, and undoes it; :mod:`~guestagent.devices.netif` sets a
  rebound NIC's interfaces back (ring sizes, up) on the device's node;
* :mod:`~guestagent.devices.apply` is the job that runs read -> decide -> apply per device;
* :mod:`~guestagent.devices.irqbalance` decides whether IRQ affinity is ours to touch;
* :mod:`~guestagent.devices.hotplug` turns udev events into the re-evaluation of one device;
* :mod:`~guestagent.devices.commands` is ``guestagent devices``.
"""

from __future__ import annotations

from guestagent.devices.model import DeviceHint, NodeSource, PciDevice, Resolution

__all__ = ["DeviceHint", "NodeSource", "PciDevice", "Resolution"]
