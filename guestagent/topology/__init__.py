"""The NUMA topology: one model from sysfs and the vNUMA hypercall, and where they disagree."""

from __future__ import annotations

from guestagent.topology.model import LinuxView, Node, Topology
from guestagent.topology.reader import VnumaCall, read_topology
from guestagent.topology.reconcile import assemble, hypercall_status, nodes_from_vnuma, reconcile
from guestagent.topology.sysfs import read_linux_view

__all__ = [
    "LinuxView",
    "Node",
    "Topology",
    "VnumaCall",
    "assemble",
    "hypercall_status",
    "nodes_from_vnuma",
    "read_linux_view",
    "read_topology",
    "reconcile",
]
