"""Is this the control domain? ``/proc/xen/capabilities`` (xenfs) holds ``control_d`` in Dom0 and is
empty in a domU; ``--role dom0`` overrides the detection (a Dom0 without xenfs mounted)."""

from __future__ import annotations

from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS

CAPABILITIES = "/proc/xen/capabilities"
ROLES = ("auto", "dom0")


def is_dom0(hostfs: HostFS) -> bool:
    try:
        text = hostfs.read_text(CAPABILITIES)
    except MissingInputError:
        return False
    return "control_d" in text.replace(",", " ").split()


def require_dom0(hostfs: HostFS, role: str) -> None:
    """Raise a one-line InputError unless ``role`` is ``dom0`` or this is detected as Dom0."""
    if role == "dom0" or is_dom0(hostfs):
        return
    raise InputError(
        CAPABILITIES,
        "no 'control_d': this is not Dom0 (the host commands need the control domain; "
        "pass --role dom0 to override the detection)",
    )
