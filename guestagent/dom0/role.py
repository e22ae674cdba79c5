"""Is this the control domain? ``/proc/xen/capabilities`` (xenfs) holds ``control_d`` in Dom0 and is
empty in a domU; ``--role dom0`` overrides the detection (a Dom0 without xenfs mounted).

``--role`` takes the same choices on every command (:data:`ROLES`, as ``[agent] role``): ``auto``
detects, ``guest`` and ``dom0`` say which. The host and dom0 commands run in Dom0 only: outside it
they refuse with one line whose advice works there (:func:`not_dom0_reason`), and advise
``--role dom0`` only where it can help (Xen with a privcmd device but no xenfs mounted).
"""

from __future__ import annotations

from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS

CAPABILITIES = "/proc/xen/capabilities"
#: ``--role``'s choices everywhere (``run``, ``host ...``, ``dom0 ...``) and ``[agent] role``'s.
ROLES = ("auto", "guest", "dom0")


def is_dom0(hostfs: HostFS) -> bool:
    try:
        text = hostfs.read_text(CAPABILITIES)
    except MissingInputError:
        return False
    return "control_d" in text.replace(",", " ").split()


def not_dom0_reason(hostfs: HostFS) -> str:
    """Why this is not Dom0, with advice that works here (it is not Dom0 by detection)."""
    from guestagent.xen.detect import detect_hypervisor

    hv = detect_hypervisor(hostfs)
    caps = hostfs.shown(CAPABILITIES)
    if not hv.is_xen:
        return (f"no Xen hypervisor found (no {hostfs.shown('/sys/hypervisor/type')} saying xen, "
                "no privcmd device): the host and dom0 commands run in Xen's control domain "
                "(Dom0); on this machine 'guestagent topology' shows what Linux sees")
    if hostfs.exists(CAPABILITIES):
        return (f"this is a Xen guest (domU): {caps} has no control_d; the host and dom0 "
                "commands run in Xen's control domain (Dom0); in this guest 'guestagent "
                "topology' shows its vNUMA view")
    if hv.privcmd is None:
        return (f"no {caps} and no privcmd device: load xen-privcmd and mount xenfs "
                "(mount -t xenfs xenfs /proc/xen) in Dom0; the host and dom0 commands run in "
                "Xen's control domain only")
    return (f"no {caps} (xenfs not mounted): in Dom0 mount it (mount -t xenfs xenfs /proc/xen) "
            "or pass --role dom0; in a guest, the host and dom0 commands cannot run")


def require_dom0(hostfs: HostFS, role: str) -> None:
    """Raise a one-line InputError unless ``role`` is ``dom0`` or this is detected as Dom0;
    ``--role guest`` is refused here (these commands run in Dom0 only)."""
    if role == "dom0":
        return
    if role == "guest":
        raise InputError("--role", "the host and dom0 commands run in Dom0 only (leave --role "
                         "out to detect it, or --role dom0 in a Dom0 without xenfs)", role)
    if is_dom0(hostfs):
        return
    raise InputError("not Dom0", not_dom0_reason(hostfs))
