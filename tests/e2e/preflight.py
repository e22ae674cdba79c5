"""What the host needs, checked before anything is built: every tool the testbed runs (one line
names each missing tool and the Debian package to install), free disk for the cache and available
memory for the bed, instead of a traceback halfway through a build.

The lists live here, not in versions.py: versions.py's lists are part of the guest images' cache
keys (recipe.py), and a tool added to the preflight must not rebuild an image.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from tests.e2e.util import CACHE, BedError

#: Host tools the testbed runs -> the Debian package that has each (the README's "Host
#: requirements" and .ci/run install them).
HOST_TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "debootstrap": "debootstrap",
    "mke2fs": "e2fsprogs",
    "cpio": "cpio",
    "gzip": "gzip",
    "zstd": "zstd",
    "xz": "xz-utils",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "find": "findutils",
    "git": "git",
    "mount": "mount",
    "umount": "mount",
    "chroot": "coreutils",
    "du": "coreutils",
}
#: What building the image with the agent's .deb (``--debs``) runs besides (packaging/build-deb.sh).
DEB_BUILD_TOOLS: dict[str, str] = {
    "dpkg-buildpackage": "dpkg-dev",
    "fakeroot": "fakeroot",
    "lintian": "lintian",
}

GIB = 1 << 30
#: Free space the cache needs. Cold (no debootstrap layer yet): a full build left 3.1 GiB in the
#: cache on 2026-12-04 (.debs 0.2, staging 0.5, base root 0.6, the two guest images 0.8 each,
#: Dom0's initramfs 0.1), and the layers are built in temporary trees beside it. Warm: a source
#: change rebuilds a guest image (about 1 GiB while it is built).
COLD_DISK = 6 * GIB
WARM_DISK = 2 * GIB
#: Available memory the bed needs: QEMU is given 4 GiB (BedConfig.memory_mb) but touches only what
#: Xen, Dom0 (1 GiB) and the running guest (at most 1 GiB) use.
MIN_MEMORY = 2 * GIB


def missing_tools(tools: Mapping[str, str], path: str | None = None) -> dict[str, str]:
    """The tools of ``tools`` (tool -> Debian package) not on ``path`` (default: $PATH)."""
    return {t: pkg for t, pkg in tools.items() if shutil.which(t, path=path) is None}


def message(missing: Mapping[str, str]) -> str:
    """One line: the missing tools and the ``apt-get install`` that brings them."""
    tools = ", ".join(f"{t} (package {pkg})" for t, pkg in missing.items())
    pkgs = " ".join(sorted(set(missing.values())))
    return f"missing host tools: {tools}; install them with: apt-get install {pkgs}"


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the cache may not exist yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mem_available(meminfo: str) -> int | None:
    """MemAvailable of /proc/meminfo's text, in bytes (None when absent)."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _available() -> int | None:
    """This host's MemAvailable in bytes (None when /proc/meminfo cannot say)."""
    try:
        return mem_available(Path("/proc/meminfo").read_text())
    except OSError:
        return None


def shortfalls(cache: Path, free_bytes: int, available_bytes: int | None) -> list[str]:
    """What the host lacks in disk and memory, each a short phrase (empty when nothing)."""
    cold = not any(cache.glob("rootfs-base-*")) if cache.is_dir() else True
    need = COLD_DISK if cold else WARM_DISK
    out = []
    if free_bytes < need:
        out.append(f"{free_bytes / GIB:.1f} GiB free for {cache}, {need / GIB:.0f} GiB needed "
                   f"({'a cold build' if cold else 'a warm run'})")
    if available_bytes is not None and available_bytes < MIN_MEMORY:
        out.append(f"{available_bytes / GIB:.1f} GiB of memory available, "
                   f"{MIN_MEMORY / GIB:.0f} GiB needed")
    return out


def check(guest_debs: bool = False, path: str | None = None, cache: Path | None = None) -> None:
    """Raise BedError (one line) when a tool the bed needs is missing; disk or memory under the
    estimates above is one warning line on stderr and the run goes on (the estimates are from
    one machine: a host that has less may still be enough, and a bed that then fails says why)."""
    import sys

    tools = dict(HOST_TOOLS)
    if guest_debs:
        tools.update(DEB_BUILD_TOOLS)
    missing = missing_tools(tools, path)
    cache = cache or CACHE
    short = shortfalls(cache, shutil.disk_usage(_existing(cache)).free, _available())
    if missing:
        raise BedError("; ".join([message(missing), *short]))
    if short:
        print(f"e2e: warning: {'; '.join(short)}; going on", file=sys.stderr)

