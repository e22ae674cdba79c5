"""Boot images: the Dom0 initramfs (busybox, Xen tools, device model) and a guest's tiny initramfs.

Everything comes from the pinned packages extracted by :mod:`tests.e2e.artefacts`; only the ELF
closure of the binaries that Dom0 runs is copied in, resolved with a small ELF reader below.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tests.e2e import artefacts, recipe, versions
from tests.e2e.util import CACHE, HERE, BedError, key_of, log

XEN_DIR = "usr/lib/xen-4.17"
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64")

#: Dom0's kernel modules (dependencies are added from each module's modinfo).
DOM0_MODULES = (
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "xenfs",
    "xen-blkback",
    "xen-netback",
    "xen-pciback",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "e1000e",
    "loop",
    "ext4",
    # e2e-agent mounts the guest root image (ext4 with metadata_csum: crc32c, which ext4 asks for
    # by name at mount time, so no module dependency pulls it in) under a tmpfs overlay.
    "crc32c_generic",
    "overlay",
)
#: What a guest's tiny initramfs loads to mount its root disk.
GUEST_INITRD_MODULES = ("xen-blkfront", "crc32c_generic", "ext4", "overlay")

DOM0_BINARIES = (
    f"{XEN_DIR}/bin/xl",
    f"{XEN_DIR}/bin/xenstored",
    f"{XEN_DIR}/bin/xenconsoled",
    f"{XEN_DIR}/bin/xen-init-dom0",
    f"{XEN_DIR}/bin/libxl-save-helper",
    f"{XEN_DIR}/bin/xenconsole",
    # live update of xenstored under the Dom0 agent (tests/e2e/test_xenstored_restart.py)
    f"{XEN_DIR}/bin/xenstore-control",
    "usr/bin/xenstore",
    "usr/libexec/xen-qemu-system-i386",
)
DOM0_TREES = (
    f"{XEN_DIR}/boot",
    "usr/share/qemu",
    "usr/share/seabios",
    "etc/xen",
)


# --- ELF dependencies ---------------------------------------------------------------------------


def elf_needed(path: Path) -> list[str] | None:
    """DT_NEEDED entries of a 64-bit little-endian ELF file, or None if it is not one."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []
    dynamic = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []

    def v2o(vaddr: int) -> int:
        for va, off, size in loads:
            if va <= vaddr < va + size:
                return vaddr - va + off
        raise BedError(f"{path}: address {vaddr:#x} not in a PT_LOAD segment")

    needed_offs: list[int] = []
    strtab = 0
    off, size = dynamic
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == 1:
            needed_offs.append(val)
        elif tag == 5:
            strtab = v2o(val)
    out = []
    for o in needed_offs:
        end = data.index(b"\0", strtab + o)
        out.append(data[strtab + o : end].decode())
    return out


def find_lib(stage: Path, soname: str) -> Path:
    for d in LIB_DIRS:
        p = stage / d / soname
        if p.exists():
            return p
    raise BedError(
        f"shared library {soname} is in none of the pinned packages (add it to versions.PACKAGES)"
    )


def resolve_in(stage: Path, path: Path) -> Path:
    """Follow symlinks of ``path`` with absolute targets taken relative to ``stage``."""
    for _ in range(40):
        if not path.is_symlink():
            if not path.exists():
                raise BedError(f"{path} does not exist in the staging tree")
            return path
        target = os.readlink(path)
        path = stage / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise BedError(f"symlink loop at {path}")


def copy_with_closure(stage: Path, root: Path, rels: Iterable[str]) -> None:
    """Copy files (relative to the staging tree) and every shared library they need."""
    todo = list(rels)
    seen: set[str] = set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        src = stage / rel
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        real = resolve_in(stage, src)
        if not dst.exists():
            shutil.copy2(real, dst)
        needed = elf_needed(real) or []
        for so in needed:
            lib = find_lib(stage, so)
            todo.append(str(lib.relative_to(stage)))


# --- kernel modules -----------------------------------------------------------------------------


#: Module file endings: Debian's 6.1 ships plain ``.ko``, its 6.12 ``.ko.xz``.
MODULE_SUFFIXES = (".ko", ".ko.xz")


def module_key(path: Path) -> str | None:
    """``xen-blkfront.ko.xz`` -> ``xen_blkfront``; None for a file that is no module."""
    for suffix in MODULE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)].replace("-", "_")
    return None


