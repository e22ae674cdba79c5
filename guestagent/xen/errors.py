"""Why Xen could not answer: typed, each with one line an operator can act on."""

from __future__ import annotations

import errno as errno_mod
import os

from guestagent.errors import GuestAgentError

PRIVCMD_UNRESTRICTED_HOWTO = (
    "load the module with 'modprobe -r xen-privcmd; modprobe xen-privcmd unrestricted=1' "
    "or boot with xen_privcmd.unrestricted=1 (persist it with "
    "'options xen-privcmd unrestricted=1' in /etc/modprobe.d/)"
)


class XenUnavailable(GuestAgentError):
    """Xen could not answer; ``reason`` is one operator-readable line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotOnXen(XenUnavailable):
    """No privcmd or xenbus device: this machine does not run on Xen."""


class PrivcmdRestricted(XenUnavailable):
    """The guest kernel blocks every privcmd hypercall (Debian 6.1.192 and later)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "the guest kernel blocks privcmd hypercalls (xen-privcmd loaded without "
            f"unrestricted=1){detail}; to allow them, {PRIVCMD_UNRESTRICTED_HOWTO}"
        )


class NoVnuma(XenUnavailable):
    """XENMEM_get_vnumainfo answered -EOPNOTSUPP: the domain was built without vNUMA."""


class XenTooOld(XenUnavailable):
    """The hypercall does not exist on this Xen (-ENOSYS)."""


class HypercallError(GuestAgentError, OSError):
    """A hypercall failed for another reason; names the hypercall and the Xen errno."""

    def __init__(self, hypercall: str, err: int, detail: str = "") -> None:
        name = errno_mod.errorcode.get(err, f"errno {err}")
        message = f"{hypercall} failed: {name} ({os.strerror(err)}){detail}"
        OSError.__init__(self, err, message)
        self.hypercall = hypercall
        self.message = message

    def __str__(self) -> str:
        return self.message
