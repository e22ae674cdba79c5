"""Which build of each pinned Debian package to fetch, when the pin itself may be gone.

Debian's security archive keeps only the newest build of a package, so a pin in
:mod:`tests.e2e.versions` stops being downloadable with each Xen or kernel security update. Each pin
is fetched by the first of these that works, and the choice is logged:

1. the exact pin, with ``apt-get download NAME=VERSION`` (the cache's ``.deb`` when it has one);
   When apt does not know the pin, or its download fails (lists older than the archive: a 404),
   ``apt-get update`` runs once (as root) and the pin is tried again;
2. only when ``E2E_SNAPSHOT_URL`` is set (e.g. ``https://snapshot.debian.org``; off by default: the
   archive is slow and throttles, and it does not resolve on this project's machines), the exact
   pin from the snapshot archive: ``/mr/binary/NAME/VERSION/binfiles`` gives the file's SHA-1,
   ``/file/SHA1`` the ``.deb``, whose SHA-1 is checked;
3. the newest build apt knows of the same upstream series (:func:`series`: epoch and major.minor of
   the upstream version), for a kernel also under a newer ABI name of the same series and flavour
   (``linux-image-6.1.0-56-amd64`` -> ``linux-image-6.1.0-57-amd64``), with one loud log line
   naming the pin and what was taken.

Cache keys are computed from what was fetched (:class:`Fetched`), never from the pin alone.
The choice logic (:func:`debian_compare`, :func:`series`, :func:`choose_fallback`) is pure and unit
tested without a network (tests/test_e2e_pins.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Where the snapshot archive's machine-readable interface lives: nowhere unless
#: ``E2E_SNAPSHOT_URL`` names it ("": the step is off, so CI never waits on that archive).
SNAPSHOT_DEFAULT = ""


@dataclass(frozen=True)
class Fetched:
    """One pin and the build actually fetched for it."""

    pin_name: str
    pin_version: str
    name: str
    version: str
    #: "pin" (apt or the cache), "snapshot" (the exact pin from the snapshot archive) or "series"
    #: (the newest build of the pin's series that apt knows).
    how: str
    #: Why the pin itself was not taken (shown in the PIN SUPERSEDED line; not part of equality).
    why: str = field(default="", compare=False)

    @property
    def exact(self) -> bool:
        return (self.name, self.version) == (self.pin_name, self.pin_version)

    def line(self) -> str:
        """``name=version`` as fetched, and what it replaced when it is not the pin."""
        text = f"{self.name}={self.version} ({self.how})"
        if not self.exact:
            text += f" instead of the pin {self.pin_name}={self.pin_version}"
        return text


# --- Debian version order (dpkg's verrevcmp) ------------------------------------------------------


def _order(c: str) -> int:
    if c == "" or c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i] if i < len(a) else "")
            bc = _order(b[j] if j < len(b) else "")
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        m = re.match(r"\d*", a[i:])
        n = re.match(r"\d*", b[j:])
        da = m.group(0) if m else ""
        db = n.group(0) if n else ""
        i += len(da)
        j += len(db)
        va, vb = int(da or "0"), int(db or "0")
        if va != vb:
            return 1 if va > vb else -1
    return 0


def split_version(version: str) -> tuple[int, str, str]:
    """(epoch, upstream, Debian revision) of a Debian version string."""
    epoch, sep, rest = version.partition(":")
    if not sep:
        epoch, rest = "0", version
    upstream, sep, revision = rest.rpartition("-")
    if not sep:
        upstream, revision = rest, ""
    return int(epoch), upstream, revision


def debian_compare(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version ``a`` sorts before, with or after ``b`` (dpkg's order)."""
    ea, ua, ra = split_version(a)
    eb, ub, rb = split_version(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


# --- series ---------------------------------------------------------------------------------------


def series(version: str) -> str:
    """The upstream series a build belongs to: epoch and major.minor of the upstream version
    (``4.17.7+13-g2445b30a44-0+deb12u1`` -> ``0:4.17``, ``1:7.2+dfsg-7+deb12u18`` -> ``1:7.2``)."""
    epoch, upstream, _rev = split_version(version)
    m = re.match(r"\d+(?:\.\d+)?", upstream)
    return f"{epoch}:{m.group(0) if m else upstream}"


#: A kernel image package: series, ABI number or +debN tag, flavour.
_KERNEL = re.compile(r"^linux-image-(\d+\.\d+)\.\d+(-\d+)?(\+deb\d+)?-([a-z0-9-]+)$")


def name_pattern(name: str) -> re.Pattern[str]:
    """The package names that may stand in for ``name``: itself, or for a kernel image every ABI
    of the same kernel series and flavour (``linux-image-6.1.0-NN-amd64``,
    ``linux-image-6.12.NNN+deb12-amd64``)."""
    m = _KERNEL.match(name)
    if not m:
        return re.compile(f"^{re.escape(name)}$")
    mm, abi, deb, flavour = m.groups()
    text = rf"^linux-image-{re.escape(mm)}\.\d+"
    if abi:
        text += r"-\d+"
    if deb:
        text += re.escape(deb)
    return re.compile(text + "-" + re.escape(flavour) + "$")


def name_prefix(name: str) -> str:
    """What to ask ``apt-cache pkgnames`` for the candidates of :func:`name_pattern`."""
    m = _KERNEL.match(name)
    return f"linux-image-{m.group(1)}." if m else name


def choose_fallback(
    name: str, version: str, known: Mapping[str, Iterable[str]]
) -> tuple[str, str] | None:
    """The newest (name, version) of ``known`` (package name -> versions apt knows) in the pin's
    series, among the names :func:`name_pattern` allows; None when there is none."""
    pattern = name_pattern(name)
    want = series(version)
    best: tuple[str, str] | None = None
    for cand_name, versions in sorted(known.items()):
        if not pattern.match(cand_name):
            continue
        for v in versions:
            if series(v) != want:
                continue
            if best is None or debian_compare(v, best[1]) > 0:
                best = (cand_name, v)
    return best


def kernel_abi_of(package: str) -> str:
    """``linux-image-6.1.0-57-amd64`` -> ``6.1.0-57-amd64``."""
    prefix = "linux-image-"
    if not package.startswith(prefix):
        raise ValueError(f"{package} is not a kernel image package")
    return package[len(prefix):]


def parse_madison(text: str) -> dict[str, list[str]]:
    """``apt-cache madison`` output -> package name -> versions (in apt's order, no repeats)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 3 or not fields[0] or not fields[1]:
            continue
        versions = out.setdefault(fields[0], [])
        if fields[1] not in versions:
            versions.append(fields[1])
    return out


def superseded_line(f: Fetched) -> str:
    """The one line that says a pin was not fetched: which pin, why, what stands in for it."""
    head = f"PIN SUPERSEDED: {f.pin_name}={f.pin_version} {f.why or 'is gone'}"
    tail = "bump versions.py (python -m tests.e2e pins)"
    if f.how != "series":
        return f"{head}; fetched the exact pin from {f.how}; {tail}"
    return (f"{head}; using {f.name}={f.version}, the newest build of series "
            f"{series(f.pin_version)} apt knows, for this run and its cache keys; {tail}")


def report(fetched: Mapping[str, Fetched]) -> list[str]:
    """The lines the test report ends with: every build used (``name=version (how)``, and the pin
    it replaced), then one PIN SUPERSEDED line for each pin that was not fetched exactly."""
    ordered = [f for _n, f in sorted(fetched.items())]
    return [f.line() for f in ordered] + [superseded_line(f) for f in ordered if not f.exact]
