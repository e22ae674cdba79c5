"""Every host tool the testbed runs, checked before anything is built: one line names each missing
tool and the Debian package to install, instead of a traceback halfway through a build."""

from __future__ import annotations

import shutil
from collections.abc import Mapping

from tests.e2e import versions
from tests.e2e.util import BedError


def missing_tools(tools: Mapping[str, str], path: str | None = None) -> dict[str, str]:
    """The tools of ``tools`` (tool -> Debian package) not on ``path`` (default: $PATH)."""
    return {t: pkg for t, pkg in tools.items() if shutil.which(t, path=path) is None}


def message(missing: Mapping[str, str]) -> str:
    """One line: the missing tools and the ``apt-get install`` that brings them."""
    tools = ", ".join(f"{t} (package {pkg})" for t, pkg in missing.items())
    pkgs = " ".join(sorted(set(missing.values())))
    return f"missing host tools: {tools}; install them with: apt-get install {pkgs}"


def check(guest_debs: bool = False, path: str | None = None) -> None:
    """Raise BedError (one line) when any tool the bed needs is missing."""
    tools = dict(versions.HOST_TOOLS)
    if guest_debs:
        tools.update(versions.DEB_BUILD_TOOLS)
    missing = missing_tools(tools, path)
    if missing:
        raise BedError(message(missing))
