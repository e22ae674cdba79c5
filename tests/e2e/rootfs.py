"""The guest's root file system: Debian with Python 3 and the agent installed by ``pip install .``.

Layers, each cached under ``cache/``:

1. ``rootfs-base-<key>``: ``debootstrap --variant=minbase`` with :data:`versions.ROOTFS_INCLUDE`
   (keyed on the suite, the package list and :data:`versions.ROOTFS_REVISION`).
2. ``guest-<key>.ext4``: a copy of the base with the kernel modules, the testbed's guest init and
   the agent (its git-tracked files copied to ``/usr/src/guestagent`` and installed with
   ``python3 -m pip install --break-system-packages /usr/src/guestagent``), packed into an ext4
   image with ``mke2fs -d`` (keyed on the base, the kernel, the init and a hash of the agent's
   tracked files, so a source change re-installs only the agent).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e import recipe, versions
from tests.e2e.util import (
    CACHE,
    HERE,
    REPO,
    BedError,
    atomic_dir,
    key_of,
    log,
    publish_dir,
    run,
    sha256_file,
)

MIRROR = os.environ.get("E2E_DEBIAN_MIRROR", "http://deb.debian.org/debian")
GUEST_INIT = HERE / "guest" / "e2e-init"
GUEST_RUNNER = HERE / "guest" / "e2e-runner"


def base_rootfs() -> Path:
    """Debian minbase + Python (cached)."""
    key = key_of(versions.SUITE, versions.ROOTFS_REVISION, *versions.ROOTFS_INCLUDE,
                 recipe.base_rootfs_recipe())
    final = CACHE / f"rootfs-base-{key}"
    if (final / ".done").exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    log(f"debootstrap {versions.SUITE} into {final.name} (several minutes)")
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(versions.ROOTFS_INCLUDE)}",
            versions.SUITE,
            tmp,
            MIRROR,
        ],
        timeout=1800,
    )
    # Smaller image: apt lists and caches are not needed in the guest.
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        d = tmp / sub
        if d.is_dir():
            for p in d.iterdir():
                if p.is_file():
                    p.unlink()
    (tmp / ".done").write_text("ok\n")
    publish_dir(tmp, final)
    return final


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=str(REPO), stdout=subprocess.PIPE, check=True
    ).stdout.decode()
    return sorted(f for f in out.split("\0") if f and not f.startswith("tests/e2e/cache/"))


def agent_hash() -> str:
    """A hash of the agent's git-tracked files as they are in the work tree now."""
    h = hashlib.sha256()
    for rel in tracked_files():
        p = REPO / rel
        h.update(rel.encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


@contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    mounted: list[Path] = []
    try:
        for src, dst, args in (
            ("proc", "proc", ["-t", "proc"]),
            ("sysfs", "sys", ["-t", "sysfs"]),
            ("/dev", "dev", ["--bind"]),
        ):
            target = root / dst
            target.mkdir(exist_ok=True)
            run(["mount", *args, src, target], timeout=30)
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)


def install_agent(root: Path) -> None:
    """Copy the tracked source tree into the root and ``pip install`` it as a user would."""
    src = root / "usr" / "src" / "guestagent"
    if src.exists():
        shutil.rmtree(src)
    for rel in tracked_files():
        if rel.startswith("tests/"):
            continue
        p = REPO / rel
        if not p.is_file():
            continue
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
    shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
    # The host's CA bundle: where HTTPS goes through an inspecting proxy, its CA is only there.
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    if host_ca.exists():
        shutil.copy2(host_ca, root / "etc" / "ssl" / "e2e-host-ca.crt")
        env["PIP_CERT"] = "/etc/ssl/e2e-host-ca.crt"
        env["SSL_CERT_FILE"] = "/etc/ssl/e2e-host-ca.crt"
    for var in ("PIP_INDEX_URL", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        if var in os.environ:
            env[var] = os.environ[var]
    pip_cache = CACHE / "pip-cache"
    pip_cache.mkdir(parents=True, exist_ok=True)
    target_cache = root / "root" / ".cache" / "pip"
    target_cache.mkdir(parents=True, exist_ok=True)
    log("pip install the agent in the guest root file system")
    with chroot_mounts(root):
        run(["mount", "--bind", pip_cache, target_cache], timeout=30)
        try:
            out = run(
                [
                    "chroot",
                    root,
                    "python3",
                    "-m",
                    "pip",
                    "install",
                    "--break-system-packages",
                    "--no-warn-script-location",
                    "/usr/src/guestagent",
                ],
                env=env,
                timeout=1200,
            )
        finally:
            subprocess.run(["umount", "-l", str(target_cache)], check=False)
    log("pip: " + (out.strip().splitlines() or [""])[-1])


#: Module trees a guest never needs (keeps the image small).
SKIP_MODULE_DIRS = (
    "kernel/sound",
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/net/wireless",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/bluetooth",
    "kernel/drivers/iio",
    "kernel/drivers/hid",
    "kernel/drivers/usb",
    "kernel/drivers/input",
    "kernel/net/wireless",
    "kernel/net/mac80211",
    "kernel/net/bluetooth",
)


def copy_modules(src: Path, dst: Path) -> None:
    skip = {src / d for d in SKIP_MODULE_DIRS}

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(directory) / n in skip]

    shutil.copytree(src, dst, symlinks=True, ignore=ignore)


