"""Read both views and put them together (the I/O half; the policy half is :mod:`.reconcile`)."""

from __future__ import annotations

from typing import Callable

from guestagent.errors import GuestAgentError, InputError
from guestagent.hostfs import HostFS
from guestagent.topology.model import Topology
from guestagent.topology.reconcile import (
    STATUS_NO_HYPERVISOR,
    STATUS_OK,
    assemble,
    hypercall_status,
)
from guestagent.topology.sysfs import read_linux_view
from guestagent.xen.detect import Hypervisor, detect_hypervisor
from guestagent.xen.vnuma import VnumaInfo

#: Runs XENMEM_get_vnumainfo; raises XenUnavailable, HypercallError, InputError or ImportError.
VnumaCall = Callable[[], VnumaInfo]


def read_topology(
    hostfs: HostFS,
    hypercall: VnumaCall | None,
    hypervisor: Hypervisor | None = None,
) -> Topology:
    """Both views of the topology; never raises for bad input (see :attr:`Topology.errors`).

    The hypercall is tried only when the host tree says Xen; ``hypercall=None`` skips it.
    """
    hv = detect_hypervisor(hostfs) if hypervisor is None else hypervisor
    try:
        linux = read_linux_view(hostfs)
        linux_error = None
    except InputError as e:
        linux, linux_error = None, str(e)

    info: VnumaInfo | None = None
    if not hv.is_xen:
        status = STATUS_NO_HYPERVISOR
    elif hypercall is None:
        status = "not attempted"
    else:
        try:
            info = hypercall()
            status = STATUS_OK
        except (GuestAgentError, OSError, ImportError) as e:
            status = hypercall_status(e)
    return assemble(hv, linux, linux_error, info, status)
