"""Fixtures of the e2e tier: one booted Xen per session (per host layout), guests per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.bed import BedConfig, XenBed


class Beds:
    """At most one QEMU at a time: asking for the other host layout stops the running one."""

    def __init__(self) -> None:
        self.current: XenBed | None = None

    def get(self, host_numa2: bool = False) -> XenBed:
        if self.current is not None and self.current.config.host_numa2 != host_numa2:
            self.close()
        if self.current is None:
            bed = XenBed(BedConfig(host_numa2=host_numa2, run_name="pytest-numa2" if host_numa2
                                   else "pytest"))
            bed.__enter__()
            self.current = bed
        return self.current

    def close(self) -> None:
        if self.current is not None:
            bed, self.current = self.current, None
            bed.__exit__(None, None, None)


@pytest.fixture(scope="session")
def beds() -> Iterator[Beds]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The 2-node layout needs its own boot: run its tests last, after the default layout's.
    items.sort(key=lambda item: "bed_numa2" in getattr(item, "fixturenames", ()))
