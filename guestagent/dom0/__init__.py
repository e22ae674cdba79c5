"""The Dom0 variant: host topology from Xen's sysctls, and per-guest passthrough-device hints
published into each guest's xenstore tree (see :mod:`guestagent.dom0.schema`)."""
