"""The e2e testbed's preflight (tests/e2e/preflight.py): a missing host tool is one line naming it
and its Debian package, before anything is built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.e2e import preflight
from tests.e2e.util import REPO, BedError


@pytest.fixture(autouse=True)
def roomy_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plenty of disk and memory, whatever this host has (a test below sets its own)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: SimpleNamespace(free=100 * preflight.GIB))
    monkeypatch.setattr(preflight, "_available", lambda: 16 * preflight.GIB)


def fake_path(tmp_path: Path, without: str) -> str:
    """A PATH directory holding a stub for every tool the testbed needs but ``without``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in {**preflight.HOST_TOOLS, **preflight.DEB_BUILD_TOOLS}:
        if tool != without:
            stub = bindir / tool
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    return str(bindir)


def test_a_path_without_cpio_names_the_tool_and_its_package(tmp_path: Path) -> None:
    path = fake_path(tmp_path, without="cpio")
    with pytest.raises(BedError) as e:
        preflight.check(path=path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "cpio (package cpio)" in msg and msg.endswith("apt-get install cpio")


def test_every_missing_tool_is_named_at_once(tmp_path: Path) -> None:
    path = fake_path(tmp_path, without="mke2fs")
    (Path(path) / "qemu-system-x86_64").unlink()
    with pytest.raises(BedError, match=r"apt-get install e2fsprogs qemu-system-x86$"):
        preflight.check(path=path)


def test_the_deb_tools_are_checked_only_for_the_deb_image(tmp_path: Path) -> None:
    path = fake_path(tmp_path, without="lintian")
    preflight.check(path=path)
    with pytest.raises(BedError, match="lintian"):
        preflight.check(guest_debs=True, path=path)


def test_the_cli_says_one_line_and_exits_3_before_building(tmp_path: Path) -> None:
    path = fake_path(tmp_path, without="zstd")
    env = {**os.environ, "PATH": path, "E2E_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "tests.e2e", "build"], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    # One line; this host's own disk and memory may add a "; ..." shortfall after the tools.
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        "e2e: missing host tools: zstd (package zstd); install them with: apt-get install zstd"
    ), line
    assert not (tmp_path / "cache").exists()


def test_disk_and_memory_shortfalls_are_named_with_the_need(tmp_path: Path) -> None:
    gib = preflight.GIB
    # An empty cache is a cold build: 6 GiB.
    (disk,) = preflight.shortfalls(tmp_path, 3 * gib, 8 * gib)
    assert disk.startswith("3.0 GiB free for") and "6 GiB needed (a cold build)" in disk
    # Once the debootstrap layer is there, a warm run needs 2 GiB.
    (tmp_path / "rootfs-base-0123").mkdir()
    assert preflight.shortfalls(tmp_path, 3 * gib, 8 * gib) == []
    (mem,) = preflight.shortfalls(tmp_path, 3 * gib, gib)
    assert mem == "1.0 GiB of memory available, 2 GiB needed"
    assert preflight.mem_available("MemTotal: 100 kB\nMemAvailable:  2048 kB\n") == 2 << 20
    assert preflight.mem_available("MemTotal: 100 kB\n") is None


def test_every_problem_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda _p: SimpleNamespace(free=preflight.GIB))
    path = fake_path(tmp_path, without="cpio")
    with pytest.raises(BedError) as e:
        preflight.check(path=path, cache=tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("missing host tools: cpio (package cpio)")
    assert "1.0 GiB free for" in msg and "6 GiB needed (a cold build)" in msg


def test_disk_or_memory_short_alone_is_a_warning_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CI machine with less free disk than this one measured must not fail the e2e tier up
    front: with every tool present a shortfall is one warning line and the run goes on."""
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda _p: SimpleNamespace(free=preflight.GIB))
    path = fake_path(tmp_path, without="none-of-them")
    preflight.check(path=path, cache=tmp_path / "cache")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("e2e: warning: 1.0 GiB free for") and line.endswith("going on")