def start_layer(base: Path, layer: Path, what: str) -> Path:
    """A fresh writable copy of the base root file system to build an image in."""
    if layer.exists():
        shutil.rmtree(layer)
    log(f"copying the base root file system{what}")
    run(["cp", "-a", "--reflink=auto", base, layer], timeout=600)
    (layer / ".done").unlink()
    return layer


def install_modules(layer: Path, abi: str, modules: Path) -> None:
    """One guest kernel's modules in ``/lib/modules/ABI``, with their ``depmod`` index."""
    mdst = layer / "lib" / "modules" / abi
    if mdst.exists():
        shutil.rmtree(mdst)
    copy_modules(modules, mdst)
    run(["chroot", layer, "depmod", "-a", abi], timeout=300)


def install_testbed_init(layer: Path) -> None:
    """The testbed's init and command runner in ``/sbin``, and the guest's host name."""
    for f in (GUEST_INIT, GUEST_RUNNER):
        dst = layer / "sbin" / f.name
        shutil.copy2(f, dst)
        dst.chmod(0o755)
    (layer / "etc" / "hostname").write_text("e2e-guest\n")


def make_ext4(layer: Path, image: Path, what: str) -> None:
    """``mke2fs -d`` of the layer into ``image`` (a quarter more than its size plus 256 MiB),
    through a temporary name so that a half-written image is never taken for a cached one."""
    size_mb = int(int(run(["du", "-sm", layer], timeout=300).split()[0]) * 1.25) + 256
    tmp_img = image.with_suffix(".tmp")
    if tmp_img.exists():
        tmp_img.unlink()
    log(f"mke2fs -d ({size_mb} MiB{what})")
    run(
        ["mke2fs", "-q", "-t", "ext4", "-L", "e2e-root", "-E", "root_owner=0:0",
         "-d", layer, tmp_img, f"{size_mb}M"],
        timeout=900,
    )
    tmp_img.rename(image)


def remove_layer(layer: Path) -> None:
    """Unmount whatever a chroot step left mounted in the layer, then delete it."""
    for sub in ("proc", "sys", "dev", "root/.cache/pip"):
        subprocess.run(["umount", "-l", str(layer / sub)], check=False, stderr=subprocess.DEVNULL)
    shutil.rmtree(layer, ignore_errors=True)


def guest_image(
    modules: Path, with_agent: bool = True, extra_modules: dict[str, Path] | None = None
) -> Path:
    """The guest's ext4 root image (cached, keyed on every input).

    ``modules`` are the default guest kernel's (KERNEL_ABI); ``extra_modules`` maps the ABI of each
    extra guest kernel (``versions.GUEST_KERNELS``) to its module directory.
    """
    extra_modules = extra_modules or {}
    base = base_rootfs()
    parts = [
        base.name,
        versions.KERNEL,
        *(f"{abi}={v}" for _n, (abi, v) in sorted(versions.GUEST_KERNELS.items())
          if abi in extra_modules),
        GUEST_INIT.read_text(),
        GUEST_RUNNER.read_text(),
        agent_hash() if with_agent else "no-agent",
        recipe.guest_image_recipe(),
    ]
    key = key_of(*parts)
    image = CACHE / f"guest-{key}.ext4"
    if image.exists():
        return image
    for old in CACHE.glob("guest-*.ext4"):
        old.unlink()
    layer = start_layer(base, CACHE / "rootfs-layer", "")
    try:
        install_modules(layer, versions.KERNEL_ABI, modules)
        for abi, mods in sorted(extra_modules.items()):
            install_modules(layer, abi, mods)
        install_testbed_init(layer)
        if with_agent:
            install_agent(layer)
        make_ext4(layer, image, "")
    finally:
        remove_layer(layer)
    if not image.exists():
        raise BedError("guest image was not built")
    return image


