"""Is this Linux running on Xen, and as which kind of guest?

Read only from the host tree (through :class:`~guestagent.hostfs.HostFS`), never from a hypercall:

* ``/sys/hypervisor/type`` holds ``xen`` (drivers/xen/sys-hypervisor.c; CONFIG_XEN_SYS_HYPERVISOR).
* ``/sys/hypervisor/guest_type`` holds ``PV``, ``HVM`` or ``PVH`` (``Xen`` on Arm); kernels older
  than 4.13 do not have it, so the guest type may be unknown (``None``).
* ``/proc/xen/capabilities`` (xenfs) contains ``control_d`` in Dom0 and is empty in a domU.
* ``/dev/xen/privcmd`` (or the legacy ``/proc/xen/privcmd``) is the hypercall doorway.

When ``/sys/hypervisor/type`` is absent, a present privcmd device or ``/proc/xen/capabilities``
still says "Xen". Detection never fails: an unreadable or garbage file is reported in
:attr:`Hypervisor.problems` (one line each, naming the file and value) and treated as absent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS

HYPERVISOR_TYPE = "/sys/hypervisor/type"
GUEST_TYPE = "/sys/hypervisor/guest_type"
CAPABILITIES = "/proc/xen/capabilities"
PRIVCMD_PATHS = ("/dev/xen/privcmd", "/proc/xen/privcmd")

_TOKEN = re.compile(r"[A-Za-z0-9_?]{1,16}")
_CAPS = re.compile(r"[a-z0-9_ ,]*")


@dataclass(frozen=True)
class Hypervisor:
    """What the host tree says about the hypervisor underneath."""

    kind: str  # "xen" | "none"
    guest_type: str | None = None  # "PV" | "HVM" | "PVH" | "Xen" (Arm) | None (unknown)
    is_dom0: bool = False
    privcmd: str | None = None  # host path of the privcmd device, if present
    problems: list[str] = field(default_factory=list)

    @property
    def is_xen(self) -> bool:
        return self.kind == "xen"

    def describe(self) -> str:
        """``xen (HVM guest)``, ``xen (Dom0, PV)``, ``none``."""
        if not self.is_xen:
            return "none"
        role = "Dom0" if self.is_dom0 else "guest"
        if self.guest_type is None:
            return f"xen ({role}, guest type unknown)"
        if self.is_dom0:
            return f"xen (Dom0, {self.guest_type})"
        return f"xen ({self.guest_type} guest)"


def _read_token(hostfs: HostFS, path: str, problems: list[str]) -> str | None:
    """A one-word sysfs file, or ``None`` when it is absent or garbage (garbage is recorded)."""
    try:
        text = hostfs.read_text(path)
    except MissingInputError:
        return None
    except InputError as e:
        problems.append(str(e))
        return None
    word = text.strip()
    if not _TOKEN.fullmatch(word):
        problems.append(str(InputError(path, "expected one word", text)))
        return None
    return word


def detect_hypervisor(hostfs: HostFS) -> Hypervisor:
    problems: list[str] = []
    hv_type = _read_token(hostfs, HYPERVISOR_TYPE, problems)
    privcmd = next((p for p in PRIVCMD_PATHS if hostfs.exists(p)), None)

    caps: str | None = None
    try:
        caps_text = hostfs.read_text(CAPABILITIES)
    except MissingInputError:
        pass
    except InputError as e:
        problems.append(str(e))
    else:
        if _CAPS.fullmatch(caps_text.strip()):
            caps = caps_text.strip()
        else:
            problems.append(str(InputError(CAPABILITIES, "expected capability words", caps_text)))

    is_xen = hv_type == "xen" if hv_type is not None else privcmd is not None or caps is not None
    if not is_xen:
        return Hypervisor(kind="none", problems=problems)

    guest_type = _read_token(hostfs, GUEST_TYPE, problems)
    is_dom0 = caps is not None and "control_d" in re.split(r"[\s,]+", caps)
    return Hypervisor(
        kind="xen", guest_type=guest_type, is_dom0=is_dom0, privcmd=privcmd, problems=problems
    )
