"""Fixtures of the e2e tier: one booted Xen per session (per host layout), guests per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import artefacts, pins, preflight
from tests.e2e.bed import BedConfig, XenBed
from tests.e2e.util import BedError


def preflight_or_fail(guest_debs: bool) -> None:
    """A missing host tool fails the test with one line naming it and its package."""
    try:
        preflight.check(guest_debs=guest_debs)
    except BedError as e:
        pytest.fail(f"e2e: {e}", pytrace=False)


#: Every bed's run directory this session (listed at the end of the test report).
RUN_DIRS: list[Path] = []


class Beds:
    """At most one QEMU at a time: asking for another layout (host NUMA nodes, the guest image
    with the agent's .deb) stops the running bed."""

    def __init__(self) -> None:
        self.current: XenBed | None = None

    def get(self, host_numa2: bool = False, guest_debs: bool = False) -> XenBed:
        if self.current is not None and (
            self.current.config.host_numa2 != host_numa2
            or self.current.config.guest_debs != guest_debs
        ):
            self.close()
        if self.current is None:
            preflight_or_fail(guest_debs)
            name = "pytest-numa2" if host_numa2 else "pytest-debs" if guest_debs else "pytest"
            bed = XenBed(BedConfig(host_numa2=host_numa2, guest_debs=guest_debs, run_name=name))
            RUN_DIRS.append(bed.run_dir)
            bed.__enter__()
            self.current = bed
        elif not self.current.dom0_answers():
            # Lost under an earlier test that did not go through a guest (Dom0Lost there).
            self.current.restart("Dom0 did not answer a PING before the next test")
        return self.current

    def close(self) -> None:
        if self.current is not None:
            bed, self.current = self.current, None
            bed.__exit__(None, None, None)


@pytest.fixture(scope="session")
def beds() -> Iterator[Beds]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
    preflight_or_fail(guest_debs=False)
    b = Beds()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def bed(beds: Beds) -> XenBed:
    """Xen 4.17 + Dom0 in QEMU, the default host layout (one node)."""
    return beds.get(host_numa2=False)


@pytest.fixture
def bed_numa2(beds: Beds) -> XenBed:
    """Xen with 2 host NUMA nodes, an IOMMU and a NIC behind a pxb-pcie on node 1."""
    return beds.get(host_numa2=True)


@pytest.fixture
def bed_debs(beds: Beds) -> XenBed:
    """The default layout, its guests booting the image with the agent's .deb and a NoCloud seed."""
    return beds.get(guest_debs=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Each other layout needs its own boot: the default layout's tests first, then the .deb
    # image's, the 2-node layout's last.
    def layout(item: pytest.Item) -> tuple[bool, bool]:
        names = getattr(item, "fixturenames", ())
        return "bed_numa2" in names, "bed_debs" in names

    items.sort(key=layout)
    # A guest that dies under a test (a vCPU triple fault of the nested, emulated virtualisation,
    # about one guest in 17 here, 3 in about 8 HVM guests on one CI run) fails that test with
    # GuestDied: run it again, in a new guest on the same bed, at most twice (pytest-rerunfailures;
    # a rerun is reported as "R"/"rerun" in the summary). So is a test that lost Dom0 (Dom0Lost:
    # once in 61 passthrough boots, not explained; the bed started Xen again). Any other failure
    # fails at once.
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.flaky(reruns=2, only_rerun=["GuestDied", "Dom0Lost"]))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The test report names the beds' run directories and every Debian build the beds ran, with
    a PIN SUPERSEDED line for each pin that was not fetched exactly (also in each run directory's
    versions.txt)."""
    if not artefacts.FETCHED and not RUN_DIRS:
        return
    terminalreporter.section("e2e: run directories and the Debian builds used")
    for d in RUN_DIRS:
        terminalreporter.write_line(f"run directory: {d}")
    for line in pins.report(artefacts.FETCHED):
        terminalreporter.write_line(line, yellow=line.startswith("PIN SUPERSEDED"))
