"""The interface-version dance both Xen control hypercalls share (``sysctl``, ``domctl``).

Xen refuses a sysctl or domctl whose ``interface_version`` is not its own with EACCES, and the
version changes between releases. :func:`negotiate` issues the call with each candidate version
in turn until Xen accepts one; the callers keep the accepted version and log it.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import Callable

from guestagent.xen.errors import HypercallError, XenUnavailable


def negotiate(
    candidates: Iterable[int], attempt: Callable[[int], None], name: str, kind: str,
    hint: str = "",
) -> tuple[int, list[int]]:
    """Call ``attempt(version)`` for each candidate until Xen accepts one; return that version
    and the versions refused first (EACCES). EPERM (not the control domain) and EACCES for every
    candidate raise XenUnavailable naming ``name`` and ``kind`` ("sysctl", "domctl"), with
    ``hint`` appended to the latter; any other HypercallError propagates."""
    refused: list[int] = []
    for version in candidates:
        try:
            attempt(version)
        except HypercallError as e:
            if e.errno == errno.EACCES:
                refused.append(version)
                continue
            if e.errno == errno.EPERM:
                raise XenUnavailable(
                    f"{name} refused (EPERM): only the control domain (Dom0) may issue {kind}s"
                ) from None
            raise
        return version, refused
    tried = ", ".join(f"{v:#x}" for v in refused)
    raise XenUnavailable(
        f"{name}: Xen refused every known {kind} interface version with EACCES ({tried}){hint}"
    )