# --- the image with the agent's .deb (cloud-init on the testbed) ---------------------------------

#: cloud-init's configuration and NoCloud seed for the .deb image (tests/e2e/test_cloudinit.py).
CLOUD_INIT = HERE / "guest" / "cloud-init"
BUILD_DEB = REPO / "packaging" / "build-deb.sh"


def agent_debs() -> list[Path]:
    """guestagent's Debian packages, built from the work tree by ``packaging/build-deb.sh`` (with
    its lintian check); cached on the hash of the tracked files, like the agent layer."""
    final = CACHE / f"agent-debs-{agent_hash()}"
    if not (final / ".done").exists():
        for old in CACHE.glob("agent-debs-*"):
            shutil.rmtree(old, ignore_errors=True)
        tmp = atomic_dir(final)
        log("building the agent's .deb with packaging/build-deb.sh")
        out = run(["sh", BUILD_DEB, tmp], timeout=1800)
        log("build-deb: " + (out.strip().splitlines() or [""])[-1])
        (tmp / ".done").write_text("ok\n")
        publish_dir(tmp, final)
    debs = sorted(p for p in final.glob("*.deb") if "-dbgsym_" not in p.name)
    if not any(p.name.startswith("guestagent_") for p in debs):
        raise BedError(f"packaging/build-deb.sh left no guestagent_*.deb in {final}")
    return debs


def copy_sources(root: Path) -> None:
    """The tracked files, tests excepted, to /usr/src/guestagent (benchmarks run from there)."""
    src = root / "usr" / "src" / "guestagent"
    if src.exists():
        shutil.rmtree(src)
    for rel in tracked_files():
        p = REPO / rel
        if rel.startswith("tests/") or not p.is_file():
            continue
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)


def install_debs(root: Path, debs: list[Path]) -> None:
    """The packages to /root/debs, ``dpkg -i`` of the guest package in a chroot (as an image build
    would; no systemd runs there, so nothing starts), then its unit turned off again, so that only
    cloud-init can turn it on. The Debian packages it depends on are in the base (versions.py)."""
    target = root / "root" / "debs"
    target.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy2(deb, target / deb.name)
    guest = [f"/root/debs/{d.name}" for d in debs if d.name.startswith("guestagent_")]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    with chroot_mounts(root):
        out = run(["chroot", root, "dpkg", "-i", *guest], env=env, timeout=600)
        log("dpkg -i: " + (out.strip().splitlines() or [""])[-1])
        run(["chroot", root, "systemctl", "disable", "guestagent.service"], env=env, timeout=60)


def install_cloud_init_seed(root: Path) -> None:
    """cloud-init's data source list and the NoCloud seed (user-data with ``guestagent:``)."""
    cfg = root / "etc" / "cloud" / "cloud.cfg.d"
    cfg.mkdir(parents=True, exist_ok=True)
    shutil.copy2(CLOUD_INIT / "90-e2e.cfg", cfg / "90-e2e.cfg")
    seed = root / "var" / "lib" / "cloud" / "seed" / "nocloud"
    seed.mkdir(parents=True, exist_ok=True)
    for name in ("user-data", "meta-data"):
        shutil.copy2(CLOUD_INIT / name, seed / name)


def guest_image_debs(modules: Path) -> Path:
    """The guest image for the cloud-init proof: base + kernel modules + the testbed's init, the
    agent installed from its .deb (no ``pip install``, so nothing shadows the package's copy),
    the sources in /usr/src/guestagent, and a NoCloud seed. Named ``debs-guest-<key>.ext4`` (the
    default image's clean-up removes ``guest-*.ext4``)."""
    debs = agent_debs()
    base = base_rootfs()
    key = key_of(
        base.name,
        versions.KERNEL,
        GUEST_INIT.read_text(),
        GUEST_RUNNER.read_text(),
        *(d.name + ":" + sha256_file(d) for d in debs),
        *((CLOUD_INIT / n).read_text() for n in ("90-e2e.cfg", "user-data", "meta-data")),
        agent_hash(),
        recipe.guest_image_recipe(),
    )
    image = CACHE / f"debs-guest-{key}.ext4"
    if image.exists():
        return image
    for old in CACHE.glob("debs-guest-*.ext4"):
        old.unlink()
    layer = start_layer(base, CACHE / "rootfs-layer-debs", " (.deb image)")
    try:
        install_modules(layer, versions.KERNEL_ABI, modules)
        install_testbed_init(layer)
        copy_sources(layer)
        install_debs(layer, debs)
        install_cloud_init_seed(layer)
        make_ext4(layer, image, ", .deb image")
    finally:
        remove_layer(layer)
    return image
