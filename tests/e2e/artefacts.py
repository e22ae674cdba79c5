"""Fetch the pinned Debian packages and extract them into one staging tree."""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

from tests.e2e import versions
from tests.e2e.util import CACHE, BedError, atomic_dir, key_of, log, publish_dir, run

DEBS = CACHE / "debs"


def deb_path(name: str, version: str) -> Path:
    return DEBS / f"{name}_{version.replace(':', '%3a')}_pinned.deb"


def fetch(packages: dict[str, str]) -> dict[str, Path]:
    """Download every package at its pinned version (cached); return name -> .deb path."""
    DEBS.mkdir(parents=True, exist_ok=True)
    missing = {n: v for n, v in packages.items() if not deb_path(n, v).exists()}
    if missing:
        log(f"downloading {len(missing)} Debian packages")
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            run(
                ["apt-get", "download", *[f"{n}={v}" for n, v in sorted(missing.items())]],
                cwd=Path(tmp),
                timeout=900,
            )
            got = list(Path(tmp).glob("*.deb"))
            for name, version in missing.items():
                prefix = f"{name}_"
                match = [p for p in got if p.name.startswith(prefix)]
                if len(match) != 1:
                    raise BedError(f"apt-get download {name}={version}: got {match}")
                shutil.move(str(match[0]), deb_path(name, version))
    return {n: deb_path(n, v) for n, v in packages.items()}


def staging() -> Path:
    """All pinned packages extracted into one tree (cached, keyed on the pins)."""
    key = key_of(*(f"{n}={v}" for n, v in sorted(versions.PACKAGES.items())))
    final = CACHE / f"staging-{key}"
    if (final / ".done").exists():
        return final
    debs = fetch(versions.PACKAGES)
    tmp = atomic_dir(final)
    log(f"extracting {len(debs)} packages into {final.name}")
    for deb in debs.values():
        run(["dpkg-deb", "-x", deb, tmp], timeout=300)
    (tmp / ".done").write_text("ok\n")
    publish_dir(tmp, final)
    return final


def xen_image(stage: Path) -> Path:
    """The uncompressed Xen ELF image that QEMU's multiboot loader accepts (cached)."""
    out = stage / "xen.elf"
    if not out.exists():
        major_minor = ".".join(versions.XEN.split(".")[:2])
        gz = stage / "boot" / f"xen-{major_minor}-amd64.gz"
        if not gz.exists():
            cands = sorted((stage / "boot").glob("xen-*-amd64.gz"))
            if not cands:
                raise BedError(f"no xen-*-amd64.gz in {stage / 'boot'}")
            gz = cands[0]
        with gzip.open(gz, "rb") as src, open(str(out) + ".tmp", "wb") as dst:
            shutil.copyfileobj(src, dst)
        Path(str(out) + ".tmp").rename(out)
    return out


def kernel(stage: Path) -> Path:
    return stage / "boot" / f"vmlinuz-{versions.KERNEL_ABI}"


def modules_dir(stage: Path) -> Path:
    return stage / "lib" / "modules" / versions.KERNEL_ABI


# --- guest kernel variants (versions.GUEST_KERNELS) ----------------------------------------------


def kernel_names() -> list[str]:
    """Every guest kernel a GuestSpec may name: the default (Dom0's) first, then the variants."""
    return [versions.DEFAULT_GUEST_KERNEL, *sorted(versions.GUEST_KERNELS)]


def kernel_abi(variant: str) -> str:
    if variant == versions.DEFAULT_GUEST_KERNEL:
        return versions.KERNEL_ABI
    if variant not in versions.GUEST_KERNELS:
        raise BedError(f"unknown guest kernel {variant!r}: one of {kernel_names()}")
    return versions.GUEST_KERNELS[variant][0]


def variant_stage(variant: str) -> Path:
    """One extra guest kernel's package extracted alone (cached, keyed on its pin): adding or
    bumping a variant leaves the main staging tree and its keys alone."""
    abi, version = versions.GUEST_KERNELS[variant]
    pkg = {f"linux-image-{abi}": version}
    final = CACHE / f"kernel-{variant}-{key_of(abi, version)}"
    if (final / ".done").exists():
        return final
    debs = fetch(pkg)
    tmp = atomic_dir(final)
    log(f"extracting guest kernel {variant} ({abi}) into {final.name}")
    for deb in debs.values():
        run(["dpkg-deb", "-x", deb, tmp], timeout=300)
    (tmp / ".done").write_text("ok\n")
    publish_dir(tmp, final)
    return final


def guest_kernel(stage: Path, variant: str) -> tuple[Path, Path]:
    """(vmlinuz, module directory) of a guest kernel; the default one comes from ``stage``."""
    abi = kernel_abi(variant)
    root = stage if variant == versions.DEFAULT_GUEST_KERNEL else variant_stage(variant)
    vmlinuz = root / "boot" / f"vmlinuz-{abi}"
    if not vmlinuz.exists():
        raise BedError(f"{vmlinuz} missing from linux-image-{abi}")
    for mods in (root / "lib" / "modules" / abi, root / "usr" / "lib" / "modules" / abi):
        if mods.is_dir():
            return vmlinuz, mods
    raise BedError(f"no modules for {abi} under {root}")


def kernel_pin(variant: str) -> str:
    """The pin a cache key of this kernel's artefacts depends on."""
    if variant == versions.DEFAULT_GUEST_KERNEL:
        return f"{versions.KERNEL_ABI}={versions.KERNEL}"
    abi, version = versions.GUEST_KERNELS[variant]
    return f"{abi}={version}"
