"""benchmarks/balloon_stress.py: the guest's script, run here against a fake driver."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.balloon_stress import ZRAM_MODES, parse_args, stress_script, zram_part


@pytest.mark.parametrize("mode", ZRAM_MODES)
def test_every_mode_is_valid_shell(mode: str) -> None:
    got = subprocess.run(["sh", "-n"], input=stress_script(600, mode), text=True,
                         capture_output=True, check=False)
    assert got.returncode == 0, got.stderr


def test_the_zram_modes_differ_as_documented() -> None:
    assert zram_part("none") == ""
    kept, cycled = zram_part("kept"), zram_part("cycled")
    assert "swapon -p 100 /dev/zram0" in kept and "rmmod" not in kept
    assert "swapon -p 100 /dev/zram0" in cycled and "rmmod zram" in cycled
    assert cycled.startswith("(while") and cycled.endswith(") &\n")
    with pytest.raises(ValueError, match="zram mode 'sometimes'"):
        zram_part("sometimes")


def test_the_script_moves_the_driver_and_puts_it_back(tmp_path: Path) -> None:
    """One round against a fake driver directory: the target is lowered, then left at the
    ceiling, and the summary names the rounds and the size."""
    (tmp_path / "info").mkdir()
    (tmp_path / "target_kb").write_text("1048576\n")
    (tmp_path / "info" / "current_kb").write_text("1048180\n")
    (tmp_path / "data").write_bytes(b"x" * 4096)
    script = stress_script(1, "none", balloon=str(tmp_path), reads=str(tmp_path / "data"),
                           drop_caches=str(tmp_path / "drop_caches"), low_s=0, high_s=0)
    got = subprocess.run(["sh", "-c", script], text=True, capture_output=True, check=False,
                         timeout=120)
    assert got.returncode == 0, got.stderr
    assert "survived " in got.stdout and "1048180 KiB" in got.stdout
    assert (tmp_path / "target_kb").read_text().strip() == "1048576"
    assert (tmp_path / "drop_caches").read_text().strip() == "1"


def test_arguments() -> None:
    args = parse_args([])
    assert (args.type, args.seconds, args.zram) == ("hvm", 600, "none")
    for bad in (["--seconds", "5"], ["--zram", "sometimes"], ["--type", "pvh"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