def module_bytes(path: Path) -> bytes:
    """The module's ELF bytes (an ``.xz`` module decompressed: busybox insmod wants plain ones)."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def module_index(mdir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for p in mdir.rglob("*.ko*"):
        key = module_key(p)
        if key is not None:
            index[key] = p
    return index


def module_depends(path: Path) -> list[str]:
    data = module_bytes(path)
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return [d.decode() for d in m.group(1).split(b",") if d]


def module_closure(mdir: Path, names: Iterable[str]) -> list[Path]:
    """The modules and their dependencies in load order; built-in ones are skipped."""
    index = module_index(mdir)
    builtin = set()
    bfile = mdir / "modules.builtin"
    if bfile.exists():
        for line in bfile.read_text().splitlines():
            key = module_key(Path(line))
            if key is not None:
                builtin.add(key)
    order: list[Path] = []
    done: set[str] = set()

    def visit(name: str, chain: list[str]) -> None:
        key = name.replace("-", "_")
        if key in done or key in builtin:
            return
        if key not in index:
            raise BedError(f"kernel module {name} not found (needed by {chain})")
        for dep in module_depends(index[key]):
            visit(dep, [*chain, name])
        done.add(key)
        order.append(index[key])

    for n in names:
        visit(n, [])
    return order


def add_modules(root: Path, mdir: Path, names: Iterable[str], dest: str, order_file: str) -> None:
    mods = module_closure(mdir, names)
    d = root / dest
    d.mkdir(parents=True, exist_ok=True)
    files = []
    for p in mods:
        if p.name.endswith(".ko"):
            shutil.copy2(p, d / p.name)
            files.append(p.name)
        else:
            plain = p.name[: p.name.index(".ko") + 3]
            (d / plain).write_bytes(module_bytes(p))
            files.append(plain)
    of = root / order_file
    of.parent.mkdir(parents=True, exist_ok=True)
    of.write_text("".join(f + "\n" for f in files))


# --- busybox and cpio ---------------------------------------------------------------------------


def add_busybox(stage: Path, root: Path) -> None:
    bb = stage / "bin" / "busybox"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(bb, root / "bin" / "busybox")
    applets = subprocess.run(
        [str(bb), "--list-full"], stdout=subprocess.PIPE, check=True
    ).stdout.decode().split()
    for a in applets:
        p = root / a
        if p.exists() or p.is_symlink():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to("/bin/busybox")


def make_cpio(root: Path, out: Path, compress: bool) -> None:
    tmp = out.with_name(out.name + ".tmp")
    files = subprocess.run(
        ["find", ".", "-mindepth", "1"], cwd=str(root), stdout=subprocess.PIPE, check=True
    ).stdout
    with open(tmp, "wb") as f:
        proc = subprocess.run(
            ["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
            cwd=str(root),
            input=files,
            stdout=subprocess.PIPE,
            check=True,
        )
        data = proc.stdout
        f.write(gzip.compress(data, compresslevel=6) if compress else data)
    tmp.rename(out)


def _script_key(*names: str) -> str:
    return key_of(*((HERE / n).read_text() for n in names))


# --- the images ---------------------------------------------------------------------------------


def guest_initrd_key(stage: Path, variant: str = versions.DEFAULT_GUEST_KERNEL) -> str:
    """The fetched packages (the staging tree's name), the variant's kernel as fetched, the init
    script, the module list and the recipe (images.py)."""
    extra = [] if variant == versions.DEFAULT_GUEST_KERNEL else [artefacts.kernel_pin(variant)]
    return key_of(
        stage.name,
        _script_key("guest/initramfs-init"),
        *GUEST_INITRD_MODULES,
        *extra,
        recipe.boot_image_recipe(),
    )


def guest_initrd(stage: Path, variant: str = versions.DEFAULT_GUEST_KERNEL) -> Path:
    """The tiny initramfs for one guest kernel (``artefacts.kernel_names()``)."""
    out = CACHE / f"guest-initrd-{guest_initrd_key(stage, variant)}.cpio.gz"
    if out.exists():
        return out
    log(f"building the guest initramfs (kernel {variant})")
    root = CACHE / "guest-initrd-tree"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        add_busybox(stage, root)
        for d in ("proc", "sys", "dev", "lower", "upper", "newroot"):
            (root / d).mkdir(exist_ok=True)
        _vmlinuz, mdir = artefacts.guest_kernel(stage, variant)
        add_modules(root, mdir, GUEST_INITRD_MODULES, "modules", "modules.order")
        shutil.copy2(HERE / "guest" / "initramfs-init", root / "init")
        (root / "init").chmod(0o755)
        make_cpio(root, out, compress=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def guest_kernel_variants(stage: Path) -> dict[str, tuple[Path, Path]]:
    """Every extra guest kernel (``versions.GUEST_KERNELS``): variant -> (vmlinuz, initramfs)."""
    out = {}
    for variant in sorted(versions.GUEST_KERNELS):
        vmlinuz, _mdir = artefacts.guest_kernel(stage, variant)
        out[variant] = (vmlinuz, guest_initrd(stage, variant))
    return out


def dom0_initrd_key(
    stage: Path, guest_initramfs: Path, variants: dict[str, tuple[Path, Path]]
) -> str:
    """The fetched packages, the variants' kernels and initramfs, Dom0's scripts, its module and
    binary lists and the recipe (images.py)."""
    return key_of(
        *(f"{v}:{k.parent.parent.name}/{k.name}:{i.name}"
          for v, (k, i) in sorted(variants.items())),
        stage.name,
        _script_key("dom0/init", "dom0/e2e-guest", "dom0/e2e-agent", "guest/e2e-runner"),
        guest_initramfs.name,
        *DOM0_MODULES,
        *DOM0_BINARIES,
        recipe.boot_image_recipe(),
    )


def dom0_initrd(
    stage: Path,
    guest_kernel: Path,
    guest_initramfs: Path,
    variants: dict[str, tuple[Path, Path]] | None = None,
) -> Path:
    """Dom0's image; guests boot ``/guest/vmlinuz`` + ``initrd.gz`` (the default kernel) or a
    variant's ``/guest/<variant>/vmlinuz`` + ``initrd.gz`` (``variants``: name -> the two files)."""
    variants = variants or {}
    out = CACHE / f"dom0-initrd-{dom0_initrd_key(stage, guest_initramfs, variants)}.cpio"
    if out.exists():
        return out
    for old in CACHE.glob("dom0-initrd-*.cpio"):
        old.unlink()
    log("building the Dom0 initramfs")
    root = CACHE / "dom0-initrd-tree"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        # merged /usr: the multiarch lib dirs of both /lib and /usr/lib end up in one place
        (root / "usr" / "lib").mkdir(parents=True)
        (root / "lib").symlink_to("usr/lib")
        (root / "usr" / "lib64").mkdir(parents=True)
        (root / "lib64").symlink_to("usr/lib64")
        add_busybox(stage, root)
        copy_with_closure(stage, root, [*DOM0_BINARIES, "lib64/ld-linux-x86-64.so.2"])
        for rel in ("usr/bin",):
            for p in (stage / rel).glob("xenstore-*"):
                dst = root / rel / p.name
                if not dst.exists():
                    dst.symlink_to("xenstore")
        for tree in DOM0_TREES:
            shutil.copytree(stage / tree, root / tree, symlinks=True, dirs_exist_ok=True)
        add_modules(root, artefacts.modules_dir(stage), DOM0_MODULES, "lib/modules/e2e",
                    "etc/e2e/modules.order")
        for d in ("proc", "sys", "dev", "run", "tmp", "root", "var/lib/xen", "var/log/xen",
                  "guest"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(HERE / "dom0" / "init", root / "init")
        shutil.copy2(HERE / "dom0" / "e2e-guest", root / "sbin" / "e2e-guest")
        shutil.copy2(HERE / "dom0" / "e2e-agent", root / "sbin" / "e2e-agent")
        shutil.copy2(HERE / "guest" / "e2e-runner", root / "sbin" / "e2e-runner")
        for f in ("init", "sbin/e2e-guest", "sbin/e2e-agent", "sbin/e2e-runner"):
            (root / f).chmod(0o755)
        shutil.copy2(guest_kernel, root / "guest" / "vmlinuz")
        shutil.copy2(guest_initramfs, root / "guest" / "initrd.gz")
        for variant, (vmlinuz, initramfs) in variants.items():
            (root / "guest" / variant).mkdir()
            shutil.copy2(vmlinuz, root / "guest" / variant / "vmlinuz")
            shutil.copy2(initramfs, root / "guest" / variant / "initrd.gz")
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
        make_cpio(root, out, compress=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out
