"""Fetch the pinned Debian packages and extract them into one staging tree."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.e2e import pins, recipe, versions
from tests.e2e.util import CACHE, BedError, atomic_dir, key_of, log, publish_dir, run

DEBS = CACHE / "debs"


def deb_path(name: str, version: str) -> Path:
    return DEBS / f"{name}_{version.replace(':', '%3a')}_pinned.deb"


#: What was fetched for each pin in this process (pinned package name -> Fetched).
FETCHED: dict[str, pins.Fetched] = {}
#: Where a pin was superseded: the choice, kept so that later runs take the same build offline.
RESOLVED = DEBS / "resolved"


def _memo(name: str, version: str) -> Path:
    return RESOLVED / f"{name}={version.replace(':', '%3a')}"


def apt_known(names: list[str]) -> dict[str, list[str]]:
    """Package name -> the versions in apt's lists (``apt-cache madison``; no network)."""
    if not names:
        return {}
    out = subprocess.run(["apt-cache", "madison", *names], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, check=False).stdout.decode()
    return pins.parse_madison(out)


def apt_candidates(name: str) -> dict[str, list[str]]:
    """Every package apt knows that may stand in for ``name`` (pins.name_pattern), with versions."""
    out = subprocess.run(["apt-cache", "pkgnames", pins.name_prefix(name)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    pattern = pins.name_pattern(name)
    names = sorted(n for n in out.stdout.decode().split() if pattern.match(n))
    return apt_known(names or [name])


def _apt_download(packages: dict[str, str]) -> dict[str, str]:
    """``apt-get download`` of name=version pairs into the cache; return the names that failed,
    each with apt's first error line (all of them are tried one by one when the batch fails)."""
    if not packages:
        return {}
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        try:
            run(["apt-get", "download", *[f"{n}={v}" for n, v in sorted(packages.items())]],
                cwd=Path(tmp), timeout=900)
        except BedError as e:
            if len(packages) == 1:
                return {n: _apt_error(str(e)) for n in packages}
            failed: dict[str, str] = {}
            for n, v in sorted(packages.items()):
                failed.update(_apt_download({n: v}))
            return failed
        got = list(Path(tmp).glob("*.deb"))
        for name, version in packages.items():
            match = [p for p in got if p.name.startswith(f"{name}_")]
            if len(match) != 1:
                raise BedError(f"apt-get download {name}={version}: got {match}")
            shutil.move(str(match[0]), deb_path(name, version))
    return {}


def _apt_error(text: str) -> str:
    """apt's first ``E:`` or ``Err:`` line of a failed command's output (else its first line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("E:", "Err:")):
            return ln
    return lines[0] if lines else "failed"


class _Snapshot:
    """The exact pin from the snapshot archive; turned off after its first network failure."""

    def __init__(self) -> None:
        self.base = os.environ.get("E2E_SNAPSHOT_URL", pins.SNAPSHOT_DEFAULT).rstrip("/")
        self.down = not self.base
        self.tried = False

    def note(self) -> str:
        """What the snapshot archive did, for the PIN SUPERSEDED line."""
        if not self.base:
            return " (the snapshot archive is off: E2E_SNAPSHOT_URL unset)"
        return " nor from the snapshot archive" if self.tried else ""

    def fetch(self, name: str, version: str) -> bool:
        if self.down:
            return False
        self.tried = True
        import hashlib
        import json
        import urllib.error
        import urllib.parse
        import urllib.request

        q = urllib.parse.quote
        url = f"{self.base}/mr/binary/{q(name, safe='')}/{q(version, safe='')}/binfiles"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                files = json.load(r).get("result", [])
            sha1 = next(f["hash"] for f in files if f.get("architecture") in ("amd64", "all"))
            with urllib.request.urlopen(f"{self.base}/file/{sha1}", timeout=300) as r:
                data = r.read()
        except urllib.error.HTTPError as e:
            log(f"snapshot archive: {name}={version}: HTTP {e.code} ({url})")
            return False
        except (OSError, ValueError, StopIteration, KeyError) as e:
            log(f"snapshot archive {self.base} unreachable ({e}); not asking it again")
            self.down = True
            return False
        if hashlib.sha1(data).hexdigest() != sha1:
            log(f"snapshot archive: {name}={version}: SHA-1 mismatch, not used")
            return False
        deb_path(name, version).write_bytes(data)
        log(f"snapshot archive: fetched {name}={version} ({len(data)} bytes, SHA-1 checked)")
        return True


#: apt-get update runs at most once per process (it is slow, and a second one learns nothing).
_APT_UPDATED: list[bool] = []


def _refresh_apt_lists(missing: list[str]) -> bool:
    """Pins apt does not know, or whose download failed: apt's lists may be older than the archive;
    update them once per process (as root). True when they were updated now."""
    if _APT_UPDATED or os.geteuid() != 0:
        return False
    _APT_UPDATED.append(True)
    log(f"apt cannot fetch {len(missing)} pinned version(s) ({', '.join(missing[:3])}"
        f"{'...' if len(missing) > 3 else ''}): apt-get update")
    try:
        run(["apt-get", "update", "-qq"], timeout=600)
    except BedError as e:
        log(f"apt-get update failed: {str(e).splitlines()[0]}")
        return False
    return True


def _series_fallback(name: str, version: str, why: str,
                     failed: frozenset[tuple[str, str]] = frozenset()) -> pins.Fetched:
    """The newest build apt knows of the pin's series, but none whose download already failed
    (``failed``); the PIN SUPERSEDED line (:func:`fetch`) says what was taken and why."""
    known = {n: [v for v in vs if (n, v) not in failed]
             for n, vs in apt_candidates(name).items()}
    choice = pins.choose_fallback(name, version, known)
    if choice is None:
        raise BedError(
            f"pinned {name}={version} {why}, and apt knows no other build of its series "
            f"{pins.series(version)}: bump it in versions.py (python -m tests.e2e pins)")
    new_name, new_version = choice
    if not deb_path(new_name, new_version).exists():
        err = _apt_download({new_name: new_version})
        if err:
            raise BedError(
                f"pinned {name}={version} {why}, and its stand-in {new_name}={new_version} (the "
                f"newest of series {pins.series(version)} apt knows) failed too: "
                f"{err[new_name]}; bump versions.py (python -m tests.e2e pins)")
    RESOLVED.mkdir(parents=True, exist_ok=True)
    _memo(name, version).write_text(f"{new_name} {new_version}\n")
    return pins.Fetched(name, version, new_name, new_version, "series", why)


def _remembered(name: str, version: str) -> pins.Fetched | None:
    """An earlier run's fallback for this pin, when its .deb is still cached."""
    memo = _memo(name, version)
    if not memo.exists():
        return None
    new_name, new_version = memo.read_text().split()
    if not deb_path(new_name, new_version).exists():
        return None
    return pins.Fetched(name, version, new_name, new_version, "series",
                        "was replaced by an earlier run (its choice is kept in debs/resolved/)")


def _try_apt(todo: dict[str, str]) -> tuple[dict[str, pins.Fetched], dict[str, str]]:
    """The exact pins from apt: what was fetched, and for each pin not fetched why not."""
    known = apt_known(sorted(todo))
    exact = {n: v for n, v in todo.items() if v in known.get(n, [])}
    why = {n: "is not in apt's lists" for n in todo if n not in exact}
    if exact:
        log(f"downloading {len(exact)} Debian packages")
    for n, err in _apt_download(exact).items():
        why[n] = f"does not download ({err})"
    got = {n: pins.Fetched(n, v, n, v, "pin") for n, v in exact.items() if n not in why}
    return got, why


def _fetch_missing(todo: dict[str, str]) -> dict[str, pins.Fetched]:
    """Pins with no cached .deb: apt (again after one apt-get update when it could not fetch
    them), then the snapshot archive when one is set, then the newest of the pin's series."""
    got, why = _try_apt(todo)
    if why and _refresh_apt_lists([f"{n}={todo[n]}" for n in sorted(why)]):
        again, why = _try_apt({n: todo[n] for n in why})
        got.update(again)
        why = {n: w + " even after apt-get update" for n, w in why.items()}
    failed = frozenset((n, todo[n]) for n, w in why.items() if w.startswith("does not download"))
    snapshot = _Snapshot()
    for n in sorted(why):
        v = todo[n]
        if snapshot.fetch(n, v):
            got[n] = pins.Fetched(n, v, n, v, "snapshot")
        else:
            got[n] = _series_fallback(n, v, why[n] + snapshot.note(), failed)
    return got


def fetch(packages: dict[str, str]) -> dict[str, pins.Fetched]:
    """Fetch every pin (pins.py: the exact pin, then the snapshot archive, then the newest of its
    series); return pinned name -> what was fetched. Every pin not fetched exactly gets one line."""
    DEBS.mkdir(parents=True, exist_ok=True)
    got: dict[str, pins.Fetched] = {}
    todo: dict[str, str] = {}
    for n, v in packages.items():
        memo = _remembered(n, v)
        if deb_path(n, v).exists():
            got[n] = pins.Fetched(n, v, n, v, "pin")
        elif memo is not None:
            got[n] = memo
        else:
            todo[n] = v
    if todo:
        got.update(_fetch_missing(todo))
    for f in got.values():
        if not f.exact:
            log(pins.superseded_line(f))
    FETCHED.update(got)
    return got


def _adopt_kernels(got: dict[str, pins.Fetched]) -> None:
    """A kernel fetched under a newer ABI name: the rest of the testbed follows it (versions'
    KERNEL_ABI/KERNEL or GUEST_KERNELS are rebound for this process, logged)."""
    for f in got.values():
        if f.exact or not f.pin_name.startswith("linux-image-"):
            continue
        old_abi, new_abi = pins.kernel_abi_of(f.pin_name), pins.kernel_abi_of(f.name)
        if old_abi == versions.KERNEL_ABI:
            versions.KERNEL_ABI, versions.KERNEL = new_abi, f.version
        for variant, (abi, _v) in list(versions.GUEST_KERNELS.items()):
            if abi == old_abi:
                versions.GUEST_KERNELS[variant] = (new_abi, f.version)
        if old_abi != new_abi:
            log(f"kernel ABI {old_abi} -> {new_abi} for this run (the pin was superseded)")


def fetched_key(got: dict[str, pins.Fetched]) -> str:
    """The cache key of what was fetched (equal to the pins' key when every pin was exact)."""
    return key_of(*(f"{f.name}={f.version}" for _n, f in sorted(got.items())))


def _staging_dir(key: str) -> Path:
    """The staging tree of the packages whose key is ``key``, by this module's extraction code."""
    return CACHE / f"staging-{key_of(key, recipe.recipe_key(code=(staging,)))}"


def staging() -> Path:
    """All pinned packages extracted into one tree (cached, keyed on what was fetched)."""
    final = _staging_dir(key_of(*(f"{n}={v}" for n, v in sorted(versions.PACKAGES.items()))))
    if (final / ".done").exists():
        FETCHED.update({n: pins.Fetched(n, v, n, v, "pin") for n, v in versions.PACKAGES.items()})
        return final
    got = fetch(versions.PACKAGES)
    _adopt_kernels(got)
    final = _staging_dir(fetched_key(got))
    if (final / ".done").exists():
        return final
    tmp = atomic_dir(final)
    log(f"extracting {len(got)} packages into {final.name}")
    for f in got.values():
        run(["dpkg-deb", "-x", deb_path(f.name, f.version), tmp], timeout=300)
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
    name = f"linux-image-{abi}"
    code = recipe.recipe_key(code=(variant_stage,))
    final = CACHE / f"kernel-{variant}-{key_of(abi, version, code)}"
    if (final / ".done").exists():
        FETCHED[name] = pins.Fetched(name, version, name, version, "pin")
        return final
    got = fetch({name: version})
    _adopt_kernels(got)
    abi, version = versions.GUEST_KERNELS[variant]
    final = CACHE / f"kernel-{variant}-{key_of(abi, version, code)}"
    if (final / ".done").exists():
        return final
    tmp = atomic_dir(final)
    log(f"extracting guest kernel {variant} ({abi}) into {final.name}")
    for f in got.values():
        run(["dpkg-deb", "-x", deb_path(f.name, f.version), tmp], timeout=300)
    (tmp / ".done").write_text("ok\n")
    publish_dir(tmp, final)
    return final


def guest_kernel(stage: Path, variant: str) -> tuple[Path, Path]:
    """(vmlinuz, module directory) of a guest kernel; the default one comes from ``stage``."""
    root = stage if variant == versions.DEFAULT_GUEST_KERNEL else variant_stage(variant)
    abi = kernel_abi(variant)  # after variant_stage: a superseded pin may have moved the ABI
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
